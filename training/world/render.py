"""Procedural RGB-D world with exact metric ground truth for spatial VQA.

A scene is a ground plane plus a handful of analytic primitives (sphere, cube, cylinder, cone) seen by a
perspective pinhole camera. Everything is rendered by a vectorised NumPy ray caster, so every depth value is the
exact ray-primitive intersection and every answer is computed from the same geometry that produced the pixels.

Conventions (all units are metres and radians unless a name ends in ``_deg``):

* World frame: right-handed, **y is up**, the ground is the plane ``y = 0``; objects rest on it.
* Camera frame: OpenCV, x right, y down, z forward along the optical axis. ``camera_to_world`` is the 4x4 pose
  whose rotation columns are the camera axes expressed in the world frame and whose translation is the camera
  centre.
* Intrinsics: square pixels, ``fx = fy = (W / 2) / tan(hfov / 2)``, ``cx = (W - 1) / 2``, ``cy = (H - 1) / 2``;
  integer pixel ``(u, v)`` is the centre of the pixel in column u and row v, so a camera-frame point projects to
  ``u = fx * X / Z + cx``.
* Depth: the z-buffer distance along the optical axis (camera-frame Z of the surface seen through the pixel
  centre), as depth sensors and Depth Anything metric models report -- not the Euclidean ray length. Sky pixels
  have depth 0, meaning invalid. The ground is a disc of radius 60 m around the camera so valid depths stay below
  65.535 m, the largest value a 16-bit millimetre PNG can hold.
* Instance mask: int16, ``-1`` for sky and ground, ``i >= 0`` for ``objects[i]``.
* Object centre: the centre of the object's bounding box, i.e. ``(x, height / 2, z)`` for every shape (for a cone
  this is half its height, not its centroid). Width is the true horizontal size (sphere/cylinder/cone diameter,
  cube side length), height the vertical size and depth the horizontal size along the other axis (equal to the
  width for all four shapes).
* ``distance_to_camera`` is the Euclidean distance from the camera centre to the object centre.

Determinism: a scene is a pure function of ``(split, index, seed)`` through
``np.random.default_rng([seed, SPLIT_IDS[split], index])``; different splits therefore never share a random
stream. Scene sampling does not depend on the output resolution, so the same scene can be rendered at any size.
"""

from __future__ import annotations

import colorsys
import io
import itertools
import json
import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from training.depth_png import MAX_DEPTH_PNG, decode_depth_png, encode_depth_png  # noqa: F401 (re-exported)


SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
SHAPES = ("sphere", "cube", "cylinder", "cone")
# sRGB albedos chosen to be unmistakable for their names; the floor palette is kept desaturated so that an object
# colour never collides with the ground.
COLORS = {
    "red": (0.80, 0.10, 0.10),
    "green": (0.12, 0.62, 0.18),
    "blue": (0.12, 0.25, 0.85),
    "yellow": (0.92, 0.82, 0.12),
    "purple": (0.52, 0.18, 0.72),
    "orange": (0.95, 0.48, 0.06),
    "white": (0.92, 0.92, 0.92),
    "cyan": (0.10, 0.78, 0.82),
}
MATERIALS = ("matte", "glossy")
GROUND_RADIUS = 60.0
GAMMA = 2.2
# Proxy resolution used to accept/reject sampled scenes (visibility checks). Fixed, so that the accepted scene
# never depends on the resolution it is finally rendered at.
ACCEPT_SIZE = 96
_NO_HIT = np.inf


# --------------------------------------------------------------------------------------------------------------
# Scene description
# --------------------------------------------------------------------------------------------------------------
@dataclass
class Camera:
    position: tuple[float, float, float]
    yaw: float  # 0 looks along +z, positive turns towards +x
    pitch: float  # positive looks down
    hfov: float  # horizontal field of view

    def rotation(self) -> np.ndarray:
        """Camera-to-world rotation; columns are the camera x (right), y (down) and z (forward) axes."""
        forward = np.array(
            [
                math.sin(self.yaw) * math.cos(self.pitch),
                -math.sin(self.pitch),
                math.cos(self.yaw) * math.cos(self.pitch),
            ]
        )
        # right = horizontal forward x up; independent of pitch, so a straight-down camera is still well defined.
        right = np.array([-math.cos(self.yaw), 0.0, math.sin(self.yaw)])
        down = np.cross(forward, right)
        return np.stack([right, down, forward], axis=1)

    def pose(self) -> np.ndarray:
        pose = np.eye(4)
        pose[:3, :3] = self.rotation()
        pose[:3, 3] = self.position
        return pose

    def intrinsics(self, width: int, height: int) -> tuple[float, float, float, float]:
        fx = (width / 2.0) / math.tan(self.hfov / 2.0)
        return fx, fx, (width - 1) / 2.0, (height - 1) / 2.0


@dataclass
class SceneObject:
    shape: str
    color: str
    material: str
    x: float  # ground contact point (x, 0, z)
    z: float
    width: float
    height: float
    yaw: float = 0.0  # only meaningful for the cube
    albedo: tuple[float, float, float] | None = None  # sRGB; defaults to the named colour
    specular: float = 0.0
    shininess: float = 32.0

    def __post_init__(self) -> None:
        if self.albedo is None:
            self.albedo = COLORS[self.color]
        if self.shape == "sphere" and abs(self.width - self.height) > 1e-12:
            raise ValueError("a sphere's width must equal its height")

    @property
    def description(self) -> str:
        return f"{self.color} {self.shape}"

    @property
    def center(self) -> np.ndarray:
        return np.array([self.x, self.height / 2.0, self.z])

    @property
    def footprint_radius(self) -> float:
        """Radius of the smallest ground circle containing the footprint (the cube's half diagonal)."""
        return self.width / 2.0 * (math.sqrt(2.0) if self.shape == "cube" else 1.0)

    def bounding_corners(self) -> np.ndarray:
        """8 corners of a box that contains the object, used to cull rays in screen space."""
        half = self.width / 2.0
        local = np.array(list(itertools.product((-half, half), (0.0, self.height), (-half, half))))
        if self.shape == "cube":
            cos_yaw, sin_yaw = math.cos(self.yaw), math.sin(self.yaw)
            local = np.stack(
                [
                    cos_yaw * local[:, 0] + sin_yaw * local[:, 2],
                    local[:, 1],
                    -sin_yaw * local[:, 0] + cos_yaw * local[:, 2],
                ],
                axis=1,
            )
        return local + np.array([self.x, 0.0, self.z])

    def bounding_sphere(self) -> tuple[np.ndarray, float]:
        return self.center, math.hypot(self.footprint_radius, self.height / 2.0)


