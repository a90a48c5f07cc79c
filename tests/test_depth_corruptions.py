"""Issue 22's imperfect depth: each named corruption measured, its per-row seeding, the evaluation option that applies
it to a test set, the training augmentation that applies it to training rows only, and the robustness report."""

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from processing_depth import Qwen2_5_VLDepthProcessor, depth_to_meters
from training import evaluate, robustness
from training.benchmarks import SpatialSample, load_depth, read_benchmark
from training.build_depth_model import build_depth_model
from training.collator import DepthVLMCollator
from training.data_files import load_rows
from training.depth_corruptions import (
    AUGMENTATION_COLUMN,
    CORRUPTION_NAMES,
    CORRUPTIONS,
    EDGE_RELATIVE_JUMP,
    NOISE_K_PER_M,
    SCALE_RANGE,
    DepthAugmentation,
    SeededCorruption,
    corruption,
    depth_edges,
    row_generator,
)
from training.depth_png import decode_depth_cell, encode_depth_png
from training.sft import build_trainer, parse_args
from training.trl_layout import row_depths


REPO_ROOT = Path(__file__).resolve().parents[1]
# Corruptions that draw from the generator (the others are deterministic functions of the map).
RANDOM_CORRUPTIONS = ("noise", "holes-random", "holes-edges", "scale", "realistic")


def corrupt(name: str, depth: np.ndarray, seed: int = 0, key: str = "row") -> np.ndarray:
    return CORRUPTIONS[name](depth, row_generator(seed, key))


def scene_depth(height: int = 96, width: int = 128) -> np.ndarray:
    """A wall at 6 m, a box at 2 m in front of it (rows 30-69, columns 40-79), and 10 rows of sky (invalid) on top."""
    depth = np.full((height, width), 6.0, dtype=np.float32)
    depth[30:70, 40:80] = 2.0
    depth[:10] = np.nan
    return depth


# ---- each corruption, measured -----------------------------------------------------------------------------------
@pytest.mark.parametrize("z", [1.0, 2.0, 4.0])
def test_noise_has_the_std_k_z_squared_and_no_bias(z):
    depth = np.full((256, 256), z, dtype=np.float32)
    error = corrupt("noise", depth).astype(np.float64) - z
    expected = NOISE_K_PER_M * z * z
    # 65,536 pixels: the sample std is within 0.3% of the true one (1 / sqrt(2n)), the mean within 0.4% of a std.
    assert error.std() == pytest.approx(expected, rel=0.02)
    assert abs(error.mean()) < 4 * expected / math.sqrt(error.size)
    assert NOISE_K_PER_M * 4.0**2 == pytest.approx(0.0256)  # a few cm at 4 m, as the Kinect's measured 4 cm at 5 m


def test_noise_grows_with_z_squared_within_one_map():
    depth = np.repeat(np.array([1.0, 3.0], dtype=np.float32), 128 * 128).reshape(256, 128)
    out = corrupt("noise", depth)
    near, far = (out[:128] - 1.0).std(), (out[128:] - 3.0).std()
    assert far / near == pytest.approx(9.0, rel=0.04)


def test_random_holes_remove_a_fifth_of_the_valid_pixels_and_touch_nothing_else():
    depth = scene_depth()
    out = corrupt("holes-random", depth)
    valid = np.isfinite(depth)
    holes = valid & (out == 0)
    assert holes.sum() == round(0.2 * valid.sum())
    assert np.all(out[~valid] == 0)  # sky stays invalid, as 0: how the processor writes every invalid pixel
    assert np.array_equal(out[valid & ~holes], depth[valid & ~holes])
    # At random: the holes fall on the box and on the wall in proportion to their areas.
    on_box = holes[30:70, 40:80].mean()
    assert on_box == pytest.approx(0.2, abs=0.03)


def chebyshev_distance_to(mask: np.ndarray) -> np.ndarray:
    rows, columns = np.nonzero(mask)
    grid_rows, grid_columns = np.indices(mask.shape)
    return np.min(
        np.maximum(
            np.abs(grid_rows[..., None] - rows[None, None]), np.abs(grid_columns[..., None] - columns[None, None])
        ),
        axis=-1,
    )


