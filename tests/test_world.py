"""Value tests for the rendered RGB-D world: exact depth, shading, question answers, splits, encoding, writer."""

import collections
import hashlib
import json
import math
import re

import numpy as np
import pytest

from training import make_world, world


def pixel_rays(meta: dict) -> tuple[np.ndarray, np.ndarray]:
    """World-frame ray directions (H, W, 3) with camera-frame z = 1, and the camera centre, from metadata only."""
    height, width = meta["image_size"]
    intr = meta["intrinsics"]
    pose = np.asarray(meta["camera_to_world"])
    cols, rows = np.meshgrid(np.arange(width), np.arange(height))
    cam = np.stack([(cols - intr["cx"]) / intr["fx"], (rows - intr["cy"]) / intr["fy"], np.ones_like(cols, float)], -1)
    return cam @ pose[:3, :3].T, pose[:3, 3]


def single_object_scene(obj, position, pitch_deg=0.0, yaw_deg=0.0, hfov_deg=60.0, **scene_kwargs):
    camera = world.Camera(
        position=position, yaw=math.radians(yaw_deg), pitch=math.radians(pitch_deg), hfov=math.radians(hfov_deg)
    )
    return world.Scene(camera=camera, objects=[obj] if obj is not None else [], **scene_kwargs)


def surface_residual(obj: world.SceneObject, points: np.ndarray) -> np.ndarray:
    """Distance-like residual of world points from the analytic surface of obj (0 on the surface)."""
    local = points - np.array([obj.x, 0.0, obj.z])
    x, y, z = local[:, 0], local[:, 1], local[:, 2]
    half = obj.width / 2
    if obj.shape == "sphere":
        return np.abs(np.sqrt(x**2 + (y - half) ** 2 + z**2) - half)
    if obj.shape == "cube":
        c, s = math.cos(obj.yaw), math.sin(obj.yaw)
        lx, lz = c * x - s * z, s * x + c * z
        return np.abs(np.maximum.reduce([np.abs(lx), np.abs(y - half), np.abs(lz)]) - half)
    radial = np.sqrt(x**2 + z**2)
    if obj.shape == "cylinder":
        side = np.abs(radial - half) + np.maximum(y - obj.height, 0) + np.maximum(-y, 0)
        cap = np.abs(y - obj.height) + np.maximum(radial - half, 0)
        return np.minimum(side, cap)
    return np.abs(radial - half * (1 - y / obj.height)) + np.maximum(y - obj.height, 0) + np.maximum(-y, 0)


# ---------------------------------------------------------------------------------------------------------------
# Geometry: rendered depth equals the analytic ray-primitive distance
# ---------------------------------------------------------------------------------------------------------------
ON_AXIS_CASES = [
    # (object, camera height, expected depth at the centre pixel for a level camera at the origin looking along +z)
    (world.SceneObject("sphere", "red", "matte", 0.0, 5.0, 1.0, 1.0), 0.5, 5.0 - 0.5),
    (world.SceneObject("cube", "blue", "matte", 0.0, 5.0, 1.0, 1.0), 0.5, 5.0 - 0.5),
    (
        world.SceneObject("cube", "blue", "matte", 0.0, 5.0, 1.0, 1.0, yaw=math.radians(30)),
        0.5,
        5.0 - 0.5 / math.cos(math.radians(30)),  # the axis meets the front face, whose normal is 30 deg off
    ),
    (world.SceneObject("cylinder", "green", "matte", 0.0, 5.0, 0.8, 1.2), 0.6, 5.0 - 0.4),
    # Cone of base radius 0.5 and height 1.5: at height 0.5 its radius is 0.5 * (1 - 0.5 / 1.5).
    (world.SceneObject("cone", "yellow", "matte", 0.0, 5.0, 1.0, 1.5), 0.5, 5.0 - 0.5 * (1 - 0.5 / 1.5)),
]