@dataclass
class Light:
    direction: tuple[float, float, float]  # unit vector pointing towards the light
    intensity: float = 0.8
    ambient: float = 0.3


@dataclass
class Floor:
    kind: str = "checker"  # "checker" or "noise"
    cell_size: float = 1.0  # checker square / noise feature size; random per scene so RGB gets no free ruler
    rotation: float = 0.0
    offset: tuple[float, float] = (0.0, 0.0)
    color_a: tuple[float, float, float] = (0.55, 0.55, 0.55)
    color_b: tuple[float, float, float] = (0.35, 0.35, 0.35)
    lattice_seed: int = 0
    radius: float = GROUND_RADIUS


@dataclass
class Sky:
    horizon: tuple[float, float, float] = (0.80, 0.85, 0.90)
    zenith: tuple[float, float, float] = (0.35, 0.55, 0.85)


@dataclass
class Scene:
    camera: Camera
    objects: list[SceneObject]
    light: Light = field(default_factory=lambda: Light(direction=(0.3, 0.8, 0.5)))
    floor: Floor = field(default_factory=Floor)
    sky: Sky = field(default_factory=Sky)
    scene_id: str = "custom"
    split: str = ""
    index: int = -1
    seed: int = -1


@dataclass
class Rendering:
    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32 metres, 0 = invalid (sky)
    instance: np.ndarray  # (H, W) int16, -1 = sky/ground, i = objects[i]
    intrinsics: tuple[float, float, float, float]  # fx, fy, cx, cy
    unoccluded_pixels: list[int]  # per object: pixels it would cover if nothing else occluded it


@dataclass
class Question:
    question_type: str
    question: str
    answer: str
    answer_value: float | None
    choices: list[str]
    unit: str
    object_ids: list[int]
    marker: tuple[int, int] | None = None  # (u, v) pixel marked on the image for point_depth

    def to_dict(self) -> dict:
        return {
            "question_type": self.question_type,
            "question": self.question,
            "answer": self.answer,
            "answer_value": self.answer_value,
            "choices": list(self.choices),
            "unit": self.unit,
            "object_ids": list(self.object_ids),
            "marker": list(self.marker) if self.marker is not None else [],
        }


# --------------------------------------------------------------------------------------------------------------
# Ray-primitive intersections (structure-of-arrays: scalars or 1-D arrays broadcast together)
# --------------------------------------------------------------------------------------------------------------
def _first_positive(*candidates: tuple[np.ndarray, np.ndarray], t_min: float) -> np.ndarray:
    """Smallest candidate t that is valid and > t_min, else inf."""
    best = None
    for t, valid in candidates:
        t = np.where(valid & (t > t_min), t, _NO_HIT)
        best = t if best is None else np.minimum(best, t)
    return best


def _intersect_sphere(obj, ox, oy, oz, dx, dy, dz, t_min):
    radius = obj.width / 2.0
    ocx, ocy, ocz = ox - obj.x, oy - radius, oz - obj.z
    a = dx * dx + dy * dy + dz * dz
    half_b = ocx * dx + ocy * dy + ocz * dz
    c = ocx * ocx + ocy * ocy + ocz * ocz - radius * radius
    disc = half_b * half_b - a * c
    hit = disc >= 0
    root = np.sqrt(np.where(hit, disc, 0.0))
    return _first_positive(((-half_b - root) / a, hit), ((-half_b + root) / a, hit), t_min=t_min)


def _intersect_cube(obj, ox, oy, oz, dx, dy, dz, t_min):
    cos_yaw, sin_yaw = math.cos(obj.yaw), math.sin(obj.yaw)
    wx, wz = ox - obj.x, oz - obj.z
    # Rotate the ray into the cube frame (world = R_y(yaw) @ local) and use the slab method.
    lox, loz = cos_yaw * wx - sin_yaw * wz, sin_yaw * wx + cos_yaw * wz
    ldx, ldz = cos_yaw * dx - sin_yaw * dz, sin_yaw * dx + cos_yaw * dz
    half = obj.width / 2.0
    t_near, t_far = None, None
    for origin, direction, low, high in ((lox, ldx, -half, half), (oy, dy, 0.0, obj.height), (loz, ldz, -half, half)):
        # A zero component would give 0 * inf = nan; a tiny value gives the correct +-inf slab limits instead.
        direction = np.where(direction == 0.0, 1e-300, direction)
        inverse = 1.0 / direction
        t_low, t_high = (low - origin) * inverse, (high - origin) * inverse
        slab_near, slab_far = np.minimum(t_low, t_high), np.maximum(t_low, t_high)
        t_near = slab_near if t_near is None else np.maximum(t_near, slab_near)
        t_far = slab_far if t_far is None else np.minimum(t_far, slab_far)
    hit = t_near <= t_far
    return _first_positive((t_near, hit), (t_far, hit), t_min=t_min)


def _intersect_cylinder(obj, ox, oy, oz, dx, dy, dz, t_min):
    radius = obj.width / 2.0
    lx, lz = ox - obj.x, oz - obj.z
    a = dx * dx + dz * dz
    half_b = lx * dx + lz * dz
    c = lx * lx + lz * lz - radius * radius
    disc = half_b * half_b - a * c
    hit = (disc >= 0) & (a > 0)
    root = np.sqrt(np.where(hit, disc, 0.0))
    safe_a = np.where(a > 0, a, 1.0)
    candidates = []
    for t in ((-half_b - root) / safe_a, (-half_b + root) / safe_a):
        y = oy + t * dy
        candidates.append((t, hit & (y >= 0.0) & (y <= obj.height)))
    # The bottom cap lies on the ground and can never be seen from above it; only the top cap is tested.
    safe_dy = np.where(dy == 0.0, 1e-300, dy)
    t_cap = (obj.height - oy) / safe_dy
    cap_x, cap_z = lx + t_cap * dx, lz + t_cap * dz
    candidates.append((t_cap, (dy != 0.0) & (cap_x * cap_x + cap_z * cap_z <= radius * radius)))
    return _first_positive(*candidates, t_min=t_min)


def _intersect_cone(obj, ox, oy, oz, dx, dy, dz, t_min):
    # Surface: x^2 + z^2 = k^2 (h - y)^2 with k = r / h, restricted to 0 <= y <= h (apex up, base on the ground).
    slope_sq = (obj.width / 2.0 / obj.height) ** 2
    lx, lz = ox - obj.x, oz - obj.z
    below_apex = obj.height - oy
    a = dx * dx + dz * dz - slope_sq * dy * dy
    half_b = lx * dx + lz * dz + slope_sq * below_apex * dy
    c = lx * lx + lz * lz - slope_sq * below_apex * below_apex
    disc = half_b * half_b - a * c
    hit = (disc >= 0) & (a != 0)
    root = np.sqrt(np.where(hit, disc, 0.0))
    safe_a = np.where(a != 0, a, 1.0)
    candidates = []
    for t in ((-half_b - root) / safe_a, (-half_b + root) / safe_a):
        y = oy + t * dy
        candidates.append((t, hit & (y >= 0.0) & (y <= obj.height)))
    return _first_positive(*candidates, t_min=t_min)