def test_edge_holes_are_a_band_around_the_depth_discontinuities():
    depth = scene_depth()
    out = corrupt("holes-edges", depth)
    valid = np.isfinite(depth)
    holes = valid & (out == 0)
    assert holes.sum() == round(0.2 * valid.sum())
    edges = depth_edges(np.nan_to_num(depth), EDGE_RELATIVE_JUMP)
    # The box's outline is the only discontinuity (the sky is a hole, not a jump between readings): the box's border
    # pixels and the wall's pixels beside them (diagonal neighbours are not compared) ...
    assert edges.sum() == (4 * 40 - 4) + 4 * 40 and not edges[:11].any()
    # ... every pixel on it is a hole, and the holes are the pixels nearest it: a band, complete up to its outer ring.
    assert holes[edges].all()
    distance = chebyshev_distance_to(edges)
    widest = distance[holes].max()
    assert holes[valid & (distance < widest)].all() and not holes[distance > widest].any()
    assert 0.10 <= (out == 0).mean() - (~valid).mean() <= 0.30


def test_edge_holes_without_any_edge_fall_at_random():
    out = corrupt("holes-edges", np.full((64, 64), 3.0, dtype=np.float32))
    assert (out == 0).sum() == round(0.2 * 64 * 64)
    assert (out[:32] == 0).mean() == pytest.approx(0.2, abs=0.05)


def test_quantise_rounds_to_centimetres_and_never_to_a_hole():
    depth = np.array([[0.003, 0.0149, 0.0151, 1.234], [2.0, 5.5555, np.nan, 0.0]], dtype=np.float32)
    out = corrupt("quantise", depth)
    assert np.allclose(out, [[0.01, 0.01, 0.02, 1.23], [2.0, 5.56, 0.0, 0.0]], atol=1e-6)
    rng_depth = np.random.default_rng(0).uniform(0.1, 20.0, (64, 64)).astype(np.float32)
    steps = corrupt("quantise", rng_depth) / 0.01
    assert np.allclose(steps, np.rint(steps), atol=1e-3)
    assert np.abs(corrupt("quantise", rng_depth) - rng_depth).max() <= 0.005 + 1e-5


def test_low_res_is_a_quarter_size_map_of_block_means_of_the_valid_pixels():
    depth = np.random.default_rng(0).uniform(0.5, 8.0, (64, 48)).astype(np.float32)
    depth[:4, :4] = 0  # a block without a reading
    depth[4:8, :4][0, 0] = np.nan  # a block with one hole
    out = corrupt("low-res", depth)
    assert out.shape == (16, 12)
    blocks = np.where(depth > 0, depth, np.nan).reshape(16, 4, 12, 4).transpose(0, 2, 1, 3).reshape(16, 12, 16)
    expected = np.nan_to_num(np.nanmean(np.where(np.isnan(blocks).all(-1, keepdims=True), 0, blocks), -1))
    assert out[0, 0] == 0 and out[1, 0] == pytest.approx(np.nanmean(depth[4:8, :4][depth[4:8, :4] > 0]))
    assert np.allclose(out, expected, rtol=1e-6)


def test_low_res_reaches_the_model_as_a_sixteenth_of_the_independent_values(depth_models):
    """The processor resizes the ¼-size map to its image (same aspect ratio): every 4x4 block of depth patches' pixels
    is one reading."""
    processor = depth_models["add"][1]
    depth = np.random.default_rng(1).uniform(0.5, 8.0, (112, 112)).astype(np.float32)
    small = corrupt("low-res", depth)
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q"}]}], add_generation_prompt=True
    )
    image = Image.fromarray(np.zeros((112, 112, 3), dtype=np.uint8))
    inputs = processor(images=[[image]], text=[prompt], depth=[[small]], return_tensors="np")
    values = inputs["depth_values"]
    assert values.size == 112 * 112 and set(np.unique(values)) <= set(np.unique(small))
    assert len(np.unique(values)) == small.size == values.size // 16