@pytest.mark.parametrize("obj, camera_height, expected", ON_AXIS_CASES, ids=lambda c: getattr(c, "shape", ""))
def test_depth_on_optical_axis_matches_closed_form(obj, camera_height, expected):
    scene = single_object_scene(obj, (0.0, camera_height, 0.0))
    rendering = world.render(scene, 65)  # odd size: pixel (32, 32) lies exactly on the optical axis
    assert rendering.intrinsics[2] == 32.0 and rendering.intrinsics[3] == 32.0
    assert rendering.depth[32, 32] == pytest.approx(expected, abs=1e-5)
    assert rendering.instance[32, 32] == 0


@pytest.mark.parametrize(
    "obj, expected",
    [
        (world.SceneObject("sphere", "red", "matte", 0.0, 0.0, 1.0, 1.0), 3.0 - 1.0),
        (world.SceneObject("cube", "red", "matte", 0.0, 0.0, 0.7, 0.7, yaw=0.4), 3.0 - 0.7),
        (world.SceneObject("cylinder", "red", "matte", 0.0, 0.0, 0.6, 1.2), 3.0 - 1.2),  # top cap
    ],
    ids=lambda c: getattr(c, "shape", ""),
)
def test_depth_looking_straight_down_hits_the_top(obj, expected):
    scene = single_object_scene(obj, (0.0, 3.0, 0.0), pitch_deg=90.0)
    rendering = world.render(scene, 65)
    assert rendering.depth[32, 32] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("shape", world.SHAPES)
def test_every_object_pixel_lies_on_the_analytic_surface(shape):
    width, height = (0.9, 0.9) if shape in ("sphere", "cube") else (0.8, 1.3)
    obj = world.SceneObject(shape, "red", "matte", 0.4, 4.0, width, height, yaw=0.5 if shape == "cube" else 0.0)
    scene = single_object_scene(obj, (0.0, 1.6, 0.0), pitch_deg=20.0, yaw_deg=5.0)
    rendering = world.render(scene, 96)
    meta = world.scene_metadata(scene, rendering)
    rays, centre = pixel_rays(meta)
    on_object = rendering.instance == 0
    assert on_object.sum() > 200
    # Back-project each object pixel with its z-depth; the point must sit on the primitive's surface.
    points = centre + rays[on_object] * rendering.depth[on_object][:, None].astype(np.float64)
    assert surface_residual(obj, points).max() < 1e-5


def test_sampled_scene_pixels_back_project_onto_their_surfaces():
    for index in range(6):
        scene = world.sample_scene("val", index, seed=11)
        rendering = world.render(scene, 96)
        rays, centre = pixel_rays(world.scene_metadata(scene, rendering))
        points = centre + rays * rendering.depth[..., None].astype(np.float64)
        ground = (rendering.instance == -1) & (rendering.depth > 0)
        assert np.abs(points[ground][:, 1]).max() < 1e-6  # ground pixels are on y = 0
        for i, obj in enumerate(scene.objects):
            on_object = rendering.instance == i
            assert surface_residual(obj, points[on_object]).max() < 1e-5


def test_sphere_silhouette_matches_angular_radius():
    obj = world.SceneObject("sphere", "red", "matte", 0.3, 4.0, 1.2, 1.2)
    scene = single_object_scene(obj, (0.0, 1.5, 0.0), pitch_deg=10.0)
    rendering = world.render(scene, 96)
    rays, centre = pixel_rays(world.scene_metadata(scene, rendering))
    to_centre = obj.center - centre
    unit = rays / np.linalg.norm(rays, axis=-1, keepdims=True)
    angle = np.arccos(np.clip(unit @ (to_centre / np.linalg.norm(to_centre)), -1, 1))
    limit = math.asin(0.6 / np.linalg.norm(to_centre))
    clear = np.abs(angle - limit) > 1e-4  # ignore pixels grazing the silhouette
    assert np.array_equal((rendering.instance == 0)[clear], (angle < limit)[clear])


