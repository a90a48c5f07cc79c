"""Stage 1 alignment: ClipLoss values, data handling, frozen parts, retrieval gain, resume, 2-process DDP, export.

Everything runs on CPU with the tiny base (RGB tower and depth encoder 32 wide, 2 blocks) and rendered-world pairs
written to a temporary folder; images are 112 px, which the tiny image processor keeps (8x8 patches, 16 tokens).
"""

import json
import math
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import TrainerCallback

from modeling_qwen2_5_vl_depth import Qwen2_5_VLDepthForConditionalGeneration
from training import make_world, world
from training.align import (
    HEADS_FILE,
    METRICS_FILE,
    ClipLoss,
    DepthAlignmentModel,
    DepthAlignmentTrainer,
    RGBDPairCollator,
    parse_args,
    recall_at_k,
    select_pair_rows,
    train_alignment,
)
from training.align.probe import r_squared, region_log_depth, ridge_probe
from training.build_depth_model import build_depth_model
from training.data_files import load_rows
from training.make_rgbd_pairs import RGBDPair, RGBDPairs
from training.model_loading import load_depth_model


REPO_ROOT = Path(__file__).resolve().parents[1]
IMAGE_SIZE = 112
NUM_EVAL_PAIRS = 32
NUM_TRAIN_PAIRS = 512


def write_pairs(path: Path, split: str, num_scenes: int) -> Path:
    """Rendered-world pairs in the `make_rgbd_pairs` layout: `image`, `depth` (16-bit mm PNG), `scene_id`."""
    rows = []
    for index in range(num_scenes):
        sample = world.make_sample(split, index, seed=0, size=IMAGE_SIZE, questions_per_scene=1)
        rows.append(
            {
                "image": {"bytes": world.encode_png(sample.rendering.rgb), "path": None},
                "depth": world.encode_depth_png(sample.rendering.depth),
                "depth_is_metric": True,
                "scene_id": sample.scene.scene_id,
            }
        )
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "depth": datasets.Value("binary"),
            "depth_is_metric": datasets.Value("bool"),
            "scene_id": datasets.Value("string"),
        }
    )
    path.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(path / "pairs-00000.parquet"))
    return path


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """Training and held-out pairs from disjoint splits of the world (different scenes)."""
    datasets.disable_progress_bars()
    root = tmp_path_factory.mktemp("pairs")
    return {
        "train": write_pairs(root / "train", "train", NUM_TRAIN_PAIRS),
        "val": write_pairs(root / "val", "val", NUM_EVAL_PAIRS),
    }


@pytest.fixture(scope="module")
def world_questions(tmp_path_factory):
    """What `python -m training.make_world` writes: one row per question, several per scene, `images` lists."""
    out = tmp_path_factory.mktemp("world")
    config = make_world.WorldConfig(
        split="train", num_scenes=6, seed=0, size=IMAGE_SIZE, questions_per_scene=6, shard_size=3
    )
    make_world.write_dataset(config, out, progress=False)
    return out


def alignment_args(base, data, out, *extra, eval_data=None):
    """CLI arguments (parsed exactly as `python -m training.align` parses them) for a quiet CPU run."""
    argv = [
        "--base", str(base), "--data", str(data), "--out", str(out), "--image_size", str(IMAGE_SIZE),
        "--report_to", "none", "--disable_tqdm", "true", "--dataloader_pin_memory", "false", "--seed", "0",
    ]  # fmt: skip
    if eval_data is not None:
        argv += ["--eval_data", str(eval_data), "--eval_pairs", str(NUM_EVAL_PAIRS)]
    return parse_args(argv + [str(arg) for arg in extra])


def trainable_tensors(model: DepthAlignmentModel) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.trainable_state_dict().items()}


# ---------------------------------------------------------------------------------------------------------------
# ClipLoss
# ---------------------------------------------------------------------------------------------------------------
def cross_entropy_at_diagonal(logits: np.ndarray) -> float:
    """Mean over rows of -log softmax(row)[i], written out."""
    return float(np.mean([np.log(np.exp(row).sum()) - row[i] for i, row in enumerate(logits)]))