def test_low_res_of_an_odd_shape_keeps_the_shape_when_a_quarter_size_would_change_the_aspect_ratio():
    depth = np.arange(1, 64, dtype=np.float32).reshape(9, 7)
    out = corrupt("low-res", depth)
    assert out.shape == (9, 7) and len(np.unique(out)) == 4  # a 2x2 sensor, upsampled by nearest neighbour


def test_scale_is_one_log_uniform_factor_per_row_the_same_on_every_run():
    depth = scene_depth()
    valid = np.isfinite(depth)
    factors = []
    for index in range(300):
        out = corrupt("scale", depth, key=f"scene/{index}")
        ratio = out[valid] / depth[valid]
        assert np.allclose(ratio, ratio[0], rtol=1e-6) and np.all(out[~valid] == 0)
        factors.append(float(ratio[0]))
    logs = np.log(factors)
    low, high = np.log(SCALE_RANGE)
    assert logs.min() >= low - 1e-6 and logs.max() <= high + 1e-6
    assert logs.min() < low + 0.02 and logs.max() > high - 0.02  # the whole range is used
    assert abs(logs.mean()) < 3 * (high - low) / math.sqrt(12 * 300)  # centred on x1 in log: uniform in log
    assert len(set(factors)) == 300  # every row its own factor
    again = corrupt("scale", depth, key="scene/7")
    assert np.array_equal(again[valid] / depth[valid], np.full(valid.sum(), factors[7], np.float32))


def test_relative_depth_has_median_one_and_keeps_every_ratio():
    depth = scene_depth()
    out = corrupt("relative", depth)
    valid = np.isfinite(depth)
    assert np.median(out[valid]) == pytest.approx(1.0, abs=1e-6)
    assert np.allclose(out[valid] * np.median(depth[valid]), depth[valid], rtol=1e-6)
    assert np.all(out[~valid] == 0)


def test_realistic_is_the_noise_row_plus_a_tenth_of_the_valid_pixels_as_random_holes():
    depth = scene_depth()
    valid = np.isfinite(depth)
    noisy, realistic = corrupt("noise", depth), corrupt("realistic", depth)
    holes = valid & (realistic == 0)
    assert holes.sum() == round(0.1 * valid.sum())
    assert np.array_equal(realistic[valid & ~holes], noisy[valid & ~holes])  # the same row's noise


# ---- seeding ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CORRUPTION_NAMES)
def test_the_same_seed_and_row_give_the_same_map(name):
    depth = scene_depth()
    first, again = corrupt(name, depth, seed=3, key="a/1"), corrupt(name, depth, seed=3, key="a/1")
    assert np.array_equal(first, again)
    if name in RANDOM_CORRUPTIONS:
        assert not np.array_equal(first, corrupt(name, depth, seed=4, key="a/1"))
        assert not np.array_equal(first, corrupt(name, depth, seed=3, key="a/2"))


def test_row_seeds_do_not_depend_on_the_process():
    """Rows are keyed by a SHA-256 of their key, not by Python's `hash`, which differs from process to process."""
    code = "from training.depth_corruptions import row_generator; print(row_generator(5, 'scene/9').integers(2**62))"
    environment = {**os.environ, "PYTHONHASHSEED": "1", "PYTHONPATH": str(REPO_ROOT)}
    other_process = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT, env=environment
    ).stdout
    assert other_process == f"{row_generator(5, 'scene/9').integers(2**62)}\n"


# ---- bad input ----------------------------------------------------------------------------------------------------
def test_bad_input_gets_an_error_that_names_the_problem():
    with pytest.raises(ValueError, match="Unknown depth corruption 'blur'.*noise, holes-random"):
        corruption("blur")
    with pytest.raises(ValueError, match="'noise'.*must be 2-D"):
        CORRUPTIONS["noise"](np.ones((2, 3, 4), np.float32), row_generator(0, 0))
    with pytest.raises(ValueError, match="'scale'.*negative"):
        CORRUPTIONS["scale"](np.full((4, 4), -1.0, np.float32), row_generator(0, 0))
    with pytest.raises(TypeError, match="'noise'.*numpy.random.Generator"):
        CORRUPTIONS["noise"](np.ones((4, 4), np.float32), 0)
    with pytest.raises(ValueError, match="Unknown depth corruption 'blur'"):
        DepthAugmentation(("noise", "blur"))
    with pytest.raises(ValueError, match=r"probability must be in \[0, 1\]"):
        DepthAugmentation(("noise",), probability=1.5)