def test_ground_plane_depth_is_the_analytic_plane_intersection():
    camera = world.Camera(position=(1.0, 1.5, -2.0), yaw=0.7, pitch=math.radians(20), hfov=math.radians(60))
    rendering = world.render(world.Scene(camera=camera, objects=[]), 65)
    meta = world.scene_metadata(world.Scene(camera=camera, objects=[]), rendering)
    pose = np.asarray(meta["camera_to_world"])
    rotation = pose[:3, :3]
    assert np.allclose(rotation.T @ rotation, np.eye(3)) and np.linalg.det(rotation) == pytest.approx(1.0)
    pitch = math.radians(20)
    forward = [math.sin(0.7) * math.cos(pitch), -math.sin(pitch), math.cos(0.7) * math.cos(pitch)]
    assert np.allclose(rotation[:, 2], forward)
    assert rotation[1, 1] < 0  # camera y (image down) points towards the ground

    rays, centre = pixel_rays(meta)
    with np.errstate(divide="ignore"):
        t = np.where(rays[..., 1] < 0, -centre[1] / rays[..., 1], np.inf)
    hit = centre[None, None, [0, 2]] + t[..., None] * rays[..., [0, 2]]
    on_disc = np.linalg.norm(hit - centre[[0, 2]], axis=-1) <= world.GROUND_RADIUS
    expected = np.where(on_disc & np.isfinite(t), t, 0.0)
    assert np.allclose(rendering.depth, expected, rtol=1e-6, atol=1e-5)
    assert (rendering.depth > 0).sum() > 1000 and (rendering.depth == 0).sum() > 100  # ground and sky both seen
    # Centre pixel: the optical axis meets the ground at z-depth h / sin(pitch).
    assert rendering.depth[32, 32] == pytest.approx(1.5 / math.sin(math.radians(20)), abs=1e-5)
    assert (rendering.instance == -1).all()


def test_occlusion_keeps_the_nearest_surface():
    near = world.SceneObject("cube", "blue", "matte", 0.0, 3.0, 0.6, 0.6)
    far = world.SceneObject("sphere", "red", "matte", 0.0, 6.0, 1.6, 1.6)
    camera = world.Camera(position=(0.0, 0.3, 0.0), yaw=0.0, pitch=0.0, hfov=math.radians(60))
    rendering = world.render(world.Scene(camera=camera, objects=[far, near]), 65)
    assert rendering.instance[32, 32] == 1
    assert rendering.depth[32, 32] == pytest.approx(3.0 - 0.3, abs=1e-5)


def test_shading_lambert_and_shadow_values():
    grey = (0.5, 0.5, 0.5)
    floor = world.Floor(kind="checker", color_a=grey, color_b=grey)
    light = world.Light(direction=(0.6, 0.8, 0.0), intensity=0.7, ambient=0.3)
    sphere = world.SceneObject("sphere", "red", "matte", 0.0, 4.0, 1.0, 1.0)
    scene = single_object_scene(sphere, (0.0, 2.0, 0.0), pitch_deg=30.0, floor=floor, light=light)
    rendering = world.render(scene, 65)
    rays, centre = pixel_rays(world.scene_metadata(scene, rendering))
    points = centre + rays * rendering.depth[..., None].astype(np.float64)
    light_dir = np.array(light.direction)

    def to_srgb8(linear):
        return np.clip(linear, 0, 1) ** (1 / 2.2) * 255

    # Ground: lit = albedo * (ambient + I * n.l); shadowed = albedo * ambient (n = up, hemispherical factor 1).
    ground = (rendering.instance == -1) & (rendering.depth > 0)
    oc = points[ground] - sphere.center
    b = oc @ light_dir
    shadowed = (b * b - ((oc * oc).sum(-1) - 0.25) >= 0) & (b < 0)
    assert shadowed.sum() >= 10 and (~shadowed).sum() >= 100
    albedo = 0.5**2.2
    expected = np.where(shadowed, albedo * 0.3, albedo * (0.3 + 0.7 * 0.8))
    assert np.abs(rendering.rgb[ground][:, 0].astype(float) - to_srgb8(expected)).max() <= 1.0

    # Matte sphere: albedo * (ambient * (0.75 + 0.25 n_y) + I * max(n.l, 0)), nothing else can shadow it.
    on_sphere = rendering.instance == 0
    normals = (points[on_sphere] - sphere.center) / 0.5
    red = np.asarray(world.COLORS["red"]) ** 2.2
    shade = 0.3 * (0.75 + 0.25 * normals[:, 1]) + 0.7 * np.maximum(normals @ light_dir, 0)
    assert np.abs(rendering.rgb[on_sphere].astype(float) - to_srgb8(red[None, :] * shade[:, None])).max() <= 1.0