def hand_computed_clip_loss(depth: np.ndarray, rgb: np.ndarray, scale: float) -> float:
    """Depth->RGB cross-entropy (rows of scale * D R^T) and RGB->depth (its columns), averaged."""
    logits = scale * depth @ rgb.T
    return (cross_entropy_at_diagonal(logits) + cross_entropy_at_diagonal(logits.T)) / 2


def unit_rows(values) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    return array / np.linalg.norm(array, axis=1, keepdims=True)


# Depth 1 is closer to RGB 0 than to its own RGB 1: the loss is far from 0 and differs between the directions.
DEPTH_FEATURES = unit_rows([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.6, 0.8]])
RGB_FEATURES = unit_rows([[0.8, 0.6, 0.0], [0.1, 0.9, 0.4], [0.0, 0.8, 0.6]])


def test_clip_loss_is_symmetric_cross_entropy_at_initial_temperature():
    loss_fn = ClipLoss()
    assert float(loss_fn.logit_scale.detach().exp()) == pytest.approx(1 / 0.07, rel=1e-6)
    loss = loss_fn(torch.tensor(DEPTH_FEATURES, dtype=torch.float32), torch.tensor(RGB_FEATURES, dtype=torch.float32))
    expected = hand_computed_clip_loss(DEPTH_FEATURES, RGB_FEATURES, 1 / 0.07)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    # The two directions differ for these features, so a one-directional loss would not match.
    logits = DEPTH_FEATURES @ RGB_FEATURES.T / 0.07
    assert abs(cross_entropy_at_diagonal(logits) - cross_entropy_at_diagonal(logits.T)) > 0.1
    assert loss_fn.last_logits_shape == (3, 3)  # no process group: the global batch is the local one


def test_clip_loss_clamps_logit_scale_to_100_and_1():
    loss_fn = ClipLoss()
    depth, rgb = torch.tensor(DEPTH_FEATURES, dtype=torch.float32), torch.tensor(RGB_FEATURES, dtype=torch.float32)
    with torch.no_grad():
        loss_fn.logit_scale.fill_(math.log(1000.0))
    loss = loss_fn(depth, rgb)
    assert float(loss.detach()) == pytest.approx(
        hand_computed_clip_loss(DEPTH_FEATURES, RGB_FEATURES, 100.0), rel=1e-5
    )
    assert float(loss_fn.logit_scale.detach().exp()) == pytest.approx(
        100.0, rel=1e-6
    )  # the parameter itself is clamped
    with torch.no_grad():
        loss_fn.logit_scale.fill_(-3.0)
    loss = loss_fn(depth, rgb)
    assert float(loss.detach()) == pytest.approx(hand_computed_clip_loss(DEPTH_FEATURES, RGB_FEATURES, 1.0), rel=1e-5)
    # At the cap the temperature still gets a gradient (open_clip clamps the parameter, not its gradient).
    with torch.no_grad():
        loss_fn.logit_scale.fill_(math.log(100.0))
    loss_fn(depth, rgb).backward()
    assert loss_fn.logit_scale.grad is not None and float(loss_fn.logit_scale.grad) != 0.0


def test_recall_counts_ties_against_the_match():
    similarity = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.5, 0.1], [0.3, 0.3, 0.3]])
    # Row 0: match best (rank 0). Row 1: one column above (rank 1). Row 2: all tied (rank 2, not 0).
    assert recall_at_k(similarity, (1, 2, 3)) == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 3: 1.0}


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------
def test_world_rows_are_deduplicated_by_scene_preferring_unmarked_images(world_questions):
    table = load_rows(world_questions)
    assert len(table) == 36  # 6 scenes x 6 questions, from 2 shards
    rows = select_pair_rows(table)
    scene_ids = table["scene_id"]
    assert len(rows) == 6 and len({scene_ids[i] for i in rows}) == 6
    markers = table["marker"]
    for row in rows:
        scene_rows = [i for i in range(len(table)) if scene_ids[i] == scene_ids[row]]
        if any(not markers[i] for i in scene_rows):
            assert not markers[row]
    # The chosen image is the scene's plain rendering and its depth the rendered depth (millimetre PNG).
    dataset = RGBDPairs(table, rows)
    for position in (0, 5):
        scene_index = int(scene_ids[rows[position]].rsplit("-", 1)[-1])
        sample = world.make_sample("train", scene_index, 0, IMAGE_SIZE)
        pair = dataset[position]
        np.testing.assert_array_equal(np.asarray(pair.image), sample.rendering.rgb)
        np.testing.assert_allclose(pair.depth, np.round(sample.rendering.depth * 1000) / 1000, atol=1e-6)