depth_values = st.one_of(
    st.floats(float(np.float32(0.001)), 80.0, width=32), st.just(0.0), st.just(float("nan")), st.just(float("inf"))
)


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(CORRUPTION_NAMES),
    depth=hnp.arrays(
        np.float32, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=24), elements=depth_values
    ),
    seed=st.integers(0, 2**31),
)
def test_a_corrupted_map_always_passes_the_processors_checks(name, depth, seed):
    out = corrupt(name, depth, seed=seed)
    assert out.dtype == np.float32 and out.ndim == 2
    assert np.all(np.isfinite(out)) and np.all(out >= 0)  # no negative and no NaN reading: invalid is 0
    assert np.array_equal(depth_to_meters(out, "mask"), out)  # read back exactly as it is given
    image = Image.fromarray(np.zeros((*depth.shape, 3), dtype=np.uint8))
    Qwen2_5_VLDepthProcessor._check_covers_image(out, image, 0)  # covers its image (the aspect ratio)
    valid = np.isfinite(depth) & (depth > 0)
    if out.shape == depth.shape and name != "low-res":
        assert np.all(out[~valid] == 0)  # a hole stays a hole
        if not name.startswith("holes") and name != "realistic":
            assert np.all(out[valid] > 0)  # and a reading stays a reading


# ---- evaluation: --depth-corruption -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rgb_model_folder(tiny_base, tmp_path_factory):
    torch.manual_seed(0)
    model, processor = build_depth_model(tiny_base, depth_fusion="none")
    folder = tmp_path_factory.mktemp("robust_none")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


EVALUATE_FLAGS = ["--limit", "4", "--batch-size", "4", "--max-new-tokens", "4", "--device", "cpu", "--no-progress"]


def depth_values_reaching_generate(monkeypatch) -> list:
    """The `depth_values` of every `generate` call from now on, in order (a list that fills as the test runs)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    received = []
    original = Qwen2_5_VLForConditionalGeneration.generate

    def spy(model, **inputs):
        received.append(inputs["depth_values"].clone())
        return original(model, **inputs)

    monkeypatch.setattr(Qwen2_5_VLForConditionalGeneration, "generate", spy)
    return received


def test_a_depth_corruption_reaches_the_model_and_the_results(open_add_folder, world_dir, tmp_path, monkeypatch):
    """`--depth-corruption scale`: the model gets each question's depth times that question's own factor, its answer
    logits move, and results.json says which corruption, with which seed."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    received = []
    original = Qwen2_5_VLForConditionalGeneration.generate

    def spy(model, **inputs):
        received.append({key: value.clone() for key, value in inputs.items() if torch.is_tensor(value)})
        return original(model, **inputs)

    monkeypatch.setattr(Qwen2_5_VLForConditionalGeneration, "generate", spy)
    base = ["run", "--model", str(open_add_folder), "--data", str(world_dir), *EVALUATE_FLAGS]
    clean = evaluate.main([*base, "--out", str(tmp_path / "clean")])
    evaluate.main([*base, "--out", str(tmp_path / "scale"), "--depth-corruption", "scale"])
    saved = json.loads((tmp_path / "scale" / "results.json").read_text())
    assert saved["depth_corruption"] == {**CORRUPTIONS["scale"].describe(), "seed": 0}
    assert clean["depth_corruption"] is None and saved["depth_source"] == {"dataset": 4}

    clean_inputs, scaled_inputs = received
    samples = read_benchmark("world", world_dir).samples[:4]
    factors = []
    for sample in samples:
        depth = load_depth(sample.depth)
        factors.append(float(np.median(CORRUPTIONS["scale"](depth, row_generator(0, sample.id))[depth > 0] /
                                       depth[depth > 0])))  # fmt: skip
    patches = clean_inputs["depth_values"].reshape(4, -1, clean_inputs["depth_values"].shape[-1])
    expected = patches * torch.tensor(factors)[:, None, None]
    assert torch.allclose(scaled_inputs["depth_values"].reshape_as(patches), expected, rtol=1e-6)
    assert len(set(factors)) == 4

    model, _ = evaluate.load_model_and_processor(open_add_folder, device="cpu")
    with torch.no_grad():
        logits = [model(**inputs).logits[:, -1] for inputs in (clean_inputs, scaled_inputs)]
    # The answer distribution moves with the corrupted depth. (Its greedy tokens do not: a random tiny model picks the
    # same few tokens whatever its input, which its tokenizer decodes to nothing readable.)
    assert (logits[0] - logits[1]).abs().max() > 1e-3