_INTERSECTORS = {
    "sphere": _intersect_sphere,
    "cube": _intersect_cube,
    "cylinder": _intersect_cylinder,
    "cone": _intersect_cone,
}


def intersect_object(obj: SceneObject, origin, direction, t_min: float = 1e-9) -> np.ndarray:
    """Ray parameter t of the first hit with ``obj`` (inf on a miss) for rays ``origin + t * direction``.

    ``origin`` and ``direction`` are sequences of three components, each a scalar or an array (broadcast). With a
    camera-frame direction whose z component is 1, t is directly the z-buffer depth.
    """
    ox, oy, oz = origin
    dx, dy, dz = direction
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return _INTERSECTORS[obj.shape](obj, ox, oy, oz, dx, dy, dz, t_min)


def _object_normals(obj: SceneObject, px, py, pz):
    """Outward unit normals at surface points of ``obj`` (world frame)."""
    lx, lz = px - obj.x, pz - obj.z
    if obj.shape == "sphere":
        radius = obj.width / 2.0
        return lx / radius, (py - radius) / radius, lz / radius
    if obj.shape == "cube":
        cos_yaw, sin_yaw = math.cos(obj.yaw), math.sin(obj.yaw)
        cx, cz = cos_yaw * lx - sin_yaw * lz, sin_yaw * lx + cos_yaw * lz
        half = obj.width / 2.0
        cy = py - obj.height / 2.0
        # The face hit is the one whose normalised coordinate is largest in magnitude.
        ratios = np.stack([np.abs(cx) / half, np.abs(cy) / (obj.height / 2.0), np.abs(cz) / half])
        axis = np.argmax(ratios, axis=0)
        nx = np.where(axis == 0, np.sign(cx), 0.0)
        ny = np.where(axis == 1, np.sign(cy), 0.0)
        nz = np.where(axis == 2, np.sign(cz), 0.0)
        return cos_yaw * nx + sin_yaw * nz, ny, -sin_yaw * nx + cos_yaw * nz
    radial = np.sqrt(lx * lx + lz * lz)
    safe_radial = np.maximum(radial, 1e-12)
    if obj.shape == "cylinder":
        radius = obj.width / 2.0
        on_cap = np.abs(obj.height - py) < np.abs(radius - radial)
        return (
            np.where(on_cap, 0.0, lx / safe_radial),
            np.where(on_cap, 1.0, 0.0),
            np.where(on_cap, 0.0, lz / safe_radial),
        )
    # Cone: gradient of x^2 + z^2 - k^2 (h - y)^2.
    slope_sq = (obj.width / 2.0 / obj.height) ** 2
    gx, gy, gz = lx, slope_sq * (obj.height - py), lz
    norm = np.maximum(np.sqrt(gx * gx + gy * gy + gz * gz), 1e-12)
    return gx / norm, gy / norm, gz / norm


# --------------------------------------------------------------------------------------------------------------
# Ray caster
# --------------------------------------------------------------------------------------------------------------
def _screen_window(obj: SceneObject, cam_pos: np.ndarray, rotation: np.ndarray, xs: np.ndarray, ys: np.ndarray):
    """Rows/columns of the ray grid that can possibly hit ``obj`` (conservative: projected bounding box)."""
    corners_cam = (obj.bounding_corners() - cam_pos) @ rotation
    depth = corners_cam[:, 2]
    if np.any(depth <= 1e-9):  # box crosses the camera plane: its projection is unbounded
        return 0, len(ys), 0, len(xs)
    x_norm, y_norm = corners_cam[:, 0] / depth, corners_cam[:, 1] / depth
    col0, col1 = np.searchsorted(xs, x_norm.min(), "left"), np.searchsorted(xs, x_norm.max(), "right")
    row0, row1 = np.searchsorted(ys, y_norm.min(), "left"), np.searchsorted(ys, y_norm.max(), "right")
    return row0, row1, col0, col1


def _srgb_to_linear(color) -> np.ndarray:
    return np.asarray(color, dtype=np.float64) ** GAMMA


