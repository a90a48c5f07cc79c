"""The vectorised NumPy ray caster: exact metric z-depth, an instance mask and shaded RGB for a ``Scene``.

``render`` casts one ray per pixel centre against the ground disc and every object (analytic intersections), shades the
hits (Lambert + Blinn-Phong, hard shadows from one directional light) and reports depth in the package's conventions;
``scene_metadata`` is the scene as rendered at that resolution (intrinsics, pose, each object's pixel and camera-frame
centre, its visible pixels), the ground truth every answer is computed from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from training.world.scene import Floor, Scene, SceneObject


GAMMA = 2.2
_NO_HIT = np.inf


@dataclass
class Rendering:
    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32 metres, 0 = invalid (sky)
    instance: np.ndarray  # (H, W) int16, -1 = sky/ground, i = objects[i]
    intrinsics: tuple[float, float, float, float]  # fx, fy, cx, cy
    unoccluded_pixels: list[int]  # per object: pixels it would cover if nothing else occluded it


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