def test_relative_depth_is_read_at_the_relative_depth_median_when_one_is_set(
    open_add_folder, world_dir, tmp_path, monkeypatch
):
    """`--depth-corruption relative`: without `--relative-depth-median` the model gets each map divided by its median;
    with it (metres, or a world folder's median depth), each map read with its median at that depth."""
    from training.controls import median_depth

    received = depth_values_reaching_generate(monkeypatch)
    base = ["run", "--model", str(open_add_folder), "--data", str(world_dir), *EVALUATE_FLAGS]
    evaluate.main([*base, "--out", str(tmp_path / "clean")])
    plain = evaluate.main([*base, "--out", str(tmp_path / "relative"), "--depth-corruption", "relative"])
    at_3 = evaluate.main(
        [*base, "--out", str(tmp_path / "at3"), "--depth-corruption", "relative", "--relative-depth-median", "3"]
    )
    at_folder = evaluate.main(
        [*base, "--out", str(tmp_path / "atw"), "--depth-corruption", "relative"]
        + ["--relative-depth-median", str(world_dir)]
    )
    samples = read_benchmark("world", world_dir).samples
    folder_median = median_depth(samples)
    assert (plain["relative_depth_median"], at_3["relative_depth_median"]) == (None, 3.0)
    assert at_folder["relative_depth_median"] == folder_median
    medians = torch.tensor([float(np.median(load_depth(s.depth)[load_depth(s.depth) > 0])) for s in samples[:4]])
    clean = received[0].reshape(4, -1, received[0].shape[-1])
    for values, metres in zip(received[1:], (1.0, 3.0, folder_median)):
        expected = clean * (metres / medians)[:, None, None]
        assert torch.allclose(values.reshape_as(clean), expected, rtol=1e-5)
    with pytest.raises(SystemExit, match="neither metres nor a world folder"):
        evaluate.main([*base, "--out", str(tmp_path / "x"), "--relative-depth-median", "nowhere"])
    with pytest.raises(SystemExit, match="positive number of metres"):
        evaluate.main([*base, "--out", str(tmp_path / "x"), "--relative-depth-median", "-2"])


def test_median_depth_is_the_median_over_scenes_of_each_scenes_median(world_dir):
    from training.controls import median_depth, scene_of

    samples = read_benchmark("world", world_dir).samples
    first = {}
    for sample in samples:
        first.setdefault(scene_of(sample), sample)
    per_scene = [np.median(load_depth(s.depth)[load_depth(s.depth) > 0]) for s in first.values()]
    assert len(per_scene) > 1 and median_depth(samples) == pytest.approx(float(np.median(per_scene)), rel=1e-6)


