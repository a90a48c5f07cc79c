"""`training.align.probe`'s object-size probe: which tokens it reads for an object, and what it reports."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from training.align.probe import (
    OBJECT_SIZE_TARGETS,
    centre_token_of,
    constant_probe,
    object_log_targets,
    object_token_features,
)
from training.align.probe import main as probe_main
from training.data_files import load_rows


def test_object_token_features_are_the_centre_token_and_its_clipped_neighbourhood_mean():
    tokens = np.arange(4 * 4 * 2, dtype=float).reshape(16, 2)  # token (r, c) holds (2(4r + c), 2(4r + c) + 1)
    inside = object_token_features(tokens, (4, 4), (1, 2))
    neighbours = [4 * r + c for r in (0, 1, 2) for c in (1, 2, 3)]
    np.testing.assert_array_equal(inside, np.concatenate([tokens[6], tokens[neighbours].mean(0)]))
    corner = object_token_features(tokens, (4, 4), (3, 3))  # only the 2 x 2 inside the grid
    np.testing.assert_array_equal(corner, np.concatenate([tokens[15], tokens[[10, 11, 14, 15]].mean(0)]))
    with pytest.raises(ValueError, match="do not fill a merged grid of 4 x 3"):
        object_token_features(tokens, (4, 3), (0, 0))
    with pytest.raises(ValueError, match=r"Token \(4, 0\) is outside"):
        object_token_features(tokens, (4, 4), (4, 0))


def test_centre_token_scales_the_pixel_to_the_collated_image_and_stays_in_the_grid():
    # A 224 px rendering read at 112 px: pixel (100, 60) is (50, 30), token row 30 // 28 = 1, column 50 // 28 = 1.
    assert centre_token_of((100.0, 60.0), (224, 224), 112, 28) == (1, 1)
    assert centre_token_of((111.9, 0.0), (112, 112), 112, 28) == (0, 3)
    assert centre_token_of((112.0, -0.5), (112, 112), 112, 28) == (0, 3)  # an edge pixel stays on the grid
    with pytest.raises(ValueError, match="square renderings"):
        centre_token_of((1.0, 1.0), (112, 84), 112, 28)


def test_constant_probe_scores_the_fitting_halfs_best_guess_on_the_other_half():
    # Fitting half (images 0, 1): log sizes 0, 0, 0.1, 2. The δ₁ window (width 2 log 1.25) holding the most of them
    # starts at 0, so the constant is its centre, log 1.25. Scored half (images 2, 3): 0.05 is within, 1.0 is not.
    targets = np.array([0.0, 0.0, 0.1, 2.0, 0.05, 1.0])
    images = np.array([0, 0, 1, 1, 2, 3])
    read = constant_probe(targets, images)
    guess = math.log(1.25)
    assert read["delta1"] == 0.5
    assert read["r2"] == pytest.approx(1 - ((0.05 - guess) ** 2 + (1.0 - guess) ** 2) / (2 * 0.475**2), rel=1e-6)


def test_object_log_targets_factor_the_width():
    scene = {"intrinsics": {"fx": 100.0}}
    obj = {"size": {"width": 0.5, "height": 1.5}, "center_camera": [0.3, -0.2, 4.0]}
    logs = object_log_targets(obj, scene)
    assert logs["pixel_width"] == pytest.approx(math.log(0.5 * 100.0 / 4.0))  # 12.5 px
    assert logs["width"] == pytest.approx(logs["pixel_width"] + logs["centre_depth"] - logs["focal_length"])
    assert (logs["height"], logs["centre_depth"], logs["focal_length"]) == (
        math.log(1.5),
        math.log(4.0),
        math.log(100),
    )


def test_probe_command_reads_every_objects_size_from_the_world(tiny_base, world_dir):
    report = probe_main([str(tiny_base), "--data", str(world_dir), "--pairs", "8", "--image_size", "112", "--objects"])
    objects = report[str(tiny_base)]["objects"]
    # The probe scores the second half of the scenes: exactly their objects, once each.
    table = load_rows(world_dir)
    scene_of = {}
    for row in table.select_columns(["scene_id", "scene"]):
        scene_of.setdefault(row["scene_id"], json.loads(row["scene"]))
    scenes = [scene_of[key] for key in sorted(scene_of)]
    assert len(scenes) == 8
    scored_objects = sum(len(scene["objects"]) for scene in scenes[4:])
    assert set(objects) == {*OBJECT_SIZE_TARGETS, "width_given_pixel_width"}
    given = objects["width_given_pixel_width"]
    assert set(given) == {"depth", "rgb", "depth+rgb", "pixel width alone", "exact extent and depth, constant focal"}
    # With the exact extent and depth only the focal guess errs: the ceiling is the share of objects whose focal
    # length lies within 1.25x of the best constant one, at least that of any constant at an object's own focal.
    focal = np.array([scene["intrinsics"]["fx"] for scene in scenes for _ in scene["objects"]])
    ceiling = given["exact extent and depth, constant focal"]["delta1"]
    within = [(np.maximum(focal / f0, f0 / focal) < 1.25).mean() for f0 in focal]
    assert max(within) <= ceiling <= 1.0
    assert ceiling * len(focal) == pytest.approx(round(ceiling * len(focal)))  # a share of these objects
    for name in OBJECT_SIZE_TARGETS:
        assert set(objects[name]) == {"depth", "rgb", "depth+rgb", "constant"}
        for source in ("depth", "rgb", "depth+rgb"):
            assert objects[name][source]["tokens"] == scored_objects
            assert 0.0 <= objects[name][source]["delta1"] <= 1.0 and math.isfinite(objects[name][source]["r2"])
        # The constant is the one the report's own split gives.
        sizes = np.array([object_log_targets(obj, scene)[name] for scene in scenes for obj in scene["objects"]])
        images = np.repeat(np.arange(8), [len(scene["objects"]) for scene in scenes])
        assert objects[name]["constant"] == constant_probe(sizes, images)


def test_probe_command_refuses_objects_without_scenes(tiny_base, tmp_path):
    from tests.test_align import write_pairs

    pairs = write_pairs(tmp_path / "pairs", "val", 4)  # `make_rgbd_pairs`' layout: no `scene` column
    with pytest.raises(ValueError, match="needs rendered-world rows with a `scene` column"):
        probe_main([str(tiny_base), "--data", str(pairs), "--pairs", "4", "--image_size", "112", "--objects"])


def test_both_probes_read_the_same_from_one_encoding_as_from_their_own(tiny_base, world_dir):
    # The command encodes the pairs once for both probes; each probe alone encodes them itself.
    from configuration_depth import DEFAULT_DEPTH_FUSION
    from training.align.data import RGBDPairCollator, select_pair_rows
    from training.align.model import DepthAlignmentModel
    from training.align.probe import encode_pairs, metric_depth_probe, object_size_probe
    from training.make_rgbd_pairs import RGBDPairs
    from training.model_loading import load_depth_model

    table = load_rows(world_dir)
    rows = select_pair_rows(table)
    pairs = RGBDPairs(table, rows)
    scenes = [json.loads(table.select_columns(["scene"])[index]["scene"]) for index in rows]
    depth_model, processor = load_depth_model(str(tiny_base), depth_fusion=DEFAULT_DEPTH_FUSION)
    model = DepthAlignmentModel.from_depth_model(depth_model)
    collator = RGBDPairCollator(processor, 112)
    encoded = encode_pairs(model, pairs, collator, batch_size=3)  # batches of 3, 3, 2: offsets matter
    assert [batch.start for batch in encoded] == [0, 3, 6]
    assert metric_depth_probe(model, pairs, collator, encoded=encoded) == metric_depth_probe(model, pairs, collator)
    assert object_size_probe(model, pairs, scenes, collator, encoded=encoded) == object_size_probe(
        model, pairs, scenes, collator
    )