def test_supersampling_keeps_depth_exact():
    scene = world.sample_scene("train", 3, seed=0)
    plain, smooth = world.render(scene, 64), world.render(scene, 64, supersample=2)
    assert np.array_equal(plain.depth, smooth.depth) and np.array_equal(plain.instance, smooth.instance)
    assert not np.array_equal(plain.rgb, smooth.rgb)
    assert np.abs(plain.rgb.astype(int) - smooth.rgb.astype(int)).mean() < 10


# ---------------------------------------------------------------------------------------------------------------
# Scene sampling
# ---------------------------------------------------------------------------------------------------------------
def test_sampled_scenes_respect_the_scene_rules():
    kinds, cells = set(), []
    for index in range(40):
        scene = world.sample_scene("train", index, seed=7)
        cam = scene.camera
        assert 0.8 <= cam.position[1] <= 2.5
        assert 5 <= math.degrees(cam.pitch) <= 35 and 40 <= math.degrees(cam.hfov) <= 80
        assert 2 <= len(scene.objects) <= 5
        descriptions = [o.description for o in scene.objects]
        assert len(set(o.color for o in scene.objects)) == len(scene.objects)  # colour alone is unique
        assert len(set(descriptions)) == len(descriptions)
        for obj in scene.objects:
            assert obj.center[1] == pytest.approx(obj.height / 2)  # resting on the ground
            assert 0.2 <= obj.width <= 1.5 and 0.2 <= obj.height <= 1.5
        for i, a in enumerate(scene.objects):
            for b in scene.objects[i + 1 :]:
                assert math.hypot(a.x - b.x, a.z - b.z) >= a.footprint_radius + b.footprint_radius
        rendering = world.render(scene, world.ACCEPT_SIZE)
        visible = np.bincount(rendering.instance.ravel() + 1, minlength=len(scene.objects) + 1)[1:]
        assert (visible >= 12).all()  # every object is clearly visible
        kinds.add(scene.floor.kind)
        cells.append(scene.floor.cell_size)
    # The calibration lesson: the floor texture must not be a fixed metric ruler.
    assert kinds == {"checker", "noise"}
    assert max(cells) / min(cells) > 5


def test_same_seed_is_deterministic_and_splits_are_disjoint():
    first = world.make_sample("val", 5, 3, 64)
    second = world.make_sample("val", 5, 3, 64)
    assert np.array_equal(first.rendering.rgb, second.rendering.rgb)
    assert np.array_equal(first.rendering.depth, second.rendering.depth)
    assert [q.to_dict() for q in first.questions] == [q.to_dict() for q in second.questions]
    assert world.metadata_json(first.metadata) == world.metadata_json(second.metadata)

    def signature(scene):
        cam = scene.camera
        return (cam.position, cam.yaw, cam.pitch, cam.hfov, tuple((o.x, o.z, o.width) for o in scene.objects))

    by_split = {
        split: {signature(world.sample_scene(split, i, seed=0)) for i in range(25)} for split in world.SPLIT_IDS
    }
    assert all(len(s) == 25 for s in by_split.values())
    assert not (
        by_split["train"] & by_split["val"]
        or by_split["train"] & by_split["test"]
        or by_split["val"] & by_split["test"]
    )
    assert signature(world.sample_scene("test", 0, seed=0)) != signature(world.sample_scene("test", 0, seed=1))


def test_scene_does_not_depend_on_resolution():
    small, large = world.make_sample("test", 2, 0, 64), world.make_sample("test", 2, 0, 128)
    objects_small = [
        {k: v for k, v in o.items() if k not in ("center_pixel", "visible_pixels")} for o in small.metadata["objects"]
    ]
    objects_large = [
        {k: v for k, v in o.items() if k not in ("center_pixel", "visible_pixels")} for o in large.metadata["objects"]
    ]
    assert objects_small == objects_large
    assert large.metadata["intrinsics"]["fx"] == pytest.approx(2 * small.metadata["intrinsics"]["fx"])