def test_hole_filling_reaches_the_model_and_the_results(open_add_folder, world_dir, tmp_path, monkeypatch):
    """`--fill-depth-holes 1` on `holes-random` depth: every random hole is filled before the model sees it (isolated
    dropouts all have valid neighbours), so the model gets no more invalid pixels than the clean map's own sky, less
    its one-pixel rim; results.json records the setting."""
    received = depth_values_reaching_generate(monkeypatch)
    base = ["run", "--model", str(open_add_folder), "--data", str(world_dir), *EVALUATE_FLAGS]
    evaluate.main([*base, "--out", str(tmp_path / "clean")])
    holed = evaluate.main([*base, "--out", str(tmp_path / "holes"), "--depth-corruption", "holes-random"])
    filled = evaluate.main(
        [*base, "--out", str(tmp_path / "filled"), "--depth-corruption", "holes-random", "--fill-depth-holes", "1"]
    )
    clean_depth, holed_depth, filled_depth = received
    invalid = [int((depth == 0).sum()) for depth in received]
    assert invalid[1] > invalid[0] >= invalid[2]
    # Filling only ever writes where the holed map had a hole; everything measured passes through unchanged.
    measured = holed_depth > 0
    assert torch.equal(filled_depth[measured], holed_depth[measured])
    assert (holed["fill_depth_holes"], filled["fill_depth_holes"]) == (0, 1)
    assert clean_depth.shape == filled_depth.shape


def test_hole_filling_is_refused_for_a_processor_without_it():
    class OlderProcessor:  # a folder's processing_depth.py from before the option
        def __init__(self, image_processor=None, tokenizer=None, invalid_depth="mask"):
            pass

    with pytest.raises(SystemExit, match="has no fill_depth_holes; copy this checkout's processing_depth.py"):
        evaluate.set_hole_filling(OlderProcessor(), 1, "old/folder")


def test_depth_corruption_options_refuse_what_cannot_work(
    open_add_folder, rgb_model_folder, world_dir, tmp_path, capsys
):
    base = ["run", "--data", str(world_dir), "--out", str(tmp_path), *EVALUATE_FLAGS]
    with pytest.raises(SystemExit):
        evaluate.main([*base, "--model", str(open_add_folder), "--depth-corruption", "blur"])
    assert "invalid choice: 'blur'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate.main([*base, "--model", str(open_add_folder), "--depth-corruption", "noise", "--no-depth"])
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="RGB-only model.*reads no depth"):
        evaluate.main([*base, "--model", str(rgb_model_folder), "--depth-corruption", "noise"])


# ---- training: --depth_augmentation -------------------------------------------------------------------------------
def test_augmentation_corrupts_the_drawn_rows_with_their_own_generator(world_dir):
    rows = load_rows(str(world_dir)).select(range(16))
    augmentation = DepthAugmentation(("scale", "quantise"), probability=0.5, seed=1)
    augmented = augmentation.apply(rows)
    drawn = [augmentation.draw(index)[0] for index in range(len(rows))]
    assert augmented[AUGMENTATION_COLUMN] == [c.name if c else "" for c in drawn]
    assert 0 < sum(c is not None for c in drawn) < 16 and {c.name for c in drawn if c} == {"scale", "quantise"}
    for index, chosen in enumerate(drawn):
        clean = decode_depth_cell(row_depths(rows[index])[0])
        depth = decode_depth_cell(row_depths(augmented[index])[0])
        if chosen is None:
            assert row_depths(augmented[index]) == row_depths(rows[index])
        else:
            _, rng = augmentation.draw(index)
            # Stored as the dataset stores depth: a 16-bit millimetre PNG.
            assert np.array_equal(depth, decode_depth_cell(encode_depth_png(chosen(clean, rng))))
            assert not np.array_equal(depth, clean)
    assert augmented["question"] == rows["question"]  # only the depth changes
    assert DepthAugmentation(("scale",), probability=0.0).apply(rows)[AUGMENTATION_COLUMN] == [""] * 16


def sft_flags(tiny_base, world_dir, output_dir, *extra):
    return [
        "--model_name_or_path", str(tiny_base), "--dataset_path", str(world_dir), "--eval_dataset_path",
        str(world_dir), "--output_dir", str(output_dir), "--max_train_samples", "4", "--max_eval_samples", "4",
        "--report_to", "none", *extra,
    ]  # fmt: skip