def _value_noise(scene_floor: Floor, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Smooth value noise in [0, 1] on a 32x32 periodic lattice (coordinates in lattice cells)."""
    lattice = np.random.default_rng(scene_floor.lattice_seed).random((32, 32))
    a0, b0 = np.floor(a), np.floor(b)
    fa, fb = a - a0, b - b0
    fa, fb = fa * fa * (3 - 2 * fa), fb * fb * (3 - 2 * fb)  # smoothstep removes grid-aligned creases
    ia, ib = a0.astype(np.int64) % 32, b0.astype(np.int64) % 32
    ia1, ib1 = (ia + 1) % 32, (ib + 1) % 32
    top = lattice[ia, ib] * (1 - fa) + lattice[ia1, ib] * fa
    bottom = lattice[ia, ib1] * (1 - fa) + lattice[ia1, ib1] * fa
    return top * (1 - fb) + bottom * fb


def _floor_albedo(floor: Floor, px, pz, footprint) -> np.ndarray:
    """Linear albedo (M, 3) of the ground texture; detail finer than a pixel fades to its mean (cheap AA)."""
    cos_r, sin_r = math.cos(floor.rotation), math.sin(floor.rotation)
    a = (cos_r * px + sin_r * pz + floor.offset[0]) / floor.cell_size
    b = (-sin_r * px + cos_r * pz + floor.offset[1]) / floor.cell_size
    relative_footprint = footprint / floor.cell_size
    if floor.kind == "checker":
        parity = (np.floor(a) + np.floor(b)) % 2.0
        pattern = 0.5 + (parity - 0.5) * np.clip(1.0 - relative_footprint, 0.0, 1.0)
    else:
        coarse = _value_noise(floor, a, b) - 0.5
        fine = _value_noise(floor, a * 2.7 + 11.3, b * 2.7 + 5.1) - 0.5
        pattern = (
            0.5
            + 0.75 * coarse * np.clip(1.0 - relative_footprint, 0.0, 1.0)
            + 0.45 * fine * np.clip(1.0 - 2.7 * relative_footprint, 0.0, 1.0)
        )
        pattern = np.clip(pattern, 0.0, 1.0)
    color_a, color_b = _srgb_to_linear(floor.color_a), _srgb_to_linear(floor.color_b)
    return color_b[None, :] + pattern[:, None] * (color_a - color_b)[None, :]


def _trace(scene: Scene, xs: np.ndarray, ys: np.ndarray, shade: bool):
    """Cast one ray per (ys[row], xs[col]) normalised image coordinate.

    Returns (depth (H, W) with inf on a miss, instance (H, W) int16, linear RGB (H, W, 3) or None, unoccluded
    pixel counts per object).
    """
    rotation = scene.camera.rotation()
    cam_pos = np.asarray(scene.camera.position, dtype=np.float64)
    height, width = len(ys), len(xs)
    # Camera-frame direction (x, y, 1): the ray parameter t is then exactly the z-buffer depth.
    grid_x = np.broadcast_to(xs[None, :], (height, width))
    grid_y = np.broadcast_to(ys[:, None], (height, width))
    dx = rotation[0, 0] * grid_x + rotation[0, 1] * grid_y + rotation[0, 2]
    dy = rotation[1, 0] * grid_x + rotation[1, 1] * grid_y + rotation[1, 2]
    dz = rotation[2, 0] * grid_x + rotation[2, 1] * grid_y + rotation[2, 2]

    with np.errstate(divide="ignore", invalid="ignore"):
        t_ground = np.where(dy < 0, -cam_pos[1] / dy, _NO_HIT)
        # Ground offsets from the point below the camera (the disc centre); inf * 0 = nan on misses is harmless.
        offset_x, offset_z = t_ground * dx, t_ground * dz
        on_disc = offset_x * offset_x + offset_z * offset_z <= scene.floor.radius**2
    depth = np.where(on_disc, t_ground, _NO_HIT)
    instance = np.full((height, width), -1, dtype=np.int16)

    unoccluded = []
    for index, obj in enumerate(scene.objects):
        row0, row1, col0, col1 = _screen_window(obj, cam_pos, rotation, xs, ys)
        if row0 >= row1 or col0 >= col1:
            unoccluded.append(0)
            continue
        window = (slice(row0, row1), slice(col0, col1))
        t_obj = intersect_object(obj, cam_pos, (dx[window], dy[window], dz[window]))
        unoccluded.append(int(np.isfinite(t_obj).sum()))
        closer = t_obj < depth[window]
        depth[window] = np.where(closer, t_obj, depth[window])
        instance[window] = np.where(closer, np.int16(index), instance[window])

    if not shade:
        return depth, instance, None, unoccluded
    rgb = _shade(scene, depth, instance, dx, dy, dz, cam_pos, pixel_angle=float(xs[1] - xs[0]) if width > 1 else 1.0)
    return depth, instance, rgb, unoccluded


def _shade(scene, depth, instance, dx, dy, dz, cam_pos, pixel_angle):
    """Lambert + Blinn-Phong shading with hard shadows from one directional light; sky gradient elsewhere."""
    height, width = depth.shape
    rgb = np.empty((height * width, 3))
    flat_depth = depth.reshape(-1)
    ray_x, ray_y, ray_z = dx.reshape(-1), dy.reshape(-1), dz.reshape(-1)
    ray_length = np.sqrt(ray_x**2 + ray_y**2 + ray_z**2)

    miss = ~np.isfinite(flat_depth)
    elevation = np.clip(ray_y[miss] / ray_length[miss], 0.0, 1.0) ** 0.6
    horizon, zenith = _srgb_to_linear(scene.sky.horizon), _srgb_to_linear(scene.sky.zenith)
    rgb[miss] = horizon[None, :] + elevation[:, None] * (zenith - horizon)[None, :]

    hit = np.flatnonzero(~miss)
    t = flat_depth[hit]
    dxh, dyh, dzh, lengths = ray_x[hit], ray_y[hit], ray_z[hit], ray_length[hit]
    px, py, pz = cam_pos[0] + t * dxh, cam_pos[1] + t * dyh, cam_pos[2] + t * dzh
    inst = instance.reshape(-1)[hit]

    normal_x, normal_y, normal_z = np.zeros(len(hit)), np.ones(len(hit)), np.zeros(len(hit))
    albedo = np.empty((len(hit), 3))
    specular = np.zeros(len(hit))
    shininess = np.ones(len(hit))
    on_ground = inst < 0
    py = np.where(on_ground, 0.0, py)  # the ground is exactly y = 0; removes round-off before shadow rays
    # Metric size of one pixel on the ground, stretched by the grazing angle; drives the texture anti-aliasing.
    footprint = t[on_ground] * pixel_angle / np.maximum(np.abs(dyh[on_ground]) / lengths[on_ground], 0.02)
    albedo[on_ground] = _floor_albedo(scene.floor, px[on_ground], pz[on_ground], footprint)
    for index, obj in enumerate(scene.objects):
        sel = inst == index
        if not sel.any():
            continue
        nx, ny, nz = _object_normals(obj, px[sel], py[sel], pz[sel])
        normal_x[sel], normal_y[sel], normal_z[sel] = nx, ny, nz
        albedo[sel] = _srgb_to_linear(obj.albedo)
        specular[sel] = obj.specular
        shininess[sel] = obj.shininess

    light = np.asarray(scene.light.direction, dtype=np.float64)
    light = light / np.linalg.norm(light)
    n_dot_l = np.maximum(normal_x * light[0] + normal_y * light[1] + normal_z * light[2], 0.0)
    lit = _unshadowed(scene, px, py, pz, normal_x, normal_y, normal_z, inst, light, n_dot_l > 0)

    view_x, view_y, view_z = -dxh / lengths, -dyh / lengths, -dzh / lengths
    half_x, half_y, half_z = light[0] + view_x, light[1] + view_y, light[2] + view_z
    half_norm = np.maximum(np.sqrt(half_x**2 + half_y**2 + half_z**2), 1e-12)
    n_dot_h = np.maximum((normal_x * half_x + normal_y * half_y + normal_z * half_z) / half_norm, 0.0)
    highlight = np.where(specular > 0, specular * n_dot_h**shininess, 0.0)

    # Hemispherical ambient (brighter on upward faces) keeps unlit sides readable but still shaped.
    ambient = scene.light.ambient * (0.75 + 0.25 * normal_y)
    direct = scene.light.intensity * lit
    rgb[hit] = albedo * (ambient + direct * n_dot_l)[:, None] + (direct * highlight * (n_dot_l > 0))[:, None]
    return rgb.reshape(height, width, 3)


def _unshadowed(scene, px, py, pz, normal_x, normal_y, normal_z, inst, light, active):
    """1.0 where the light reaches the point, 0.0 where an object blocks the shadow ray."""
    visible = np.ones(len(px))
    offset = 1e-6  # lift the shadow-ray origin off the surface to avoid self-intersection ("shadow acne")
    ox, oy, oz = px + offset * normal_x, py + offset * normal_y, pz + offset * normal_z
    for index, obj in enumerate(scene.objects):
        # Convex objects cannot shadow themselves where n.l > 0, so skip their own pixels.
        candidates = active & (inst != index) & (visible > 0)
        centre, radius = obj.bounding_sphere()
        cx, cy, cz = ox - centre[0], oy - centre[1], oz - centre[2]
        b = cx * light[0] + cy * light[1] + cz * light[2]
        c = cx * cx + cy * cy + cz * cz - radius * radius
        candidates &= (b * b >= c) & ((b < 0) | (c < 0))
        idx = np.flatnonzero(candidates)
        if len(idx) == 0:
            continue
        t = intersect_object(obj, (ox[idx], oy[idx], oz[idx]), light)
        visible[idx[np.isfinite(t)]] = 0.0
    return visible


def _pixel_grid(size: int, fx: float, cx: float, supersample: int = 1) -> np.ndarray:
    """Normalised image-plane coordinates of (sub-)pixel centres along one axis."""
    if supersample == 1:
        return (np.arange(size) - cx) / fx
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
    return ((np.arange(size)[:, None] + offsets[None, :]).reshape(-1) - cx) / fx


def _to_srgb8(linear: np.ndarray) -> np.ndarray:
    return (np.clip(linear, 0.0, 1.0) ** (1.0 / GAMMA) * 255.0 + 0.5).astype(np.uint8)


def render(scene: Scene, width: int, height: int | None = None, supersample: int = 1) -> Rendering:
    """Render RGB, metric z-depth and instance mask.

    With ``supersample > 1`` only the RGB is anti-aliased (s x s sub-pixel rays, box filter); depth and instance
    always come from the single ray through each pixel centre, so they stay exact.
    """
    height = width if height is None else height
    fx, fy, cx, cy = scene.camera.intrinsics(width, height)
    xs, ys = _pixel_grid(width, fx, cx), _pixel_grid(height, fy, cy)
    depth, instance, linear, unoccluded = _trace(scene, xs, ys, shade=supersample == 1)
    if supersample > 1:
        xs_sub, ys_sub = _pixel_grid(width, fx, cx, supersample), _pixel_grid(height, fy, cy, supersample)
        _, _, linear_sub, _ = _trace(scene, xs_sub, ys_sub, shade=True)
        linear = linear_sub.reshape(height, supersample, width, supersample, 3).mean(axis=(1, 3))
    depth = np.where(np.isfinite(depth), depth, 0.0).astype(np.float32)
    return Rendering(_to_srgb8(linear), depth, instance, (fx, fy, cx, cy), unoccluded)


# --------------------------------------------------------------------------------------------------------------
# Scene sampling
# --------------------------------------------------------------------------------------------------------------
def scene_rng(split: str, index: int, seed: int) -> np.random.Generator:
    """Independent random stream per (seed, split, index); the split id keeps train/val/test disjoint."""
    return np.random.default_rng([seed, SPLIT_IDS[split], index])


def _random_floor(rng: np.random.Generator) -> Floor:
    hue = rng.random()
    saturation = rng.uniform(0.0, 0.22)
    value = rng.uniform(0.35, 0.8)
    contrast = rng.uniform(0.12, 0.35) * rng.choice([-1.0, 1.0])
    color_a = colorsys.hsv_to_rgb(hue, saturation, value)
    color_b = colorsys.hsv_to_rgb(
        (hue + rng.uniform(-0.08, 0.08)) % 1.0, saturation, float(np.clip(value + contrast, 0.1, 0.95))
    )
    return Floor(
        kind=str(rng.choice(["checker", "noise"], p=[0.6, 0.4])),
        # Log-uniform over a 20x range: the texture must not act as a metric ruler for RGB-only models.
        cell_size=float(math.exp(rng.uniform(math.log(0.15), math.log(3.0)))),
        rotation=float(rng.uniform(0, math.pi / 2)),
        offset=(float(rng.uniform(0, 10)), float(rng.uniform(0, 10))),
        color_a=tuple(float(c) for c in color_a),
        color_b=tuple(float(c) for c in color_b),
        lattice_seed=int(rng.integers(0, 2**31 - 1)),
    )


def _random_sky(rng: np.random.Generator) -> Sky:
    overcast = rng.random() < 0.3
    if overcast:
        grey = rng.uniform(0.6, 0.85)
        return Sky(horizon=(grey, grey, grey + 0.03), zenith=(grey - 0.15, grey - 0.13, grey - 0.1))
    return Sky(
        horizon=(rng.uniform(0.75, 0.9), rng.uniform(0.82, 0.92), rng.uniform(0.88, 0.98)),
        zenith=(rng.uniform(0.2, 0.4), rng.uniform(0.4, 0.6), rng.uniform(0.75, 0.95)),
    )


def _random_object(rng: np.random.Generator, color: str) -> SceneObject:
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    yaw = 0.0
    if shape == "sphere":
        width = height = rng.uniform(0.2, 1.5)
    elif shape == "cube":
        width = height = rng.uniform(0.2, 1.5)
        yaw = rng.uniform(0.0, math.pi / 2)
    elif shape == "cylinder":
        width, height = rng.uniform(0.2, 1.2), rng.uniform(0.2, 1.5)
    else:
        width, height = rng.uniform(0.25, 1.3), rng.uniform(0.3, 1.5)
    glossy = rng.random() < 0.5
    albedo = np.clip(np.asarray(COLORS[color]) + rng.uniform(-0.04, 0.04, size=3), 0.0, 1.0)
    return SceneObject(
        shape=shape,
        color=color,
        material="glossy" if glossy else "matte",
        x=0.0,
        z=0.0,
        width=float(width),
        height=float(height),
        yaw=float(yaw),
        albedo=tuple(float(c) for c in albedo),
        specular=float(rng.uniform(0.25, 0.6)) if glossy else 0.0,
        shininess=float(rng.uniform(20, 90)) if glossy else 1.0,
    )


def _sample_candidate(rng: np.random.Generator) -> Scene | None:
    camera_height = rng.uniform(0.8, 2.5)
    camera = Camera(
        position=(float(rng.uniform(-5, 5)), float(camera_height), float(rng.uniform(-5, 5))),
        yaw=float(rng.uniform(0, 2 * math.pi)),
        pitch=math.radians(rng.uniform(5, 35)),
        hfov=math.radians(rng.uniform(40, 80)),
    )
    elevation = math.radians(rng.uniform(25, 70))
    azimuth = rng.uniform(0, 2 * math.pi)
    light = Light(
        direction=(
            math.cos(elevation) * math.sin(azimuth),
            math.sin(elevation),
            math.cos(elevation) * math.cos(azimuth),
        ),
        intensity=float(rng.uniform(0.65, 0.9)),
        ambient=float(rng.uniform(0.2, 0.4)),
    )
    floor, sky = _random_floor(rng), _random_sky(rng)

    # Ground distances covered by the image's vertical field of view (square images: vfov == hfov).
    half_fov = camera.hfov / 2
    near = camera_height / math.tan(min(camera.pitch + half_fov, math.radians(89.0)))
    far = camera_height / math.tan(camera.pitch - half_fov) if camera.pitch > half_fov else math.inf
    far = min(far, near + 8.0)
    # Two-object scenes are kept rarer because depth_order needs three objects and must stay balanced.
    num_objects = int(rng.choice([2, 3, 4, 5], p=[0.15, 0.3, 0.3, 0.25]))
    colors = rng.choice(list(COLORS), size=num_objects, replace=False)
    objects: list[SceneObject] = []
    for color in colors:
        obj = _random_object(rng, str(color))
        for _ in range(30):
            distance = rng.uniform(near + 0.3, max(far, near + 0.6))
            azimuth_offset = rng.uniform(-0.8, 0.8) * half_fov
            heading = camera.yaw + azimuth_offset
            x = camera.position[0] + distance * math.sin(heading)
            z = camera.position[2] + distance * math.cos(heading)
            gap_ok = all(
                math.hypot(x - other.x, z - other.z) >= obj.footprint_radius + other.footprint_radius + 0.15
                for other in objects
            )
            clear_of_camera = math.hypot(x - camera.position[0], z - camera.position[2]) > obj.footprint_radius + 0.5
            if gap_ok and clear_of_camera:
                obj.x, obj.z = float(x), float(z)
                objects.append(obj)
                break
    if len(objects) < 2:
        return None
    return Scene(camera=camera, objects=objects, light=light, floor=floor, sky=sky)


def _is_acceptable(scene: Scene) -> bool:
    """Every object must be clearly visible so that questions about it are answerable from the image."""
    fx, fy, cx, cy = scene.camera.intrinsics(ACCEPT_SIZE, ACCEPT_SIZE)
    xs, ys = _pixel_grid(ACCEPT_SIZE, fx, cx), _pixel_grid(ACCEPT_SIZE, fy, cy)
    _, instance, _, unoccluded = _trace(scene, xs, ys, shade=False)
    visible = np.bincount(instance.reshape(-1) + 1, minlength=len(scene.objects) + 1)[1:]
    rotation, cam_pos = scene.camera.rotation(), np.asarray(scene.camera.position)
    for index, obj in enumerate(scene.objects):
        centre_cam = (obj.center - cam_pos) @ rotation
        if centre_cam[2] <= 0.1:
            return False
        u = (fx * centre_cam[0] / centre_cam[2] + cx) / ACCEPT_SIZE
        v = (fy * centre_cam[1] / centre_cam[2] + cy) / ACCEPT_SIZE
        if not (0.03 <= u <= 0.97 and 0.03 <= v <= 0.97):
            return False
        if visible[index] < 12 or visible[index] < 0.45 * unoccluded[index]:
            return False
        # Mostly inside the frame: at most 30% of the projected bounding box may be cut off by the image border.
        corners_cam = (obj.bounding_corners() - cam_pos) @ rotation
        if np.any(corners_cam[:, 2] <= 0.05):
            return False
        box_u = fx * corners_cam[:, 0] / corners_cam[:, 2] + cx
        box_v = fy * corners_cam[:, 1] / corners_cam[:, 2] + cy
        box_area = (box_u.max() - box_u.min()) * (box_v.max() - box_v.min())
        inside_u = np.clip(box_u.max(), -0.5, ACCEPT_SIZE - 0.5) - np.clip(box_u.min(), -0.5, ACCEPT_SIZE - 0.5)
        inside_v = np.clip(box_v.max(), -0.5, ACCEPT_SIZE - 0.5) - np.clip(box_v.min(), -0.5, ACCEPT_SIZE - 0.5)
        if inside_u * inside_v < 0.7 * box_area:
            return False
    return True


def sample_scene(split: str, index: int, seed: int = 0) -> Scene:
    """Deterministically sample an accepted scene for (split, index, seed)."""
    rng = scene_rng(split, index, seed)
    for _ in range(200):
        scene = _sample_candidate(rng)
        if scene is not None and _is_acceptable(scene):
            scene.scene_id = f"{split}-{seed}-{index:07d}"
            scene.split, scene.index, scene.seed = split, index, seed
            return scene
    raise RuntimeError(f"could not sample an acceptable scene for {split=} {index=} {seed=}")


# --------------------------------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------------------------------
def scene_metadata(scene: Scene, rendering: Rendering) -> dict:
    """JSON-serialisable description of the scene as rendered (intrinsics depend on the resolution)."""
    height, width = rendering.depth.shape
    fx, fy, cx, cy = rendering.intrinsics
    rotation, cam_pos = scene.camera.rotation(), np.asarray(scene.camera.position)
    visible = np.bincount(rendering.instance.reshape(-1) + 1, minlength=len(scene.objects) + 1)[1:]
    objects = []
    for index, obj in enumerate(scene.objects):
        centre_cam = (obj.center - cam_pos) @ rotation
        objects.append(
            {
                "id": index,
                "description": obj.description,
                "shape": obj.shape,
                "color": obj.color,
                "material": obj.material,
                "center_world": obj.center.tolist(),
                "center_camera": centre_cam.tolist(),
                "center_pixel": [
                    fx * centre_cam[0] / centre_cam[2] + cx,
                    fy * centre_cam[1] / centre_cam[2] + cy,
                ],
                "distance_to_camera": float(np.linalg.norm(obj.center - cam_pos)),
                "size": {"width": obj.width, "height": obj.height, "depth": obj.width},
                "yaw_deg": math.degrees(obj.yaw),
                "albedo_srgb": list(obj.albedo),
                "specular": obj.specular,
                "shininess": obj.shininess,
                "visible_pixels": int(visible[index]),
            }
        )
    return {
        "scene_id": scene.scene_id,
        "split": scene.split,
        "index": scene.index,
        "seed": scene.seed,
        "image_size": [height, width],
        "intrinsics": {"fx": fx, "fy": fy, "cx": cx, "cy": cy},
        "camera_to_world": scene.camera.pose().tolist(),
        "camera": {
            "height": float(scene.camera.position[1]),
            "pitch_deg": math.degrees(scene.camera.pitch),
            "yaw_deg": math.degrees(scene.camera.yaw),
            "hfov_deg": math.degrees(scene.camera.hfov),
        },
        "light": {
            "direction": list(scene.light.direction),
            "intensity": scene.light.intensity,
            "ambient": scene.light.ambient,
        },
        "floor": {
            "kind": scene.floor.kind,
            "cell_size": scene.floor.cell_size,
            "color_a": list(scene.floor.color_a),
            "color_b": list(scene.floor.color_b),
            "rotation": scene.floor.rotation,
            "offset": list(scene.floor.offset),
            "lattice_seed": scene.floor.lattice_seed,
            "radius": scene.floor.radius,
        },
        "sky": {"horizon": list(scene.sky.horizon), "zenith": list(scene.sky.zenith)},
        "objects": objects,
    }


# --------------------------------------------------------------------------------------------------------------
# Questions
# --------------------------------------------------------------------------------------------------------------
QUESTION_TYPES = (
    "distance_to_camera",
    "distance_between",
    "closer",
    "depth_order",
    "object_height",
    "object_width",
    "left_right",
    "above_below",
    "point_depth",
    "color",
    "shape",
    "count",
)
TEMPLATES = {
    "distance_to_camera": (
        "How far is the centre of the {a} from the camera, in metres?",
        "What is the distance between the camera and the centre of the {a}? Answer in metres.",
        "Estimate how many metres separate the camera from the centre of the {a}.",
        "How many metres away from the camera is the centre of the {a}?",
    ),
    "distance_between": (
        "How far apart are the {a} and the {b}? Give the centre-to-centre distance in metres.",
        "What is the distance in metres between the centres of the {a} and the {b}?",
        "Measured between their centres, how many metres separate the {a} from the {b}?",
    ),
    "closer": (
        "Which is closer to the camera: the {a} or the {b}?",
        "Between the {a} and the {b}, which one is nearer to the camera?",
        "Which object is nearer to the viewer, the {a} or the {b}?",
    ),
    "depth_order": (
        "Order the {a}, the {b} and the {c} from nearest to farthest from the camera.",
        "Sort these objects by distance from the camera, nearest first: the {a}, the {b}, the {c}.",
        "List the {a}, the {b} and the {c} from closest to the camera to farthest.",
    ),
    "object_height": (
        "How tall is the {a}, in metres?",
        "What is the real height of the {a} in metres?",
        "Estimate the height of the {a} in metres.",
    ),
    "object_width": (
        "How wide is the {a}, in metres?",
        "What is the real width of the {a} (its diameter or side length) in metres?",
        "Estimate the width of the {a} in metres.",
    ),
    "left_right": (
        "From the camera's viewpoint, is the {a} to the left or to the right of the {b}?",
        "In the image, is the {a} left or right of the {b}?",
        "Does the {a} appear to the left or to the right of the {b} in the picture?",
    ),
    "above_below": (
        "In the image, is the {a} above or below the {b}?",
        "Does the {a} appear above or below the {b} in the picture?",
        "From the camera's viewpoint, is the {a} higher (above) or lower (below) in the image than the {b}?",
    ),
    "point_depth": (
        "What is the depth, in metres, at the point marked by the red circle?",
        "How far from the camera along its viewing direction is the surface inside the red circle? Answer in metres.",
        "Estimate the metric depth (distance along the optical axis) of the point marked with the red circle.",
    ),
    "color": (
        "What colour is the {shape}?",
        "What is the colour of the {shape}?",
        "Which colour does the {shape} have?",
    ),
    "shape": (
        "What shape is the {color} object?",
        "What kind of shape is the {color} object?",
        "Which geometric shape is the {color} object?",
    ),
    "count": (
        "How many objects are there?",
        "How many objects are standing on the ground?",
        "Count the objects in the scene.",
    ),
}
# Minimum separations for choice questions, so the answer is unambiguous to a careful observer.
CLOSER_MIN_GAP_M = 0.25
CLOSER_MIN_GAP_REL = 0.10
IMAGE_MIN_GAP = 0.05  # fraction of the image width/height
REPEAT_PENALTY = 2


# Stage 0's dense caption: every object's colour and shape, in image order (a grounding signal on every object, where a
# question supervises one word about one object).
DESCRIBE_QUESTION = "Describe the scene: list the objects from left to right."


def describe_objects(objects: list[dict]) -> str:
    """The objects of `scene_metadata` as "green cone, orange cube, cyan cube", left to right in the image."""
    return ", ".join(obj["description"] for obj in sorted(objects, key=lambda obj: obj["center_pixel"][0]))


def format_metres(value: float) -> str:
    return f"{value:.2f} m"


def marker_radius(width: int) -> int:
    return max(3, round(width / 56))


def draw_marker(rgb: np.ndarray, u: int, v: int) -> np.ndarray:
    """Copy of ``rgb`` with a red ring (white halo) centred on pixel (u, v); the ring leaves the point visible."""
    marked = rgb.copy()
    radius = marker_radius(rgb.shape[1])
    reach = radius + 2
    rows = np.arange(max(v - reach, 0), min(v + reach + 1, rgb.shape[0]))
    cols = np.arange(max(u - reach, 0), min(u + reach + 1, rgb.shape[1]))
    distance = np.sqrt((rows[:, None] - v) ** 2 + (cols[None, :] - u) ** 2)
    patch = marked[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    patch[(distance > radius + 0.7) & (distance <= radius + 1.7)] = (255, 255, 255)
    patch[(distance > radius - 0.8) & (distance <= radius + 0.7)] = (230, 0, 0)
    return marked


def _pick_marker_pixels(rendering: Rendering, rng: np.random.Generator, count: int) -> list[tuple[int, int]]:
    """Valid pixels whose 5x5 neighbourhood is one smooth surface, so the marked depth is well defined."""
    depth, instance = rendering.depth, rendering.instance
    height, width = depth.shape
    margin = marker_radius(width) + 3
    centre = (slice(margin, height - margin), slice(margin, width - margin))
    core_depth, core_instance = depth[centre], instance[centre]
    smooth = core_depth > 0
    low, high = core_depth.copy(), core_depth.copy()
    for drow, dcol in itertools.product((-2, -1, 0, 1, 2), repeat=2):
        shifted = (slice(margin + drow, height - margin + drow), slice(margin + dcol, width - margin + dcol))
        smooth &= (instance[shifted] == core_instance) & (depth[shifted] > 0)
        low, high = np.minimum(low, depth[shifted]), np.maximum(high, depth[shifted])
    smooth &= (high - low) <= 0.03 * core_depth
    rows, cols = np.nonzero(smooth)
    on_object = core_instance[rows, cols] >= 0
    pixels = []
    for _ in range(count):
        pool = np.flatnonzero(on_object if (on_object.any() and rng.random() < 0.5) else ~on_object)
        if len(pool) == 0:
            pool = np.arange(len(rows))
        if len(pool) == 0:
            break
        pick = int(pool[rng.integers(len(pool))])
        pixels.append((int(cols[pick]) + margin, int(rows[pick]) + margin))
    return pixels


def candidate_questions(scene: Scene, rendering: Rendering, rng: np.random.Generator) -> dict[str, list[Question]]:
    """All answerable questions for a rendered scene, grouped by type (one random phrasing each)."""
    meta = scene_metadata(scene, rendering)
    objects = meta["objects"]
    height, width = rendering.depth.shape
    ids = range(len(objects))
    distance = [o["distance_to_camera"] for o in objects]
    desc = [o["description"] for o in objects]
    centres = [np.asarray(o["center_world"]) for o in objects]

    def phrase(kind: str, **names) -> str:
        templates = TEMPLATES[kind]
        return templates[int(rng.integers(len(templates)))].format(**names)

    def clearly_closer(i: int, j: int) -> bool:
        gap = abs(distance[i] - distance[j])
        return gap >= CLOSER_MIN_GAP_M and gap >= CLOSER_MIN_GAP_REL * min(distance[i], distance[j])

    out: dict[str, list[Question]] = {kind: [] for kind in QUESTION_TYPES}

    def ask(kind, ids, answer, value=None, choices=(), marker=None, **names) -> None:
        """Add a candidate; a numeric ``value`` makes it a metric question (unit "m", answer "2.35 m")."""
        unit = "m" if value is not None else ""
        out[kind].append(Question(kind, phrase(kind, **names), answer, value, list(choices), unit, list(ids), marker))

    for i in ids:
        ask("distance_to_camera", [i], format_metres(distance[i]), distance[i], a=desc[i])
        for kind, value in (
            ("object_height", objects[i]["size"]["height"]),
            ("object_width", objects[i]["size"]["width"]),
        ):
            ask(kind, [i], format_metres(value), value, a=desc[i])
        ask("shape", [i], objects[i]["shape"], color=objects[i]["color"])
        same_shape = [j for j in ids if objects[j]["shape"] == objects[i]["shape"]]
        if len(same_shape) == 1:  # "the cube" is only a unique reference if there is one cube
            ask("color", [i], objects[i]["color"], shape=objects[i]["shape"])
    ask("count", ids, str(len(objects)))

    for i, j in itertools.combinations(ids, 2):
        a, b = (i, j) if rng.random() < 0.5 else (j, i)
        pair = {"a": desc[a], "b": desc[b]}
        separation = float(np.linalg.norm(centres[a] - centres[b]))
        ask("distance_between", [a, b], format_metres(separation), separation, **pair)
        if clearly_closer(a, b):
            nearest = a if distance[a] < distance[b] else b
            ask("closer", [a, b], desc[nearest], choices=[desc[a], desc[b]], **pair)
        # Image-space relations must agree with the camera-frame coordinates and have a clear margin.
        du = (objects[a]["center_pixel"][0] - objects[b]["center_pixel"][0]) / width
        dx = objects[a]["center_camera"][0] - objects[b]["center_camera"][0]
        if abs(du) > IMAGE_MIN_GAP and np.sign(du) == np.sign(dx):
            ask("left_right", [a, b], "left" if du < 0 else "right", choices=["left", "right"], **pair)
        dv = (objects[a]["center_pixel"][1] - objects[b]["center_pixel"][1]) / height
        dy = objects[a]["center_camera"][1] - objects[b]["center_camera"][1]
        if abs(dv) > IMAGE_MIN_GAP and np.sign(dv) == np.sign(dy):
            ask("above_below", [a, b], "above" if dv < 0 else "below", choices=["above", "below"], **pair)

    for triple in itertools.combinations(ids, 3):
        order = sorted(triple, key=lambda k: distance[k])
        if all(clearly_closer(order[k], order[k + 1]) for k in range(2)):
            asked = [int(k) for k in rng.permutation(triple)]
            answer = ", ".join(desc[k] for k in order)
            names = {"a": desc[asked[0]], "b": desc[asked[1]], "c": desc[asked[2]]}
            ask("depth_order", asked, answer, choices=[desc[k] for k in asked], **names)

    for u, v in _pick_marker_pixels(rendering, rng, count=2):
        value = float(rendering.depth[v, u])
        instance = int(rendering.instance[v, u])
        ask("point_depth", [instance] if instance >= 0 else [], format_metres(value), value, marker=(u, v))
    return out


def select_questions(
    candidates: dict[str, list[Question]], k: int, type_counts: dict[str, int], rng: np.random.Generator
) -> list[Question]:
    """Pick k questions, favouring types used least so far (``type_counts`` is updated in place).

    Balancing greedily on running counts keeps every type near 1/12 of a shard even though some types (e.g.
    depth_order, which needs three well-separated objects) are not available in every scene.
    """
    pools = {kind: list(qs) for kind, qs in candidates.items() if qs}
    used_here: dict[str, int] = {}
    chosen = []
    for _ in range(k):
        if not pools:
            break
        tie_break = {kind: rng.random() for kind in pools}
        # A type may repeat within a scene only once it lags the others by REPEAT_PENALTY questions.
        kind = min(pools, key=lambda t: (type_counts.get(t, 0) + REPEAT_PENALTY * used_here.get(t, 0), tie_break[t]))
        pool = pools[kind]
        chosen.append(pool.pop(int(rng.integers(len(pool)))))
        used_here[kind] = used_here.get(kind, 0) + 1
        type_counts[kind] = type_counts.get(kind, 0) + 1
        if not pool:
            del pools[kind]
    return chosen


@dataclass
class Sample:
    scene: Scene
    rendering: Rendering
    metadata: dict
    questions: list[Question]


def make_sample(
    split: str,
    index: int,
    seed: int,
    size: int,
    questions_per_scene: int = 6,
    type_counts: dict[str, int] | None = None,
    supersample: int = 1,
) -> Sample:
    """Sample, render and ask questions about one scene; deterministic in (split, index, seed, size)."""
    scene = sample_scene(split, index, seed)
    rendering = render(scene, size, supersample=supersample)
    # Question sampling has its own stream so that it cannot perturb scene sampling (and vice versa).
    question_rng = np.random.default_rng([seed, SPLIT_IDS[split], index, 1])
    candidates = candidate_questions(scene, rendering, question_rng)
    counts = {} if type_counts is None else type_counts
    questions = select_questions(candidates, questions_per_scene, counts, question_rng)
    return Sample(scene, rendering, scene_metadata(scene, rendering), questions)


# --------------------------------------------------------------------------------------------------------------
# Encoding helpers
# --------------------------------------------------------------------------------------------------------------
def encode_png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def metadata_json(metadata: dict) -> str:
    return json.dumps(metadata, sort_keys=True, separators=(",", ":"))
