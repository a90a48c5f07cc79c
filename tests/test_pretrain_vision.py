"""Stage 0a: token labels from the world's instance masks, their order, and the pre-trained base folder."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoImageProcessor, Qwen2_5_VLForConditionalGeneration

from training import pretrain_vision, world
from training.data_files import load_rows


@pytest.fixture(scope="module")
def image_processor(tiny_base):
    return AutoImageProcessor.from_pretrained(tiny_base)


def brute_force_labels(instance: np.ndarray, objects: list[dict], token_side: int):
    """Per merged token, the colour and shape of the object with most pixels in it if it covers >= 10%: loops."""
    rows, columns = instance.shape[0] // token_side, instance.shape[1] // token_side
    colours, shapes = [], []
    for row in range(rows):
        for column in range(columns):
            block = instance[
                row * token_side : (row + 1) * token_side, column * token_side : (column + 1) * token_side
            ]
            best, best_count = None, 0
            for object_id in range(len(objects)):
                count = int((block == object_id).sum())
                if count > best_count:
                    best, best_count = object_id, count
            if best is not None and best_count >= 0.1 * block.size:
                colours.append(list(world.COLORS).index(objects[best]["color"]))
                shapes.append(world.SHAPES.index(objects[best]["shape"]))
            else:
                colours.append(len(world.COLORS))
                shapes.append(len(world.SHAPES))
    return np.array(colours), np.array(shapes)


def test_token_labels_are_the_majority_object_of_each_token(world_dir, image_processor):
    rows = load_rows(str(world_dir))
    labelled_objects = 0
    for scene_json in sorted(set(rows["scene"])):
        scene = json.loads(scene_json)
        colours, shapes = pretrain_vision.scene_token_labels(scene, image_processor)
        # 112 px is already a multiple of the 28-px token: the mask is read as rendered.
        assert pretrain_vision.token_grid(image_processor, 112, 112) == (4, 4, 28)
        instance = world.render(world.sample_scene(scene["split"], scene["index"], scene["seed"]), 112).instance
        expected_colours, expected_shapes = brute_force_labels(instance, scene["objects"], 28)
        np.testing.assert_array_equal(colours, expected_colours)
        np.testing.assert_array_equal(shapes, expected_shapes)
        labelled_objects += int((colours < len(world.COLORS)).sum())
    assert labelled_objects > 0  # the scenes do show objects


def test_rerendered_scene_is_the_stored_image(world_dir):
    """Labels come from re-rendering each scene from its metadata: that must reproduce the stored picture exactly."""
    rows = load_rows(str(world_dir))
    row = next(row for row in rows if not row["marker"])
    scene = json.loads(row["scene"])
    rendering = world.render(world.sample_scene(scene["split"], scene["index"], scene["seed"]), 112)
    np.testing.assert_array_equal(rendering.rgb, np.asarray(row["images"][0].convert("RGB")))


def test_labels_follow_the_towers_token_order(image_processor):
    """A bright 28x28 block at token (row 1, column 2) must land in merged token 1 * 4 + 2 of `pixel_values`."""
    pixels = np.zeros((112, 112, 3), dtype=np.uint8)
    pixels[28:56, 56:84] = 255
    inputs = pretrain_vision.DenseObjectCollator(image_processor)(
        [{"image": Image.fromarray(pixels), "colour_labels": np.zeros(16, int), "shape_labels": np.zeros(16, int)}]
    )
    per_token = inputs["pixel_values"].view(16, 4, -1).mean(dim=(1, 2))  # 2x2 patches per merged token, in order
    assert int(per_token.argmax()) == 6
    assert (per_token > per_token.min()).sum() == 1


def test_collator_refuses_labels_for_another_grid(image_processor):
    row = {"image": Image.new("RGB", (112, 112)), "colour_labels": np.zeros(9, int), "shape_labels": np.zeros(9, int)}
    with pytest.raises(ValueError, match="9 token labels for an image of 16 tokens"):
        pretrain_vision.DenseObjectCollator(image_processor)([row])


def test_pretraining_changes_only_the_rgb_tower(tiny_base, world_dir, tmp_path):
    out = tmp_path / "vision"
    args = [
        "--base", str(tiny_base), "--data", str(world_dir), "--eval_data", str(world_dir), "--out", str(out),
        "--output_dir", str(tmp_path / "trainer"), "--max_steps", "3", "--per_device_train_batch_size", "4",
        "--learning_rate", "1e-2", "--save_strategy", "no", "--report_to", "none", "--use_cpu", "true",
    ]  # fmt: skip
    metrics = pretrain_vision.main(args)
    assert set(metrics["before"]) == set(metrics["after"])
    assert 0 < metrics["after"]["object_token_share"] < 1
    assert json.loads((out / "vision_pretrain_metrics.json").read_text()) == metrics

    before, after = load_file(tiny_base / "model.safetensors"), load_file(out / "model.safetensors")
    assert before.keys() == after.keys()  # a plain Qwen2.5-VL folder: no heads saved
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    assert changed and all(".visual." in key or key.startswith("visual.") for key in changed)
    assert any("patch_embed" in key for key in changed)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(out)
    assert model.config.model_type == "qwen2_5_vl"
    with pytest.raises(FileExistsError, match="exists already"):
        pretrain_vision.main(args)