def test_augmentation_reaches_the_training_batches_and_never_the_evaluation_rows(tiny_base, world_dir, tmp_path):
    flags = sft_flags(tiny_base, world_dir, tmp_path, "--depth_fusion", "add")
    trainer = build_trainer(*parse_args([*flags, "--depth_augmentation", "relative", "--depth_augmentation_p", "1"]))
    raw = load_rows(str(world_dir)).select(range(4))
    collator = trainer.data_collator
    assert isinstance(collator, DepthVLMCollator)
    clean = collator([raw[i] for i in range(4)])["depth_values"]
    trained = collator([trainer.train_dataset[i] for i in range(4)])["depth_values"]
    evaluated = collator([trainer.eval_dataset[i] for i in range(4)])["depth_values"]
    assert torch.equal(evaluated, clean)
    assert not torch.allclose(trained, clean)
    # Relative depth, median 1 per image, at the PNG's millimetre resolution.
    for image in trained.reshape(4, -1):
        assert image[image > 0].median().item() == pytest.approx(1.0, abs=1e-3)


def test_augmentation_flags_are_checked_when_parsed(tiny_base, world_dir, tmp_path):
    flags = sft_flags(tiny_base, world_dir, tmp_path)
    with pytest.raises(ValueError, match="Unknown depth corruption 'blur'"):
        parse_args([*flags, "--depth_fusion", "add", "--depth_augmentation", "noise,blur"])
    with pytest.raises(ValueError, match="RGB-only model, which reads no depth"):
        parse_args([*flags, "--depth_fusion", "none", "--depth_augmentation", "noise"])
    with pytest.raises(ValueError, match="probability"):
        parse_args([*flags, "--depth_fusion", "add", "--depth_augmentation", "noise", "--depth_augmentation_p", "2"])


# ---- the robustness report and job --------------------------------------------------------------------------------
def sample(index: int, question_type: str, answer: str, value: float | None = None, choices=()) -> SpatialSample:
    return SpatialSample(f"s/{index}", "q", question_type, answer, value, list(choices))


SAMPLES = [
    sample(0, "distance_to_camera", "2 m", 2.0), sample(1, "distance_to_camera", "4 m", 4.0),
    sample(2, "closer", "cube", choices=("cube", "ball")), sample(3, "closer", "ball", choices=("cube", "ball")),
]  # fmt: skip


def results_of(*predictions: str, corruption: str | None = None) -> dict:
    described = SeededCorruption.named(corruption).describe() if corruption else None
    return evaluate.build_results(SAMPLES, list(predictions), depth_corruption=described)


def test_the_robustness_table_puts_every_corruption_beside_clean_depth_and_rgb_only():
    rgb_only = results_of("9 m", "9 m", "cube", "cube")  # δ₁ 0, closer 0.5
    clean = results_of("2.1 m", "4 m", "cube", "ball")  # δ₁ 1, closer 1
    realistic = results_of("2.1 m", "9 m", "cube", "ball")  # δ₁ 0.5: not within 0.05 of clean
    relative = results_of("1 m", "?", "cube", "ball")  # closer 1 > RGB-only's 0.5; one answer unreadable
    table = robustness.robustness_table(clean, rgb_only, {"realistic": realistic, "relative": relative})
    assert "| question type | metric | rgb-only | clean | realistic | relative |" in table
    assert "| distance_to_camera | δ₁ | 0.000 | 1.000 | 0.500 | 0.000 |" in table
    assert "| closer | accuracy | 0.500 | 1.000 | 1.000 | 1.000 |" in table
    assert "| distance_to_camera | 1.00 | 1.00 | 1.00 | 0.50 |" in table  # readable answers
    assert "| realistic | distance_to_camera | delta1 | 0.500 | clean | 1.000 | -0.500 | no |" in table
    assert "| relative | closer | accuracy | 1.000 | rgb-only | 0.500 | +0.500 | yes |" in table
    checks = robustness.robustness_checks(clean, rgb_only, {"realistic": clean, "relative": rgb_only})
    assert [(row["question_type"], row["met"]) for row in checks] == [("distance_to_camera", True), ("closer", False)]


