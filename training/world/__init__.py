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

Layout, in pipeline order:

* ``scene.py``: the scene description (camera, objects, light, floor, sky) and the object vocabulary.
* ``render.py``: the ray caster (``render``) and the scene as rendered (``scene_metadata``).
* ``scene_sampling.py``: random, accepted scenes (``sample_scene``), deterministic in ``(split, index, seed)``.
* ``questions.py``: questions and their exact answers (``candidate_questions``, ``select_questions``).
* ``sample.py``: one dataset sample end to end (``make_sample``) and its PNG/JSON encodings.
"""

from training.depth_png import MAX_DEPTH_PNG, decode_depth_png, encode_depth_png
from training.world.questions import (
    CLOSER_MIN_GAP_M,
    CLOSER_MIN_GAP_REL,
    DESCRIBE_QUESTION,
    IMAGE_MIN_GAP,
    QUESTION_TYPES,
    REPEAT_PENALTY,
    TEMPLATES,
    Question,
    candidate_questions,
    describe_objects,
    draw_marker,
    format_metres,
    marker_radius,
    question_corpus,
    select_questions,
)
from training.world.render import GAMMA, Rendering, intersect_object, render, scene_metadata
from training.world.sample import Sample, encode_png, make_sample, metadata_json
from training.world.scene import (
    COLORS,
    GROUND_RADIUS,
    MATERIALS,
    SHAPES,
    Camera,
    Floor,
    Light,
    Scene,
    SceneObject,
    Sky,
)
from training.world.scene_sampling import ACCEPT_SIZE, SPLIT_IDS, sample_scene, scene_rng


__all__ = [
    "ACCEPT_SIZE",
    "CLOSER_MIN_GAP_M",
    "CLOSER_MIN_GAP_REL",
    "COLORS",
    "DESCRIBE_QUESTION",
    "GAMMA",
    "GROUND_RADIUS",
    "IMAGE_MIN_GAP",
    "MATERIALS",
    "MAX_DEPTH_PNG",
    "QUESTION_TYPES",
    "REPEAT_PENALTY",
    "SHAPES",
    "SPLIT_IDS",
    "TEMPLATES",
    "Camera",
    "Floor",
    "Light",
    "Question",
    "Rendering",
    "Sample",
    "Scene",
    "SceneObject",
    "Sky",
    "candidate_questions",
    "decode_depth_png",
    "describe_objects",
    "question_corpus",
    "draw_marker",
    "encode_depth_png",
    "encode_png",
    "format_metres",
    "intersect_object",
    "make_sample",
    "marker_radius",
    "metadata_json",
    "render",
    "sample_scene",
    "scene_metadata",
    "scene_rng",
    "select_questions",
]