# ---------------------------------------------------------------------------------------------------------------
# Questions: every answer recomputed independently from the scene metadata
# ---------------------------------------------------------------------------------------------------------------
def check_question(question: world.Question, meta: dict, rendering: world.Rendering) -> None:
    pose = np.asarray(meta["camera_to_world"])
    camera_centre, rotation = pose[:3, 3], pose[:3, :3]
    objects = meta["objects"]
    height, width = meta["image_size"]
    intr = meta["intrinsics"]

    def centre_world(i):
        obj = objects[i]
        assert obj["center_world"][1] == pytest.approx(obj["size"]["height"] / 2)
        return np.asarray(obj["center_world"])

    def camera_frame(i):
        return rotation.T @ (centre_world(i) - camera_centre)

    def pixel(i):
        x, y, z = camera_frame(i)
        return intr["fx"] * x / z + intr["cx"], intr["fy"] * y / z + intr["cy"]

    def distance(i):
        return float(np.linalg.norm(centre_world(i) - camera_centre))

    def mentions(i):
        assert f"the {objects[i]['description']}" in question.question

    kind, ids = question.question_type, question.object_ids
    for i in ids:
        assert np.allclose(objects[i]["center_camera"], camera_frame(i))
    if question.unit == "m":
        assert question.answer == f"{question.answer_value:.2f} m"
    else:
        assert question.answer_value is None
    if question.choices:
        assert question.answer in question.choices or kind == "depth_order"

    if kind == "distance_to_camera":
        mentions(ids[0])
        assert question.answer_value == pytest.approx(distance(ids[0]), abs=1e-9)
    elif kind == "distance_between":
        mentions(ids[0]), mentions(ids[1])
        assert question.answer_value == pytest.approx(np.linalg.norm(centre_world(ids[0]) - centre_world(ids[1])))
    elif kind == "closer":
        mentions(ids[0]), mentions(ids[1])
        nearest = min(ids, key=distance)
        assert question.answer == objects[nearest]["description"]
        assert abs(distance(ids[0]) - distance(ids[1])) >= 0.25
    elif kind == "depth_order":
        for i in ids:
            mentions(i)
        assert question.answer == ", ".join(objects[i]["description"] for i in sorted(ids, key=distance))
        assert sorted(question.choices) == sorted(objects[i]["description"] for i in ids)
    elif kind in ("object_height", "object_width"):
        mentions(ids[0])
        obj = objects[ids[0]]
        assert question.answer_value == pytest.approx(obj["size"][kind.split("_")[1]])
        if obj["shape"] in ("sphere", "cube"):
            assert obj["size"]["width"] == obj["size"]["height"]
    elif kind == "left_right":
        mentions(ids[0]), mentions(ids[1])
        du = pixel(ids[0])[0] - pixel(ids[1])[0]
        assert abs(du) > 0.05 * width
        assert question.answer == ("left" if du < 0 else "right")
    elif kind == "above_below":
        mentions(ids[0]), mentions(ids[1])
        dv = pixel(ids[0])[1] - pixel(ids[1])[1]
        assert abs(dv) > 0.05 * height
        assert question.answer == ("above" if dv < 0 else "below")
    elif kind == "point_depth":
        u, v = question.marker
        assert question.answer_value == pytest.approx(float(rendering.depth[v, u]))
        ray = rotation @ np.array([(u - intr["cx"]) / intr["fx"], (v - intr["cy"]) / intr["fy"], 1.0])
        if rendering.instance[v, u] < 0:  # on the ground: the analytic plane intersection
            assert question.answer_value == pytest.approx(-camera_centre[1] / ray[1], rel=1e-6)
        else:
            assert ids == [int(rendering.instance[v, u])]
        assert question.answer_value > 0
    elif kind == "color":
        (i,) = ids
        assert re.search(rf"\bthe {objects[i]['shape']}\b", question.question)
        assert sum(o["shape"] == objects[i]["shape"] for o in objects) == 1  # "the cube" is unambiguous
        assert question.answer == objects[i]["color"]
    elif kind == "shape":
        (i,) = ids
        assert f"the {objects[i]['color']} object" in question.question
        assert question.answer == objects[i]["shape"]
    elif kind == "count":
        assert question.answer == str(len(objects))
        assert all(o["visible_pixels"] > 0 for o in objects)
    else:
        raise AssertionError(f"unknown question type {kind}")


