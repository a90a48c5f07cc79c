"""Stage 1's reconstruction term: each depth token reconstructs its own pooled encoder input (issue 22's camera)."""

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from modeling_qwen2_5_vl_depth import encode_metric_depth
from tests.test_points import K_SECOND, copy_shared_weights
from tests.test_protocol import RecordedExperiment, value
from training.align import RGBDPairCollator
from training.align.data import RGBDPair
from training.align.model import RECONSTRUCTION_GRID, DepthAlignmentModel
from training.build_depth_model import build_depth_model
from training.experiment.presets import PRESETS


IMAGE_SIZE = 56  # 2 x 2 merged tokens of 28 px


@pytest.fixture(scope="module")
def pair_models(tiny_base):
    """(depth model, points model, processor), the same weights where they share them."""
    torch.manual_seed(0)
    depth_model, processor = build_depth_model(tiny_base, depth_fusion="add")
    torch.manual_seed(0)
    points_model, _ = build_depth_model(tiny_base, depth_fusion="add", depth_input="points")
    copy_shared_weights(depth_model, points_model)
    return depth_model, points_model, processor


def pair_batch(processor, intrinsics=None):
    rng = np.random.default_rng(0)
    pairs = []
    for index in range(2):
        image = Image.fromarray(rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8))
        depth = rng.uniform(0.5, 9.0, (IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
        depth[index * 10 : index * 10 + 6, 3:9] = 0.0  # a sensor hole: the invalid value is reconstructed too
        pairs.append(RGBDPair(image, depth, intrinsics=intrinsics))
    return pairs, RGBDPairCollator(processor, IMAGE_SIZE)(pairs)


def test_each_tokens_target_is_its_own_square_of_the_encoded_map_average_pooled(pair_models):
    depth_model, _, processor = pair_models
    model = DepthAlignmentModel.from_depth_model(depth_model, reconstruction_weight=1.0)
    pairs, batch = pair_batch(processor)
    targets = model.reconstruction_targets(model.encoder_input(batch["depth_values"], batch["image_grid_thw"]))
    assert targets.shape == (8, RECONSTRUCTION_GRID**2)  # 2 images x 2 x 2 tokens, one channel
    for image_index, pair in enumerate(pairs):
        encoded = encode_metric_depth(torch.from_numpy(pair.depth), depth_model.config)  # (56, 56), like the pixels
        for row in range(2):
            for column in range(2):
                square = encoded[row * 28 : (row + 1) * 28, column * 28 : (column + 1) * 28]
                expected = F.avg_pool2d(square[None, None], 4).flatten()
                token = image_index * 4 + row * 2 + column  # the processor's token order: row-major
                torch.testing.assert_close(targets[token], expected, rtol=0, atol=1e-6)


def test_points_targets_are_x_y_and_z_planes(pair_models):
    _, points_model, processor = pair_models
    model = DepthAlignmentModel.from_depth_model(points_model, reconstruction_weight=1.0)
    _, batch = pair_batch(processor, intrinsics=K_SECOND)
    encoder_input = model.encoder_input(batch["depth_values"], batch["image_grid_thw"], batch["depth_intrinsics"])
    targets = model.reconstruction_targets(encoder_input).reshape(8, 3, RECONSTRUCTION_GRID, RECONSTRUCTION_GRID)
    # The z plane is the depth model's target; x grows from the left cells to the right ones of a token on the right
    # (every pixel is in front of the camera, so x has the sign of its column's ray).
    depth_only = DepthAlignmentModel.from_depth_model(pair_models[0], reconstruction_weight=1.0)
    z_targets = depth_only.reconstruction_targets(
        depth_only.encoder_input(batch["depth_values"], batch["image_grid_thw"])
    )
    torch.testing.assert_close(targets[:, 2].flatten(1), z_targets, rtol=0, atol=1e-6)
    right_token = targets[1, 0]
    assert bool((right_token[:, -1] > right_token[:, 0]).all())


def test_weight_zero_is_the_contrastive_loss_and_a_weight_adds_the_term(pair_models):
    depth_model, _, processor = pair_models
    _, batch = pair_batch(processor)
    plain = DepthAlignmentModel.from_depth_model(depth_model, dense_tokens_per_image=4)
    assert not hasattr(plain, "reconstruction_head")
    weighted = DepthAlignmentModel.from_depth_model(depth_model, dense_tokens_per_image=4, reconstruction_weight=3.0)
    weighted.load_state_dict(plain.state_dict(), strict=False)  # the same heads: only the new term differs
    plain_output, weighted_output = plain.eval()(**batch), weighted.eval()(**batch)
    assert plain_output.reconstruction_loss is None
    torch.testing.assert_close(plain_output.loss, plain_output.contrastive_loss, rtol=0, atol=0)
    torch.testing.assert_close(weighted_output.contrastive_loss, plain_output.loss, rtol=0, atol=0)
    torch.testing.assert_close(
        weighted_output.loss, plain_output.loss + 3.0 * weighted_output.reconstruction_loss, rtol=1e-6, atol=1e-6
    )
    assert weighted_output.reconstruction_loss > 0


def test_the_term_is_one_for_the_batch_mean_and_zero_for_an_exact_reconstruction(pair_models):
    depth_model, _, processor = pair_models
    model = DepthAlignmentModel.from_depth_model(depth_model, reconstruction_weight=1.0)
    _, batch = pair_batch(processor)
    encoder_input = model.encoder_input(batch["depth_values"], batch["image_grid_thw"])
    with torch.no_grad():
        tokens = model.encode(encoder_input, batch["image_grid_thw"])
    targets = model.reconstruction_targets(encoder_input)
    with torch.no_grad():
        model.reconstruction_head.weight.zero_()
        model.reconstruction_head.bias.copy_(targets.mean(dim=0))
    assert float(model.reconstruction_loss(tokens, targets)) == pytest.approx(1.0, abs=1e-5)
    # Least squares from the 8 tokens (each wider than 8) fits them exactly: the loss is then 0.
    assert tokens.shape[1] > len(tokens)
    design = torch.cat([tokens.double(), torch.ones(len(tokens), 1, dtype=torch.float64)], dim=1)
    solution = torch.linalg.lstsq(design, targets.double(), driver="gelsd").solution
    with torch.no_grad():
        model.reconstruction_head.weight.copy_(solution[:-1].T.float())
        model.reconstruction_head.bias.copy_(solution[-1].float())
    assert float(model.reconstruction_loss(tokens, targets)) < 1e-3


def test_a_negative_weight_is_refused(pair_models):
    with pytest.raises(ValueError, match="reconstruction_weight must be a non-negative number"):
        DepthAlignmentModel.from_depth_model(pair_models[0], reconstruction_weight=-1.0)


def test_alignment_trains_the_head_and_exports_it_beside_the_projection_heads(tiny_base, world_dir, tmp_path):
    from safetensors.torch import load_file

    from training.align import HEADS_FILE, parse_args, train_alignment

    argv = [
        "--base", str(tiny_base), "--data", str(world_dir), "--out", str(tmp_path / "aligned"),
        "--image_size", "56", "--report_to", "none", "--disable_tqdm", "true", "--seed", "0",
        "--max_steps", "2", "--per_device_train_batch_size", "4", "--depth_input", "points",
        "--depth_probe", "false", "--eval_pairs", "4", "--reconstruction_weight", "2",
    ]  # fmt: skip
    result = train_alignment(*parse_args(argv))
    heads = load_file(str(tmp_path / "aligned" / HEADS_FILE))
    assert heads["reconstruction_head.weight"].shape == (
        3 * RECONSTRUCTION_GRID**2,
        result.model.depth_head.in_features,
    )
    torch.testing.assert_close(heads["reconstruction_head.weight"], result.model.reconstruction_head.weight.detach())
    assert (tmp_path / "aligned" / "alignment_heads.json").read_text().count('"reconstruction_weight": 2.0') == 1


def test_an_experiment_with_the_term_aligns_in_its_own_folders(tmp_path, monkeypatch):
    preset = replace(
        PRESETS["cpu-fair"], parallel_runs=1, seeds=(0,), arms=("none", "add"), depth_input="points",
        align_reconstruction_weight=3.0,
    )  # fmt: skip
    recorded = RecordedExperiment(monkeypatch, preset, tmp_path)
    recorded()
    align = recorded.args_of("align-dense-recon3-points-seed0")
    assert value(align, "--reconstruction_weight") == "3.0"
    assert value(recorded.args_of("sft-add-seed0"), "--aligned_depth_model") == str(
        tmp_path / "align/dense-recon3-points-seed0"
    )
    plain = RecordedExperiment(monkeypatch, replace(preset, align_reconstruction_weight=0.0), tmp_path / "plain")
    plain()
    assert "--reconstruction_weight" not in plain.args_of("align-dense-points-seed0")  # earlier runs' commands
