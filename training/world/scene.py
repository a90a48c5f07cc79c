"""The scene description: a camera, analytic objects resting on the ground, a light, a floor texture and a sky.

Plain dataclasses with the geometry the renderer and the questions share (an object's centre, footprint and bounding
box); the frame conventions are the package's (``training.world``).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np


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