def test_every_question_type_answer_matches_geometry():
    seen = collections.Counter()
    for index in range(25):
        scene = world.sample_scene("test", index, seed=0)
        rendering = world.render(scene, 128)
        meta = world.scene_metadata(scene, rendering)
        candidates = world.candidate_questions(scene, rendering, np.random.default_rng(index))
        for kind, questions in candidates.items():
            for question in questions:
                assert question.question_type == kind
                check_question(question, meta, rendering)
                seen[kind] += 1
    assert set(seen) == set(world.QUESTION_TYPES)


def test_templates_have_several_phrasings_and_questions_vary():
    assert set(world.TEMPLATES) == set(world.QUESTION_TYPES)
    assert all(len(set(templates)) >= 3 for templates in world.TEMPLATES.values())
    phrasings = collections.defaultdict(set)
    for index in range(20):
        for question in world.make_sample("train", index, 0, 64, questions_per_scene=12).questions:
            phrasings[question.question_type].add(re.sub(r"the \w+ \w+", "the X", question.question))
    assert sum(len(p) >= 2 for p in phrasings.values()) >= 8


def test_question_types_are_balanced_within_a_shard():
    counts: dict[str, int] = {}
    for index in range(48):
        world.make_sample("test", index, 0, 64, questions_per_scene=6, type_counts=counts)
    assert set(counts) == set(world.QUESTION_TYPES)
    assert sum(counts.values()) == 48 * 6
    assert max(counts.values()) - min(counts.values()) <= 2


def test_point_depth_marker_is_drawn_around_the_pixel():
    rgb = np.full((64, 64, 3), 100, dtype=np.uint8)
    marked = world.draw_marker(rgb, 30, 20)
    radius = world.marker_radius(64)
    assert (marked[20, 30] == 100).all()  # the marked point itself stays visible
    assert tuple(marked[20, 30 + radius]) == (230, 0, 0) and tuple(marked[20 - radius, 30]) == (230, 0, 0)
    changed = np.argwhere((marked != rgb).any(-1))
    assert np.abs(changed - [20, 30]).max() <= radius + 2
    assert (rgb == 100).all()  # the input is not modified


# ---------------------------------------------------------------------------------------------------------------
# Encoding and dataset writer
# ---------------------------------------------------------------------------------------------------------------
def test_depth_png_round_trip_within_a_millimetre():
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.05, 65.5, size=(37, 53)).astype(np.float32)
    depth[::7, ::5] = 0.0
    decoded = world.decode_depth_png(world.encode_depth_png(depth))
    assert decoded.dtype == np.float32 and decoded.shape == depth.shape
    assert np.abs(decoded - depth).max() <= 0.0005 + 1e-5  # rounding to whole mm, plus float32 eps at 65 m
    assert (decoded[::7, ::5] == 0).all()
    far = world.decode_depth_png(world.encode_depth_png(np.array([[80.0, 65.535, 1.0]], dtype=np.float32)))
    assert far[0].tolist() == pytest.approx([65.535, 65.535, 1.0], abs=1e-5)  # clipped at the uint16 limit