def test_flip_is_applied_to_image_and_depth_and_reproducible_per_epoch(pairs):
    table = load_rows(pairs["val"])
    rows = select_pair_rows(table)
    plain = RGBDPairs(table, rows)
    flipped = RGBDPairs(table, rows, augment=True, seed=0, max_rotation_degrees=0)  # what training.align reads
    decisions = []
    for epoch in range(3):
        flipped.set_epoch(epoch)
        epoch_decisions = []
        for index in range(8):
            original, augmented = plain[index], flipped[index]
            is_flipped = not np.array_equal(np.asarray(original.image), np.asarray(augmented.image))
            if is_flipped:
                np.testing.assert_array_equal(np.asarray(augmented.image), np.asarray(original.image)[:, ::-1])
                np.testing.assert_array_equal(augmented.depth, original.depth[:, ::-1])
            else:
                np.testing.assert_array_equal(augmented.depth, original.depth)
            epoch_decisions.append(is_flipped)
        assert epoch_decisions == [
            not np.array_equal(np.asarray(plain[i].image), np.asarray(flipped[i].image)) for i in range(8)
        ]
        decisions.append(epoch_decisions)
    assert any(any(epoch) for epoch in decisions) and not all(all(epoch) for epoch in decisions)
    assert decisions[0] != decisions[1] or decisions[1] != decisions[2]  # new draws each epoch