def test_the_robustness_job_runs_each_evaluation_once_and_resumes(
    open_add_folder, rgb_model_folder, world_dir, tmp_path, monkeypatch
):
    out = tmp_path / "robust"
    argv = ["--model", str(open_add_folder), "--rgb-only-model", str(rgb_model_folder), "--data", str(world_dir)]
    argv += ["--out", str(out), "--corruptions", "scale", "relative", *EVALUATE_FLAGS]
    summary = robustness.main(argv)
    for label, corruption_name in (("rgb-only", None), ("clean", None), ("scale", "scale"), ("relative", "relative")):
        saved = json.loads((out / label / "results.json").read_text())
        assert saved["label"] == label and saved["num_samples"] == 4
        assert (saved["depth_corruption"] or {}).get("name") == corruption_name
        assert summary["runs"][label]["per_type"].keys() == saved["metrics"]["per_type"].keys()
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(summary))
    assert "| question type | metric | rgb-only | clean | scale | relative |" in (out / "results.md").read_text()

    def must_not_run(argv):
        raise AssertionError(f"evaluated again: {argv}")

    monkeypatch.setattr(evaluate, "main", must_not_run)
    assert robustness.main(argv) == summary  # every evaluation read back
    with pytest.raises(SystemExit, match=r"depth corruption \('scale', 0\), not \('scale', 1\)"):
        robustness.main([*argv, "--corruption-seed", "1"])
    # Ranked answers are another reading of the same model: greedy runs are not read back as ranked ones.
    with pytest.raises(SystemExit, match="decoding 'greedy', not 'rank'"):
        robustness.main([*argv, "--decoding", "rank"])
    with pytest.raises(SystemExit, match="--depth-corruption=noise is set by training.robustness"):
        robustness.main([*argv, "--depth-corruption=noise"])
    # Hole filling is part of what a depth run is: the unfilled runs are not read back as filled ones.
    assert json.loads((out / "clean" / "results.json").read_text())["fill_depth_holes"] == 0
    with pytest.raises(SystemExit, match="fill_depth_holes 0, not 1"):
        robustness.main([*argv, "--fill-depth-holes", "1"])
    filled_argv = robustness.evaluation_args(
        robustness.build_parser().parse_known_args([*argv, "--fill-depth-holes", "1"])[0], "scale", []
    )
    assert filled_argv[-2:] == ["--fill-depth-holes", "1"]
    rgb_argv = robustness.evaluation_args(
        robustness.build_parser().parse_known_args([*argv, "--fill-depth-holes", "1"])[0], "rgb-only", []
    )
    assert "--fill-depth-holes" not in rgb_argv  # the RGB-only model reads no depth to fill


def test_the_robustness_job_refuses_a_depth_model_as_the_rgb_only_one(open_add_folder, world_dir, tmp_path):
    argv = ["--model", str(open_add_folder), "--rgb-only-model", str(open_add_folder), "--data", str(world_dir)]
    with pytest.raises(SystemExit, match="--rgb-only-model .* reads depth"):
        robustness.main([*argv, "--out", str(tmp_path), "--corruptions", "noise", *EVALUATE_FLAGS])


def test_a_seeded_corruption_keys_rows_by_their_id():
    seeded = SeededCorruption.named("noise", seed=2)
    depth = scene_depth()
    assert np.array_equal(seeded(depth, "s/1"), corrupt("noise", depth, seed=2, key="s/1"))
    assert replace(seeded, seed=3).describe()["seed"] == 3


@pytest.mark.parametrize("argv", [["run", "--help"], ["constant", "--help"]])
def test_the_evaluation_help_prints_every_corruption(argv, capsys):
    """argparse %-formats help texts: a description with a bare "%" (holes "20% of pixels") would crash `--help`."""
    from training import evaluate

    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(argv)
    assert exit_info.value.code == 0
    if argv[0] == "run":
        help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines, at hyphens too
        assert all(f"{name}:" in help_text.replace("- ", "-") for name in CORRUPTIONS)