def _file_digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_writer_is_resumable_and_loads_with_datasets(tmp_path):
    from datasets import Dataset

    config = make_world.WorldConfig(split="val", num_scenes=4, seed=0, size=48, questions_per_scene=3, shard_size=2)
    assert make_world.write_dataset(config, tmp_path, progress=False) == [0, 1]
    shard0, shard1 = config.shard_path(tmp_path, 0), config.shard_path(tmp_path, 1)
    mtime0, digest1 = shard0.stat().st_mtime_ns, _file_digest(shard1)
    shard1.unlink()
    assert make_world.write_dataset(config, tmp_path, progress=False) == [1]
    assert shard0.stat().st_mtime_ns == mtime0  # the finished shard was not touched
    assert _file_digest(shard1) == digest1  # the regenerated shard is byte-identical
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary files left behind
    assert make_world.write_dataset(config, tmp_path, progress=False) == []

    other = make_world.WorldConfig(split="val", num_scenes=4, seed=1, size=48, questions_per_scene=3, shard_size=2)
    with pytest.raises(SystemExit):
        make_world.write_dataset(other, tmp_path, progress=False)

    dataset = Dataset.from_parquet([str(shard0), str(shard1)])
    assert len(dataset) == 4 * 3
    row = dataset[0]
    assert row["messages"][0]["role"] == "user" and row["messages"][1]["role"] == "assistant"
    assert [part["type"] for part in row["messages"][0]["content"]] == ["image", "text"]
    assert row["messages"][0]["content"][1]["text"] == row["question"]
    assert row["messages"][1]["content"][0]["text"] == row["answer"]
    assert row["images"][0].size == (48, 48)
    scene = json.loads(row["scene"])
    assert row["scene_id"] == scene["scene_id"] == "val-0-0000000" and row["split"] == "val"
    sample = world.make_sample("val", 0, 0, 48, questions_per_scene=3, type_counts={})
    # Depth rides in the image block (where TRL's collator keeps it); the text blocks have none.
    image_block, text_block = row["messages"][0]["content"]
    assert "depth" not in row and text_block["depth"] is None and row["messages"][1]["content"][0]["depth"] is None
    assert np.abs(world.decode_depth_png(image_block["depth"]) - sample.rendering.depth).max() <= 0.0005 + 1e-6
    assert np.array_equal(np.asarray(row["images"][0]), sample.rendering.rgb) or row["marker"]
    assert [r["question"] for r in dataset.select(range(3))] == [q.question for q in sample.questions]


def test_rerun_removes_temporary_files_a_killed_run_left(tmp_path):
    # Issue 13: SIGKILL during to_parquet leaves `.NAME.tmp-PID` (often 0 bytes) that no later run renamed or removed.
    config = make_world.WorldConfig(split="val", num_scenes=2, seed=0, size=32, questions_per_scene=2, shard_size=1)
    assert make_world.write_dataset(config, tmp_path, progress=False) == [0, 1]
    config.shard_path(tmp_path, 1).unlink()
    stale = [
        tmp_path / ".val-00001-of-00002.parquet.tmp-99999",  # the shard being written when the run was killed
        tmp_path / ".val-00000-of-00002.parquet.tmp-4242",  # an older kill's, of a shard finished since
        tmp_path / ".README.md.tmp-4242",
    ]
    for path in stale:
        path.write_bytes(b"")
    unrelated = tmp_path / ".notes.tmp-1"  # not a file this job writes: left alone
    unrelated.write_bytes(b"mine")

    assert make_world.write_dataset(config, tmp_path, progress=False) == [1]

    assert not any(path.exists() for path in stale)
    assert unrelated.read_bytes() == b"mine"
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        ".notes.tmp-1",
        "README.md",
        "generation.json",
        "val-00000-of-00002.parquet",
        "val-00001-of-00002.parquet",
    ]


def test_dataset_card_parses_and_lists_the_real_columns(tmp_path):
    import yaml
    from datasets import Dataset, Features, load_dataset

    config = make_world.WorldConfig(split="val", num_scenes=2, seed=0, size=32, questions_per_scene=3, shard_size=1)
    make_world.write_dataset(config, tmp_path, progress=False)
    written = Dataset.from_parquet([str(config.shard_path(tmp_path, shard)) for shard in range(2)])
    text = (tmp_path / "README.md").read_text()
    assert text.startswith("---\n")
    card = yaml.safe_load(text.split("---\n")[1])

    assert card["license"] == "apache-2.0"
    assert card["task_categories"] == ["visual-question-answering", "depth-estimation"]
    assert card["size_categories"] == ["n<1K"]
    features = card["dataset_info"]["features"]
    assert [feature["name"] for feature in features] == written.column_names
    assert Features._from_yaml_list(features) == written.features == make_world.dataset_features()
    assert [(split["name"], split["num_examples"]) for split in card["dataset_info"]["splits"]] == [("val", 6)]
    assert card["configs"] == [
        {"config_name": "default", "data_files": [{"split": "val", "path": "val-*-of-00002.parquet"}]}
    ]
    for column in written.column_names:
        assert f"| `{column}` |" in text
    loaded = load_dataset(str(tmp_path), split="val")  # the card's configs and features load the folder as is
    assert len(loaded) == 6 and loaded.features == written.features