def test_collator_crops_to_a_fixed_square_and_keeps_depth_on_the_image_grid(depth_models):
    _, processor = depth_models["add"]
    collator = RGBDPairCollator(processor, image_size=IMAGE_SIZE)
    rng = np.random.default_rng(0)
    wide = Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8))
    wide_depth = np.tile(np.linspace(1.0, 9.0, 80, dtype=np.float32), (60, 1))  # half resolution, same aspect
    square = Image.fromarray(rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8))
    square_depth = np.full((IMAGE_SIZE, IMAGE_SIZE), 2.5, dtype=np.float32)
    batch = collator([RGBDPair(wide, wide_depth), {"image": square, "depth": square_depth}])
    assert batch["image_grid_thw"].tolist() == [[1, 8, 8], [1, 8, 8]]
    assert batch["pixel_values"].shape == (128, 3 * 2 * 14 * 14) and batch["depth_values"].shape == (128, 14 * 14)
    # The wide map's centre square spans columns 10..70 of 80, i.e. depth 1 + 8 * [10, 70) / 79: nothing outside it.
    wide_values = batch["depth_values"][:64]
    assert float(wide_values.min()) >= 1.0 + 8.0 * 10 / 79 - 1e-5
    assert float(wide_values.max()) <= 1.0 + 8.0 * 69 / 79 + 1e-5
    assert torch.all(batch["depth_values"][64:] == 2.5)
    # Same as the processor given the cropped, resized image and cropped depth directly.
    expected = processor(
        images=[wide.crop((20, 0, 140, 120)).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)],
        depth=[wide_depth[:, 10:70]],
        return_tensors="pt",
    )
    torch.testing.assert_close(batch["pixel_values"][:64], expected["pixel_values"], rtol=0, atol=0)
    torch.testing.assert_close(batch["depth_values"][:64], expected["depth_values"], rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------
def test_only_depth_encoder_heads_and_temperature_train_frozen_parts_bit_identical(tiny_base, pairs, tmp_path):
    torch.manual_seed(0)
    depth_model, processor = build_depth_model(tiny_base, depth_fusion="add")
    frozen_before = {
        name: tensor.clone()
        for name, tensor in depth_model.state_dict().items()
        if not name.startswith("model.depth_encoder.")
    }
    assert any(name.startswith("model.language_model.") for name in frozen_before)
    assert any(name.startswith("model.visual.") for name in frozen_before)
    encoder_before = {name: t.clone() for name, t in depth_model.model.depth_encoder.state_dict().items()}
    model = DepthAlignmentModel.from_depth_model(depth_model, alignment="dense", dense_tokens_per_image=8)
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable == {
        name
        for name, _ in model.named_parameters()
        if name.startswith(("depth_encoder.", "depth_head.", "rgb_head.")) or name == "loss_fn.logit_scale"
    }
    table = load_rows(pairs["train"])
    _, training_args = alignment_args(
        tiny_base, pairs["train"], tmp_path, "--max_steps", 4, "--per_device_train_batch_size", 8,
        "--learning_rate", 1e-2, "--save_strategy", "no", "--output_dir", tmp_path / "checkpoints",
    )  # fmt: skip
    trainer = DepthAlignmentTrainer(
        model=model,
        args=training_args,
        train_dataset=RGBDPairs(table, range(64), augment=True, max_rotation_degrees=0),
        data_collator=RGBDPairCollator(processor, IMAGE_SIZE),
    )
    trainer.train()
    assert model.training and not model.rgb_tower.training  # the tower stays in eval mode under Trainer.train()
    for name, tensor in depth_model.state_dict().items():
        if name in frozen_before:
            assert torch.equal(tensor, frozen_before[name]), name
    changed = [
        name
        for name, t in depth_model.model.depth_encoder.state_dict().items()
        if not torch.equal(t, encoder_before[name])
    ]
    assert len(changed) == len(encoder_before)  # every depth-encoder tensor trained
    assert float(model.loss_fn.logit_scale.detach()) != pytest.approx(math.log(1 / 0.07), abs=1e-6)


def test_alignment_lifts_held_out_retrieval_and_exports_a_loadable_depth_model(tiny_base, pairs, tmp_path):
    """Depth->RGB retrieval among 32 held-out scenes: chance is R@1 = 1/32 = 0.03, R@5 = 5/32 = 0.16.

    Dense alignment is scored here by token-matched retrieval (mean similarity of co-located tokens). The tiny
    base's RGB tower is random: its features encode colour, which depth cannot predict, and the only shared signal
    is the layout (where sky, floor and objects are), which mean pooling averages away. A linear probe from depth
    statistics to mean-pooled RGB features is at chance on these scenes, to token-level RGB features at R@1 ~0.3.
    (With a pretrained tower mean-pooled features are semantic; the mean-pooled recalls are reported alongside.)

    Before training the heads are random and R@1 is at chance. The threshold after 300 steps (512 scenes, ~19
    epochs) is R@1 >= 0.3, ten times chance: 10 or more of 32 depth maps pick their own image first, which a random
    scorer does with probability below 1e-6 (binomial, p = 1/32). Measured: R@1 0.44 (seeds 0-3: 0.44-0.53),
    R@5 0.9-1.0; the mean-pooled R@1 is 0.16.
    """
    out = tmp_path / "aligned"
    script_args, training_args = alignment_args(
        tiny_base, pairs["train"], out, "--alignment", "dense", "--per_device_train_batch_size", 32,
        "--learning_rate", 2e-3, "--max_steps", 300, "--logging_steps", 50, "--save_strategy", "no",
        eval_data=pairs["val"],
    )  # fmt: skip
    result = train_alignment(script_args, training_args)
    before, after = result.metrics["before"], result.metrics["after"]
    assert before["num_pairs"] == after["num_pairs"] == NUM_EVAL_PAIRS
    assert before["chance_r1"] == pytest.approx(1 / 32) and before["chance_r5"] == pytest.approx(5 / 32)
    print(json.dumps({"before": before, "after": after}, indent=1))
    assert after["token_matched_r1"] >= 0.3
    assert after["token_matched_r5"] >= 0.6
    assert after["token_matched_r1"] > before["token_matched_r1"] + 0.2
    assert json.loads((out / METRICS_FILE).read_text())["after"] == after
    # H5's probe: the depth encoder (a copy of the RGB tower run on depth) carries metric depth that RGB does not,
    # before and after alignment. Measured: depth R² 0.78 -> 0.89 (δ₁ 0.43 -> 0.67), RGB R² 0.11 (δ₁ 0.15).
    for probe in (result.metrics["probe_before"], result.metrics["probe_after"]):
        assert probe["depth"]["r2"] > 0.6 and probe["depth"]["r2"] > probe["rgb"]["r2"] + 0.4
    assert result.metrics["probe_before"]["rgb"] == result.metrics["probe_after"]["rgb"]  # the RGB tower is frozen

    # The output folder is a depth model whose encoder is the trained one and whose other weights are the base's.
    exported = Qwen2_5_VLDepthForConditionalGeneration.from_pretrained(out)
    assert exported.config.base_model_name_or_path == str(Path(tiny_base).resolve())  # its base, for the model card
    trained_encoder = result.model.depth_encoder.state_dict()
    for name, tensor in exported.model.depth_encoder.state_dict().items():
        assert torch.equal(tensor, trained_encoder[name]), name
    reference, _ = build_depth_model(tiny_base, depth_fusion="add")
    reference_state = reference.state_dict()
    for name, tensor in exported.state_dict().items():
        if not name.startswith("model.depth_encoder."):
            assert torch.equal(tensor, reference_state[name]), name
    heads = load_file(str(out / HEADS_FILE))
    trained = result.model.trainable_state_dict()
    assert set(heads) == {
        "depth_head.weight",
        "depth_head.bias",
        "rgb_head.weight",
        "rgb_head.bias",
        "loss_fn.logit_scale",
    }
    for name, tensor in heads.items():
        assert torch.equal(tensor, trained[name]), name


class StopAfterStep(TrainerCallback):
    """Stops training after `step` optimizer steps, as a killed job would (after its checkpoint)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def test_resume_from_checkpoint_matches_an_uninterrupted_run(tiny_base, pairs, tmp_path):
    """20 pairs in batches of 8 are 3 steps an epoch: the run stops at step 4, one batch into epoch 1, and resumes
    there. Dense sampling (8 of 16 tokens) and flips are on, so their state must survive the checkpoint too.

    The run is resumed with `latest` after a kill during the save of step 6 (a `checkpoint-6` without the
    `trainer_state.json` the Trainer writes last): it must resume from step 4, not crash on step 6."""
    common = [
        "--alignment", "dense", "--dense_tokens_per_image", 8, "--flip_augment", "true", "--max_train_pairs", 20,
        "--eval_pairs", 0, "--per_device_train_batch_size", 8, "--learning_rate", 3e-3, "--max_steps", 8,
        "--save_steps", 4, "--logging_steps", 1, "--rank_report", "true",
    ]  # fmt: skip
    interrupted = train_alignment(
        *alignment_args(tiny_base, pairs["train"], tmp_path / "interrupted", *common), callbacks=[StopAfterStep(4)]
    )
    assert interrupted.trainer.state.global_step == 4
    checkpoint = tmp_path / "interrupted" / "checkpoints" / "checkpoint-4"
    saved = load_file(str(checkpoint / "model.safetensors"))
    assert not any(name.startswith("rgb_tower.") for name in saved)  # the frozen tower is not checkpointed
    assert int(saved["dense_sampling_step"]) == 4
    killed_save = checkpoint.with_name("checkpoint-6")
    killed_save.mkdir()
    (killed_save / "model.safetensors").write_bytes((checkpoint / "model.safetensors").read_bytes()[:100])

    resumed = train_alignment(
        *alignment_args(
            tiny_base, pairs["train"], tmp_path / "resumed", *common,
            "--output_dir", checkpoint.parent, "--resume_from_checkpoint", "latest",
        )
    )  # fmt: skip
    uninterrupted = train_alignment(*alignment_args(tiny_base, pairs["train"], tmp_path / "uninterrupted", *common))
    assert resumed.trainer.state.global_step == uninterrupted.trainer.state.global_step == 8

    resumed_state, reference_state = trainable_tensors(resumed.model), trainable_tensors(uninterrupted.model)
    halfway_state = trainable_tensors(interrupted.model)
    assert set(resumed_state) == set(reference_state)
    for name, tensor in reference_state.items():
        torch.testing.assert_close(resumed_state[name], tensor, rtol=0, atol=1e-6, msg=name)
    assert float(resumed.model.loss_fn.logit_scale.detach()) == pytest.approx(
        float(uninterrupted.model.loss_fn.logit_scale.detach()), abs=1e-6
    )
    assert not torch.allclose(halfway_state["depth_head.weight"], reference_state["depth_head.weight"])
    # The resumed run computed only steps 5..8 (`local_losses` records this process's steps), with the same losses.
    assert len(uninterrupted.trainer.local_losses) == 8 and len(resumed.trainer.local_losses) == 4
    np.testing.assert_allclose(resumed.trainer.local_losses, uninterrupted.trainer.local_losses[4:], rtol=1e-5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_process_ddp_uses_the_global_batch_as_negatives(tiny_base, pairs, tmp_path):
    """2 CPU processes x 4 pairs vs 1 process x 8 pairs, same seed and data order.

    Each rank scores its 4 depth maps against all 8 gathered RGB images (logits 4 x 8), and the mean of the two local
    losses is the 8-pair loss, so the two runs log the same losses and end with the same weights.
    """
    common = [
        "--alignment", "global", "--max_train_pairs", 32, "--eval_pairs", 0, "--learning_rate", 3e-3,
        "--max_steps", 3, "--logging_steps", 1, "--save_strategy", "no", "--flip_augment", "true",
    ]  # fmt: skip
    ddp_out = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO_ROOT / "training" / "accelerate_configs" / "ddp_cpu.yaml"),
        "--main_process_port", str(free_port()), "-m", "training.align",
        "--base", str(tiny_base), "--data", str(pairs["train"]), "--out", str(ddp_out),
        "--image_size", str(IMAGE_SIZE), "--report_to", "none", "--disable_tqdm", "true", "--seed", "0",
        "--dataloader_pin_memory", "false", "--per_device_train_batch_size", "4", "--rank_report", "true",
        *[str(arg) for arg in common],
    ]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    completed = subprocess.run(
        command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=300, check=False
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-5000:]
    reports = [json.loads((ddp_out / "rank_reports" / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    for rank, report in enumerate(reports):
        assert report["process_index"] == rank and report["world_size"] == 2
        assert report["logits_shape"] == [4, 8]  # local rows x global (gathered) columns
        assert len(report["local_losses"]) == 3 and all(math.isfinite(loss) for loss in report["local_losses"])
    assert reports[0]["trainable_digest"] == reports[1]["trainable_digest"]  # bit-identical weights on both ranks
    assert reports[0]["local_losses"] != reports[1]["local_losses"]  # each rank scored its own rows
    logged = reports[0]["logged_losses"]
    np.testing.assert_allclose(logged, np.mean([r["local_losses"] for r in reports], axis=0), rtol=1e-6)

    single = train_alignment(
        *alignment_args(
            tiny_base, pairs["train"], tmp_path / "single", *common, "--per_device_train_batch_size", 8,
            "--rank_report", "true",
        )
    )  # fmt: skip
    assert single.model.loss_fn.last_logits_shape == (8, 8)
    np.testing.assert_allclose(single.trainer.local_losses, logged, rtol=1e-4)
    ddp_state = load_file(str(ddp_out / "checkpoints" / "model.safetensors"))
    for name, tensor in single.model.trainable_state_dict().items():
        torch.testing.assert_close(ddp_state[name], tensor, rtol=0, atol=1e-4, msg=name)
    # The exported folder from the DDP run loads as a depth model.
    exported = Qwen2_5_VLDepthForConditionalGeneration.from_pretrained(ddp_out)
    for name, tensor in exported.model.depth_encoder.state_dict().items():
        assert torch.equal(tensor, ddp_state[f"depth_encoder.{name}"]), name


def test_depth_folder_as_base_keeps_its_fusion_unless_asked(tiny_base, tmp_path):
    model, processor = build_depth_model(tiny_base, depth_fusion="concat")
    model.save_pretrained(tmp_path / "depth")
    processor.save_pretrained(tmp_path / "depth")
    script_args, _ = alignment_args(tmp_path / "depth", tmp_path, tmp_path)
    assert script_args.depth_fusion is None  # the CLI default: the folder's own fusion
    for fusion, expected in ((None, "concat"), ("add", "add")):
        loaded, loaded_processor = load_depth_model(tmp_path / "depth", fusion)
        assert loaded.config.depth_fusion == loaded_processor.depth_fusion == expected
        for name, tensor in model.model.depth_encoder.state_dict().items():
            assert torch.equal(loaded.model.depth_encoder.state_dict()[name], tensor), (fusion, name)


def test_ridge_probe_reads_a_linear_code_of_log_depth_and_not_noise():
    rng = np.random.default_rng(0)
    log_depth = rng.uniform(np.log(0.5), np.log(20), 400)
    image_of_token = np.repeat(np.arange(40), 10)
    mixing = rng.normal(size=(1, 8))
    code = log_depth[:, None] * mixing + 0.01 * rng.normal(size=(400, 8))
    read = ridge_probe(code, log_depth, image_of_token)
    assert read["r2"] > 0.99 and read["delta1"] == 1.0 and read["tokens"] == 200  # the second half of the images
    noise = ridge_probe(rng.normal(size=(400, 8)), log_depth, image_of_token)
    assert noise["r2"] < 0.1
    with pytest.raises(ValueError, match="at least 4 images"):
        ridge_probe(code[:20], log_depth[:20], image_of_token[:20])


def test_r_squared_is_one_when_exact_zero_for_the_mean_and_undefined_on_constant_targets():
    targets = np.array([0.0, 1.0, 2.0, 3.0])
    assert r_squared(targets, targets) == 1.0
    assert r_squared(np.full(4, targets.mean()), targets) == 0.0
    assert math.isnan(r_squared(targets, np.ones(4)))


def test_ridge_probe_on_constant_tuning_targets_picks_a_strength_without_warnings():
    rng = np.random.default_rng(0)
    image_of_token = np.repeat(np.arange(8), 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division by zero on the way
        read = ridge_probe(rng.normal(size=(80, 4)), np.zeros(80), image_of_token)
    assert math.isnan(read["r2"]) and read["delta1"] > 0.9  # the truth is a constant the probe nearly recovers


def test_region_log_depth_averages_each_merge_groups_valid_pixels():
    # Two merged tokens of 2x2 patches of 3 pixels each: the first all 2 m, the second 4 m with holes and a NaN.
    first = torch.full((4, 3), 2.0)
    second = torch.tensor([[4.0, 0.0, 4.0], [4.0, float("nan"), 4.0], [0.0, 0.0, 0.0], [4.0, 4.0, -1.0]])
    empty = torch.zeros(4, 3)
    targets, valid = region_log_depth(torch.cat([first, second, empty]), merge_size=2)
    assert valid.tolist() == [True, True, False]
    np.testing.assert_allclose(targets[:2], np.log([2.0, 4.0]), rtol=1e-6)


def test_probe_command_reads_more_depth_from_the_depth_tokens_than_from_rgb(tiny_base, pairs):
    from training.align.probe import main as probe_main

    report = probe_main([str(tiny_base), "--data", str(pairs["val"]), "--pairs", "32", "--image_size", "112"])
    probe = report[str(tiny_base)]
    # A new depth encoder (the RGB tower's copy on depth): measured R² 0.78 against the RGB tokens' 0.11.
    assert probe["depth"]["r2"] > 0.6 and probe["depth"]["r2"] > probe["rgb"]["r2"] + 0.4
    assert probe["depth"]["tokens"] == probe["rgb"]["tokens"] > 0
