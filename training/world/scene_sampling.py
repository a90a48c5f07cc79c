"""Random scenes: a pure function of ``(split, index, seed)``, accepted only when every object is clearly visible.

Each split draws from its own random stream (``SPLIT_IDS``), so train, val and test never share a scene. Acceptance is
checked at a fixed proxy resolution (``ACCEPT_SIZE``), so the accepted scene does not depend on the size it is finally
rendered at.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np

from training.world.render import _pixel_grid, _trace
from training.world.scene import COLORS, SHAPES, Camera, Floor, Light, Scene, SceneObject, Sky


SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
# Proxy resolution used to accept/reject sampled scenes (visibility checks). Fixed, so that the accepted scene
# never depends on the resolution it is finally rendered at.
ACCEPT_SIZE = 96


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