def test_test_preset_has_at_least_1000_balanced_questions():
    _, config = make_world.parse_args(["--preset", "test", "--out", "unused"])
    assert config.split == "test" and config.seed == 0
    assert config.num_scenes * config.questions_per_scene >= 1000
    assert (config.num_scenes * config.questions_per_scene) % len(world.QUESTION_TYPES) == 0
    _, overridden = make_world.parse_args(["--preset", "test", "--out", "unused", "--size", "448"])
    assert overridden.size == 448 and overridden.num_scenes == config.num_scenes


@pytest.mark.slow
def test_test_preset_is_byte_reproducible(tmp_path):
    digests = []
    for run in range(2):
        out = tmp_path / f"run{run}"
        make_world.main(["--preset", "test", "--out", str(out), "--no-progress"])
        digests.append({p.name: _file_digest(p) for p in sorted(out.glob("*.parquet"))})
    assert digests[0] == digests[1] and len(digests[0]) == 4

    from datasets import Dataset

    dataset = Dataset.from_parquet([str(p) for p in sorted((tmp_path / "run0").glob("*.parquet"))])
    counts = collections.Counter(dataset["question_type"])
    assert len(dataset) >= 1000 and set(counts) == set(world.QUESTION_TYPES)
    assert max(counts.values()) - min(counts.values()) <= 8


def test_the_world_tokenizer_has_a_token_per_word_of_every_question_and_answer():
    """`tokenizer_corpus="world"`: every colour, shape and question word is one token, at a line start (answers) and
    after a space (questions), so a from-scratch stand-in does not first learn to spell."""
    from training.tiny import WORLD_VOCAB_SIZE, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(WORLD_VOCAB_SIZE, world.question_corpus())
    assert len(tokenizer) <= WORLD_VOCAB_SIZE
    words = [*world.COLORS, *world.SHAPES, "left", "right", "above", "below"]
    for word in words:
        assert len(tokenizer.tokenize(word)) == 1, word
        assert len(tokenizer.tokenize(f" {word}")) == 1, word
    for template in (t for templates in world.TEMPLATES.values() for t in templates):
        text = template.format(a="red cube", b="blue cone", c="cyan sphere", shape="cylinder", color="purple")
        for index, word in enumerate(re.findall(r"[A-Za-z]+", text)):
            assert len(tokenizer.tokenize(word if index == 0 else f" {word}")) == 1, (word, text)
    # So every question is under half as long as with the default tokenizer (0.46x over all phrasings).
    questions = [
        t.format(a="red cube", b="blue cone", c="cyan sphere", shape="cylinder", color="purple")
        for templates in world.TEMPLATES.values()
        for t in templates
    ]
    default = build_tiny_tokenizer()
    ratio = sum(len(tokenizer.tokenize(q)) for q in questions) / sum(len(default.tokenize(q)) for q in questions)
    assert ratio < 0.5


def test_single_digits_write_every_number_a_digit_at_a_time_and_keep_the_words_whole():
    """`single_digits=True` (`tokenizer_digits="single"`): no token holds two digits, as in Qwen2's own tokenizer, so a
    length's first decimal is one of ten tokens; the world's words are still one token each."""
    from training.length_decoding import number_pieces
    from training.tiny import WORLD_VOCAB_SIZE, build_tiny_tokenizer

    merged = build_tiny_tokenizer(WORLD_VOCAB_SIZE, world.question_corpus())
    single = build_tiny_tokenizer(WORLD_VOCAB_SIZE, world.question_corpus(), single_digits=True)
    assert merged.tokenize("5.31 m") == ["5", ".", "31", "Ġm"]
    assert single.tokenize("5.31 m") == ["5", ".", "3", "1", "Ġm"]
    assert single.tokenize("12.05 m") == ["1", "2", ".", "0", "5", "Ġm"]
    assert sorted(number_pieces(single).values()) == [".", *"0123456789"]
    for word in [*world.COLORS, *world.SHAPES]:
        assert len(single.tokenize(f" {word}")) == 1, word
    assert single.decode(single("0.77 m")["input_ids"]) == "0.77 m"
