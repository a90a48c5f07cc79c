"""make_rgbd_pairs: RGB-D pairs from an image collection, with tiny random DepthAnything estimators built offline.

The photo folder mixes every kind of image the CLI must cope with; the stored values are checked against the
estimator run directly on the stored images, so the batching, bucketing and resizing cannot change a prediction.
"""

import io
import json
import os
import shutil
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image, ImageOps

from processing_depth import MonocularDepthEstimator
from training import make_rgbd_pairs
from training.depth_png import decode_depth_png, encode_depth_png
from training.make_rgbd_pairs import (
    RGBDPairs,
    SkippedImage,
    augment_rgbd_pair,
    load_rgbd_pair,
    prepare_image,
    shard_path,
    shards_for_rank,
    transform_rgbd_pair,
)
from training.tiny import save_tiny_depth_anything
from training.trl_layout import first_depth


REPO_ROOT = Path(__file__).resolve().parents[1]
SHARD_SIZE = 4
MAX_SIDE = 64
MAX_PIXELS = 10_000  # "huge.png" (120x100) is over it; everything else is under
GOOD_IMAGES = {
    "cmyk.jpg",
    "gray.png",
    "gray16.png",
    "large.png",
    "palette.png",
    "rgb.jpg",
    "rgb.png",
    "rgba.png",
    "rotated.jpg",
    "sub/nested.webp",
}
BAD_IMAGES = {
    "huge.png": "too_large",
    "not_an_image.jpg": "unreadable",
    "tiny.png": "too_small",
    "truncated.jpg": "truncated",
}
NUM_SHARDS = 4  # 14 images, 4 per shard; the last shard holds only bad images, so it has no rows


def scene(height: int, width: int, seed: int) -> np.ndarray:
    """An RGB image with structure (ramps and a block) so the random estimator's depth varies across it."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // (width - 1), y * 255 // (height - 1), (x * y) % 256], -1).astype(np.uint8)
    rgb[height // 3 : height // 2, width // 4 : width // 2] = np.random.default_rng(seed).integers(0, 256, 3)
    return rgb


@pytest.fixture(scope="session")
def estimators(tmp_path_factory):
    """A metric estimator with a fixed 56x56 input and a relative one whose input keeps the aspect ratio."""
    root = tmp_path_factory.mktemp("estimators")
    return {
        "metric": str(save_tiny_depth_anything(root / "metric", metric=True)),
        "relative": str(save_tiny_depth_anything(root / "relative", metric=False, keep_aspect_ratio=True)),
    }


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    Image.fromarray(scene(48, 64, 1)).save(root / "rgb.jpg", quality=90)
    Image.fromarray(scene(40, 56, 2)).save(root / "rgb.png")
    Image.fromarray(scene(50, 50, 3)[..., 0]).save(root / "gray.png")
    Image.fromarray(scene(48, 48, 4)).convert("CMYK").save(root / "cmyk.jpg")
    Image.fromarray(scene(44, 60, 5)).convert("P", palette=Image.Palette.ADAPTIVE).save(root / "palette.png")
    rgba = np.dstack([scene(40, 40, 6), np.full((40, 40), 255, np.uint8)])
    rgba[:10, :10] = (255, 0, 0, 0)  # transparent red: must come out white, not red
    Image.fromarray(rgba).save(root / "rgba.png")
    Image.fromarray(np.linspace(0, 65535, 36 * 52).reshape(36, 52).astype(np.uint16)).save(root / "gray16.png")
    (root / "sub").mkdir()
    Image.fromarray(scene(32, 48, 7)).save(root / "sub" / "nested.webp")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed portrait (rotated 90 degrees clockwise)
    Image.fromarray(scene(40, 64, 8)).save(root / "rotated.jpg", exif=exif, quality=95)
    Image.fromarray(scene(80, 96, 9)).save(root / "large.png")  # over --max-side: stored at 64x53
    Image.fromarray(scene(100, 120, 10)).save(root / "huge.png")
    buffer = io.BytesIO()
    Image.fromarray(scene(64, 64, 11)).save(buffer, format="JPEG")
    (root / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) * 6 // 10])
    (root / "not_an_image.jpg").write_text("this is not a JPEG")
    Image.fromarray(scene(4, 4, 12)).save(root / "tiny.png")
    (root / "notes.txt").write_text("not an image extension: not listed at all")
    return root


def run_cli(input_path, out_dir, estimator, *extra: str) -> dict:
    argv = [
        "--input",
        str(input_path),
        "--out",
        str(out_dir),
        "--estimator",
        estimator,
        "--num-workers",
        "0",
        "--shard-size",
        str(SHARD_SIZE),
        "--max-side",
        str(MAX_SIDE),
        "--max-pixels",
        str(MAX_PIXELS),
        "--no-progress",
        *extra,
    ]
    return make_rgbd_pairs.main(argv)


def read_rows(out_dir: Path) -> list[dict]:
    return [
        row for file in sorted((out_dir / "data").glob("shard-*.parquet")) for row in pq.read_table(file).to_pylist()
    ]


def stored_image(row: dict) -> Image.Image:
    return Image.open(io.BytesIO(row["images"][0]["bytes"])).convert("RGB")


@pytest.fixture(scope="session")
def metric_pairs(tmp_path_factory, photos, estimators):
    out_dir = tmp_path_factory.mktemp("metric_pairs")
    result = run_cli(photos, out_dir, estimators["metric"])
    return out_dir, result


@pytest.fixture(scope="session")
def relative_pairs(tmp_path_factory, photos, estimators):
    out_dir = tmp_path_factory.mktemp("relative_pairs")
    run_cli(photos, out_dir, estimators["relative"])
    return out_dir


# --------------------------------------------------------------------------------------------------------------
# Depth encoding
# --------------------------------------------------------------------------------------------------------------
def test_depth_png_round_trips_within_half_a_millimetre():
    depth = np.random.default_rng(0).uniform(0.01, 65.0, (23, 31)).astype(np.float32)
    depth[0, :4] = [0.0, np.nan, np.inf, 0.0002]  # invalid, invalid, invalid, valid but under 0.5 mm
    depth[1, 0] = 100.0  # beyond 65.535 m
    data = encode_depth_png(depth)
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    decoded = decode_depth_png(data)
    assert decoded.dtype == np.float32 and decoded.shape == (23, 31)
    np.testing.assert_array_equal(decoded[0, :4], np.float32([0, 0, 0, 0.001]))
    assert decoded[1, 0] == np.float32(65.535)
    rest = np.ones_like(depth, dtype=bool)
    rest[0, :4] = rest[1, 0] = False
    assert np.abs(decoded[rest] - depth[rest]).max() <= 0.0005 + 1e-6


def png_claiming_size(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims `width` x `height`: what a decompression bomb looks like to a reader."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")  # IHDR width, height
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


def test_oversized_images_are_skipped_before_decoding():
    for width, height in [(8000, 7000), (20000, 20000)]:  # over --max-pixels; over PIL's own bomb limit too
        with pytest.raises(SkippedImage) as skipped:
            prepare_image(png_claiming_size(width, height), max_side=1024)
        assert skipped.value.reason == "too_large"


# --------------------------------------------------------------------------------------------------------------
# The CLI on a folder of good and bad images
# --------------------------------------------------------------------------------------------------------------
def test_written_and_skipped_images(metric_pairs):
    out_dir, result = metric_pairs
    rows = read_rows(out_dir)
    assert sorted(row["source_id"] for row in rows) == sorted(GOOD_IMAGES)
    skipped = [json.loads(line) for line in (out_dir / "skipped.jsonl").read_text().splitlines()]
    assert {record["source_id"]: record["reason"] for record in skipped} == BAD_IMAGES
    assert all(record["detail"] for record in skipped)
    assert result["totals"] == {
        "rows": len(GOOD_IMAGES),
        "skipped": len(BAD_IMAGES),
        "skipped_by_reason": {reason: 1 for reason in BAD_IMAGES.values()},
        "missing_shards": [],
    }
    assert [shard_path(out_dir, shard).exists() for shard in range(NUM_SHARDS + 1)] == [True] * NUM_SHARDS + [False]
    assert pq.read_table(shard_path(out_dir, NUM_SHARDS - 1)).num_rows == 0  # only bad images: empty but present
    assert not list(out_dir.rglob(".*tmp*"))


def test_images_are_converted_to_upright_rgb(metric_pairs, photos):
    rows = {row["source_id"]: row for row in read_rows(metric_pairs[0])}
    for source_id, row in rows.items():
        image = Image.open(io.BytesIO(row["images"][0]["bytes"]))
        assert image.mode == "RGB", source_id
        assert (row["width"], row["height"]) == image.size
    # An unchanged RGB JPEG keeps its bytes.
    assert rows["rgb.jpg"]["images"][0]["bytes"] == (photos / "rgb.jpg").read_bytes()
    assert Image.open(io.BytesIO(rows["rgb.png"]["images"][0]["bytes"])).format == "PNG"
    # Downscaled to --max-side on the longer side.
    assert (rows["large.png"]["width"], rows["large.png"]["height"]) == (64, 53)
    # EXIF orientation 6: the 64x40 stored pixels are shown (and kept) as 40x64.
    rotated = np.asarray(stored_image(rows["rotated.jpg"]), dtype=np.float32)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(photos / "rotated.jpg")).convert("RGB"), np.float32)
    wrong_way = np.asarray(Image.open(photos / "rotated.jpg").convert("RGB").transpose(Image.Transpose.ROTATE_90))
    assert rotated.shape == (64, 40, 3)
    # Re-encoded as JPEG q95: compare the smooth red/green ramps (the blue channel is high-frequency noise).
    assert np.abs(rotated - expected)[..., :2].mean() < 3
    assert np.abs(rotated - wrong_way)[..., :2].mean() > 30
    # Transparent pixels become white, not the colour they happen to hold.
    assert np.all(np.asarray(stored_image(rows["rgba.png"]))[:10, :10] == 255)
    # 16-bit gray is rescaled to 8 bits (PIL's own conversion would clip it to white).
    gray16 = np.asarray(stored_image(rows["gray16.png"]))[..., 0].astype(np.float64)
    source16 = np.asarray(Image.open(photos / "gray16.png"), dtype=np.float64)
    assert np.abs(gray16 - source16 * 255 / 65535).max() <= 0.5
    np.testing.assert_array_equal(
        np.asarray(stored_image(rows["palette.png"])), np.asarray(Image.open(photos / "palette.png").convert("RGB"))
    )
    np.testing.assert_array_equal(
        np.asarray(stored_image(rows["gray.png"])), np.asarray(Image.open(photos / "gray.png").convert("RGB"))
    )
    cmyk = np.asarray(Image.open(photos / "cmyk.jpg").convert("RGB"), dtype=np.float32)
    # Two lossy JPEG passes (CMYK source, RGB store): close, far from an inverted or channel-swapped conversion.
    assert np.abs(np.asarray(stored_image(rows["cmyk.jpg"]), dtype=np.float32) - cmyk)[..., :2].mean() < 8


def test_metric_depth_equals_the_estimator_on_the_stored_image(metric_pairs, estimators):
    out_dir, _ = metric_pairs
    estimator = MonocularDepthEstimator(estimators["metric"])
    rows = read_rows(out_dir)
    spreads = []
    for row in rows:
        image = stored_image(row)
        depth = decode_depth_png(first_depth(row))
        assert depth.shape == (image.height, image.width), row["source_id"]
        expected = estimator([image])[0]
        np.testing.assert_allclose(depth, expected, atol=0.001, err_msg=row["source_id"])
        spreads.append(float(expected.max() - expected.min()))
        assert row["depth_is_metric"] is True
        assert row["depth_encoding"] == "uint16_png_millimetres"
        assert row["estimator"] == estimators["metric"]
    assert min(spreads) > 0.1  # the depth maps vary by more than the tolerance: the comparison means something


def test_relative_depth_is_median_normalised(relative_pairs, estimators):
    estimator = MonocularDepthEstimator(estimators["relative"])
    rows = read_rows(relative_pairs)
    assert sorted(row["source_id"] for row in rows) == sorted(GOOD_IMAGES)
    for row in rows:
        assert row["depth_is_metric"] is False
        assert row["depth_encoding"] == "uint16_png_relative_x1000"
        image = stored_image(row)
        depth = decode_depth_png(first_depth(row))
        assert depth.shape == (image.height, image.width)
        assert abs(np.median(depth[depth > 0]) - 1.0) <= 0.002, row["source_id"]
        # Bucketed by preprocessed shape and resized back, yet the same as the estimator on this image alone.
        expected = estimator([image])[0]
        # rtol: where disparity nears 0, batching's float noise is magnified in its inverse; above 65 the encoding clips.
        comparable = expected < 65.0
        np.testing.assert_allclose(
            depth[comparable], expected[comparable], rtol=1e-3, atol=0.002, err_msg=row["source_id"]
        )


def test_dataset_card_and_loading(metric_pairs):
    from datasets import load_dataset

    out_dir, _ = metric_pairs
    card = (out_dir / "README.md").read_text()
    assert card.startswith("---\n") and "path: data/shard-*.parquet" in card
    assert "| 14 | 10 | 4 | 4 / 4 | complete |" in card
    for source_id, reason in BAD_IMAGES.items():
        assert f"| `{source_id}` | `{reason}` |" in card
    assert "uint16_png_millimetres" in card
    # The card's `configs` make the folder loadable as is.
    pairs = load_dataset(str(out_dir), split="train")
    assert len(pairs) == len(GOOD_IMAGES)
    assert pairs.features["images"].feature.__class__.__name__ == "Image"


# --------------------------------------------------------------------------------------------------------------
# The estimator's fast path: one image per forward on CPU, bf16 with query-blocked attention on request
# --------------------------------------------------------------------------------------------------------------
# bf16 against fp32 per pixel on the tiny metric estimator (depths 6-17 m), as measured: at worst 1.8% on the scenes
# below and 3.4% on the CLI's photo folder (p99 1.6%), 0.35% at most on average.
BF16_MAX_RELATIVE_ERROR = 0.05
BF16_MEAN_RELATIVE_ERROR = 0.005


def stock_pipeline_depth(estimator_folder: str, images: list[Image.Image]) -> list[np.ndarray]:
    """transformers' `pipeline("depth-estimation")`, image by image: the stock image processor, model (fp32, SDPA)
    and post-processing."""
    from transformers import pipeline

    stock = pipeline("depth-estimation", model=estimator_folder, device="cpu")
    return [stock(image)["predicted_depth"].numpy() for image in images]


def test_query_blocked_attention_is_softmax_attention():
    import torch

    import processing_depth

    generator = torch.Generator().manual_seed(0)
    # 600 queries: two full blocks of 256 and a partial one; a mask per query and one broadcast over queries.
    query, key, value = (torch.randn(2, 3, 600, 16, generator=generator) for _ in range(3))
    per_query_mask = torch.randn(2, 1, 600, 600, generator=generator)
    broadcast_mask = torch.where(torch.arange(600) % 7 == 0, float("-inf"), 0.0).expand(2, 1, 1, 600)
    for mask in (None, per_query_mask, broadcast_mask):
        expected = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask)
        output, weights = processing_depth.query_blocked_attention(None, query, key, value, mask, scaling=16**-0.5)
        assert weights is None and output.shape == (2, 600, 3, 16)
        torch.testing.assert_close(output, expected.transpose(1, 2), rtol=1e-5, atol=1e-6)
    # In bf16 it is within bf16's rounding of fp32 attention (outputs here are within +-1).
    output, _ = processing_depth.query_blocked_attention(
        None, query.bfloat16(), key.bfloat16(), value.bfloat16(), None
    )
    expected = torch.nn.functional.scaled_dot_product_attention(query, key, value).transpose(1, 2)
    assert (output.float() - expected).abs().max() < 0.02
    with pytest.raises(ValueError, match="dropout"):
        processing_depth.query_blocked_attention(None, query, key, value, None, dropout=0.1)


def test_the_fast_path_gives_the_stock_pipelines_depth(estimators, monkeypatch):
    import torch

    import processing_depth

    # 56x56 is the tiny metric estimator's input size: no resizing on either side, so the maps must agree exactly
    # (ours resizes bilinearly, the pipeline bicubically; at the network's own size both are the identity).
    images = [Image.fromarray(scene(56, 56, seed)) for seed in range(4)]
    stock = stock_pipeline_depth(estimators["metric"], images)
    fp32 = MonocularDepthEstimator(estimators["metric"], device="cpu")
    assert fp32.model.backbone.config._attn_implementation == "sdpa"
    for depth, expected in zip(fp32(images), stock):
        np.testing.assert_allclose(depth, expected, rtol=1e-6, atol=1e-6)

    bf16 = MonocularDepthEstimator(estimators["metric"], device="cpu", dtype=torch.bfloat16)
    assert bf16.model.dtype == torch.bfloat16
    assert bf16.model.backbone.config._attn_implementation == processing_depth.QUERY_BLOCKED_ATTENTION
    # Blocks of 4 queries, so that the 17 tokens of the tiny backbone span several blocks.
    monkeypatch.setattr(processing_depth, "ATTENTION_QUERY_BLOCK", 4)
    errors = np.concatenate(
        [(np.abs(depth - expected) / expected).ravel() for depth, expected in zip(bf16(images), stock)]
    )
    assert errors.max() < BF16_MAX_RELATIVE_ERROR and errors.mean() < BF16_MEAN_RELATIVE_ERROR
    assert errors.max() > 1e-4  # it did run in bf16: a precision of its own, not fp32's
    # Back to fp32's attention wherever blocked attention is not the faster one.
    bf16.dtype = None
    bf16.to("cpu")
    assert bf16.model.dtype == torch.float32 and bf16.model.backbone.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16"])
def test_batching_the_forward_does_not_change_the_depth(estimators, dtype_name):
    import torch

    # The relative estimator keeps the aspect ratio: 56x70 images reach it at 56x70, and its depth is median-relative.
    images = [Image.fromarray(scene(56, 70, seed)) for seed in range(4)]
    dtype = getattr(torch, dtype_name)
    per_image = MonocularDepthEstimator(estimators["relative"], device="cpu", dtype=dtype)
    assert per_image.forward_batch_size is None  # on CPU: one image per forward
    pixel_values = per_image.preprocess(images)
    expected = per_image.predict(pixel_values, [(56, 70)] * 4)
    for forward_batch_size in (4, 3):  # one forward of 4 (what accelerators run), and 3 + 1
        batched = MonocularDepthEstimator(
            estimators["relative"], device="cpu", dtype=dtype, forward_batch_size=forward_batch_size
        )
        for depth, reference in zip(batched.predict(pixel_values, [(56, 70)] * 4), expected):
            # rtol: where disparity nears 0 its inverse, the median-relative depth, magnifies kernel-order float noise.
            comparable = reference < 65.0
            np.testing.assert_array_equal(depth > 0, reference > 0)
            np.testing.assert_allclose(depth[comparable], reference[comparable], rtol=1e-3, atol=1e-5)
    with pytest.raises(ValueError, match="forward_batch_size"):
        MonocularDepthEstimator(estimators["relative"], forward_batch_size=0)


def test_auto_precision_is_bf16_where_the_hardware_computes_it(photos, estimators, tmp_path, monkeypatch):
    from training.make_rgbd_pairs import cli

    monkeypatch.setattr(cli, "cpu_has_native_bf16", lambda: True)
    assert cli.estimator_dtype("auto", "cpu") == torch.bfloat16
    assert cli.estimator_dtype("float32", "cpu") == torch.float32  # asked for: always as asked
    run_cli(photos, tmp_path / "pairs", estimators["metric"])
    assert json.loads((tmp_path / "pairs" / "generation.json").read_text())["estimator_dtype"] == "bfloat16"
    monkeypatch.setattr(cli, "cpu_has_native_bf16", lambda: False)
    assert cli.estimator_dtype("auto", "cpu") is None  # the estimator's own default there: fp32
    assert cli.estimator_dtype("auto", "cuda") is None  # and bf16 on CUDA


def test_cli_dtype_bfloat16(photos, estimators, metric_pairs, tmp_path):
    out_dir = tmp_path / "pairs"
    run_cli(photos, out_dir, estimators["metric"], "--dtype", "bfloat16")
    assert json.loads((out_dir / "generation.json").read_text())["estimator_dtype"] == "bfloat16"
    assert json.loads((metric_pairs[0] / "generation.json").read_text())["estimator_dtype"] == "float32"
    rows, fp32_rows = read_rows(out_dir), read_rows(metric_pairs[0])
    assert [row["source_id"] for row in rows] == [row["source_id"] for row in fp32_rows]
    errors = []
    for row, reference in zip(rows, fp32_rows):
        assert row["images"][0] == reference["images"][0]  # the same stored images
        depth, expected = decode_depth_png(first_depth(row)), decode_depth_png(first_depth(reference))
        errors.append((np.abs(depth - expected) / expected).ravel())
    errors = np.concatenate(errors)
    assert errors.max() < BF16_MAX_RELATIVE_ERROR and errors.mean() < BF16_MEAN_RELATIVE_ERROR
    assert errors.max() > 1e-3  # bf16's own precision, beyond the PNG's millimetres


# --------------------------------------------------------------------------------------------------------------
# Resuming and sharding across processes
# --------------------------------------------------------------------------------------------------------------
def test_resume_rewrites_only_missing_shards(metric_pairs, photos, estimators, tmp_path):
    out_dir = tmp_path / "pairs"
    shutil.copytree(metric_pairs[0], out_dir)
    before = read_rows(out_dir)
    mtimes = {shard: os.stat(shard_path(out_dir, shard)).st_mtime_ns for shard in range(NUM_SHARDS)}
    shard_path(out_dir, 1).unlink()
    # What a run killed while writing shard 1 leaves behind.
    leftover = shard_path(out_dir, 1).with_name(".shard-00001.parquet.tmp-12345")
    leftover.write_bytes(b"half a parquet file")
    time.sleep(0.01)  # a rewritten shard would then get a visibly newer mtime

    result = run_cli(photos, out_dir, estimators["metric"])

    assert result["shards_written"] == [1]
    assert not leftover.exists()
    for shard in (0, 2, 3):
        assert os.stat(shard_path(out_dir, shard)).st_mtime_ns == mtimes[shard]
    assert read_rows(out_dir) == before  # same rows, same bytes, same order
    assert len((out_dir / "skipped.jsonl").read_text().splitlines()) == len(BAD_IMAGES)

    # Nothing missing: nothing written.
    assert run_cli(photos, out_dir, estimators["metric"])["shards_written"] == []
    # Other settings would mix two kinds of shards: refused.
    with pytest.raises(SystemExit, match="max_side"):
        run_cli(photos, out_dir, estimators["metric"], "--max-side", "48")


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_every_shard_has_exactly_one_rank(world_size):
    num_shards = 7
    assigned = [shards_for_rank(num_shards, rank, world_size) for rank in range(world_size)]
    flat = [shard for shards in assigned for shard in shards]
    assert sorted(flat) == list(range(num_shards))
    assert len(set(flat)) == len(flat)
    if world_size == 2:
        assert assigned == [[0, 2, 4, 6], [1, 3, 5]]


@pytest.mark.slow
def test_accelerate_launch_two_processes(photos, estimators, metric_pairs, tmp_path):
    # `--multi_gpu` is what starts N processes (through torchrun); on a machine without GPUs they form a CPU group.
    # (`--cpu` would start a single process.)
    out_dir = tmp_path / "pairs"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "training.make_rgbd_pairs",
        "--input", str(photos), "--out", str(out_dir), "--estimator", estimators["metric"], "--num-workers", "0",
        "--shard-size", str(SHARD_SIZE), "--max-side", str(MAX_SIDE), "--max-pixels", str(MAX_PIXELS), "--no-progress",
    ]  # fmt: skip
    environment = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # two ranks on one GPU would clash in NCCL
    completed = subprocess.run(command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "rank 0/2" in completed.stderr and "rank 1/2" in completed.stderr
    rows = read_rows(out_dir)
    single_process = read_rows(metric_pairs[0])
    assert [row["source_id"] for row in rows] == [row["source_id"] for row in single_process]
    for row, reference in zip(rows, single_process):
        assert row["images"][0] == reference["images"][0]
        np.testing.assert_allclose(
            decode_depth_png(first_depth(row)), decode_depth_png(first_depth(reference)), atol=0.001
        )
    assert "| 14 | 10 | 4 | 4 / 4 | complete |" in (out_dir / "README.md").read_text()


def test_worker_processes_give_the_same_bytes(photos, estimators, metric_pairs, tmp_path):
    out_dir = tmp_path / "pairs"
    run_cli(photos, out_dir, estimators["metric"], "--num-workers", "2")
    assert read_rows(out_dir) == read_rows(metric_pairs[0])


# --------------------------------------------------------------------------------------------------------------
# Other inputs
# --------------------------------------------------------------------------------------------------------------
def test_saved_dataset_and_parquet_inputs(photos, estimators, metric_pairs, tmp_path):
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    names = ["rgb.png", "not_an_image.jpg", "gray.png"]
    features = Features({"caption": Value("string"), "picture": ImageFeature()})
    dataset = Dataset.from_dict(
        {"caption": names, "picture": [{"bytes": (photos / name).read_bytes(), "path": None} for name in names]},
        features=features,
    )
    dataset.save_to_disk(str(tmp_path / "saved"))
    dataset.to_parquet(str(tmp_path / "table.parquet"))
    by_name = {row["source_id"]: row for row in read_rows(metric_pairs[0])}
    for input_path in (tmp_path / "saved", tmp_path / "table.parquet"):
        out_dir = tmp_path / f"pairs_{input_path.stem}"
        result = run_cli(input_path, out_dir, estimators["metric"])  # the image column is found by its type
        rows = read_rows(out_dir)
        assert [row["source_id"] for row in rows] == ["0", "2"]
        assert result["totals"]["skipped_by_reason"] == {"unreadable": 1}
        # Same image, same stored bytes and depth as from the folder.
        assert rows[0]["images"][0] == by_name["rgb.png"]["images"][0]
        np.testing.assert_allclose(
            decode_depth_png(first_depth(rows[1])), decode_depth_png(first_depth(by_name["gray.png"])), atol=0.001
        )


def test_input_type_detection(photos, tmp_path):
    from training.make_rgbd_pairs import detect_input_type

    assert detect_input_type(str(photos)) == "folder"
    assert detect_input_type("some-user/some-dataset") == "hub"  # not a path: a hub id (not loaded here)
    with pytest.raises(SystemExit, match="does not exist"):
        detect_input_type(str(tmp_path / "missing" / "folder"))


# --------------------------------------------------------------------------------------------------------------
# Training-time loading and augmentation
# --------------------------------------------------------------------------------------------------------------
def coordinate_pair(height: int, width: int) -> tuple[Image.Image, np.ndarray]:
    """An image whose red/green channels hold 3x / 3y, and a depth map holding 1 + x + 100 y: all asymmetric."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([3 * x, 3 * y, np.full_like(x, 7)], -1).astype(np.uint8)
    depth = (1 + x + 100 * y).astype(np.float32)
    return Image.fromarray(rgb), depth


def test_horizontal_flip_moves_image_and_depth_together():
    image, depth = coordinate_pair(5, 8)
    flipped_image, flipped_depth = transform_rgbd_pair(image, depth, horizontal_flip=True, rotation_degrees=0)
    rgb = np.asarray(flipped_image)
    np.testing.assert_array_equal(rgb, np.asarray(image)[:, ::-1])
    np.testing.assert_array_equal(flipped_depth, depth[:, ::-1])
    # Each output pixel's image and depth come from the same source pixel.
    source_x, source_y = rgb[..., 0].astype(np.int64) // 3, rgb[..., 1].astype(np.int64) // 3
    np.testing.assert_array_equal(1 + source_x + 100 * source_y, flipped_depth)
    assert flipped_depth[0, 0] == 8  # source pixel (x=7, y=0)


def test_rotation_keeps_source_depths_and_marks_outside_invalid():
    image, depth = coordinate_pair(60, 60)
    rotated_image, rotated_depth = transform_rgbd_pair(image, depth, horizontal_flip=False, rotation_degrees=10)
    assert rotated_depth.shape == depth.shape and rotated_depth.dtype == np.float32
    valid = rotated_depth > 0
    assert np.isin(rotated_depth[valid], depth).all()  # nearest: only real values, none interpolated
    for corner in [(0, 0), (0, -1), (-1, 0), (-1, -1)]:  # rotated out of the frame
        assert rotated_depth[corner] == 0
        assert tuple(np.asarray(rotated_image)[corner]) == (0, 0, 0)
    assert 0.9 < valid.mean() < 1.0
    assert not np.array_equal(rotated_depth, depth)
    # Same geometry: away from the border, the (bilinear) image coordinate matches the (nearest) depth coordinate.
    rgb = np.asarray(rotated_image).astype(np.float32)
    source_x, source_y = (rotated_depth - 1) % 100, (rotated_depth - 1) // 100
    inner = np.zeros_like(valid)
    inner[8:-8, 8:-8] = True
    assert np.abs(rgb[..., 0][inner] / 3 - source_x[inner]).max() <= 1.0
    assert np.abs(rgb[..., 1][inner] / 3 - source_y[inner]).max() <= 1.0


def test_augmentation_is_reproducible_from_the_rng():
    image, depth = coordinate_pair(20, 30)
    first = augment_rgbd_pair(image, depth, np.random.default_rng(3))
    second = augment_rgbd_pair(image, depth, np.random.default_rng(3))
    np.testing.assert_array_equal(np.asarray(first[0]), np.asarray(second[0]))
    np.testing.assert_array_equal(first[1], second[1])


def test_rgbd_pairs_dataset(metric_pairs):
    out_dir, _ = metric_pairs
    stored = {row["source_id"]: row for row in read_rows(out_dir)}
    plain = RGBDPairs(out_dir)
    assert len(plain) == len(GOOD_IMAGES)
    for index in range(len(plain)):
        item = plain[index]
        row = stored[item.source_id]
        assert item.depth_is_metric is True
        np.testing.assert_array_equal(item.depth, decode_depth_png(first_depth(row)))
        np.testing.assert_array_equal(np.asarray(item.image), np.asarray(stored_image(row)))
        image, depth = load_rgbd_pair(row)
        np.testing.assert_array_equal(depth, item.depth)

    augmented = RGBDPairs(out_dir, augment=True, seed=0)
    first = [augmented[index].depth for index in range(len(augmented))]
    again = [augmented[index].depth for index in range(len(augmented))]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))  # (seed, epoch, index) fix the draw
    assert not all(np.array_equal(a, plain[index].depth) for index, a in enumerate(first))
    augmented.set_epoch(1)
    assert not all(np.array_equal(a, augmented[index].depth) for index, a in enumerate(first))
    for index, item in enumerate(augmented):
        assert item.depth.shape == (item.image.height, item.image.width)
        if index == 5:
            break

    # A subset by row index, flips only (what Stage 1 alignment reads): the same rows, mirrored or not.
    flipped = RGBDPairs(out_dir, indices=[3, 1], augment=True, seed=0, max_rotation_degrees=0)
    assert len(flipped) == 2
    for position, index in enumerate([3, 1]):
        item, reference = flipped[position], plain[index]
        assert item.source_id == reference.source_id
        assert np.array_equal(item.depth, reference.depth) or np.array_equal(item.depth, reference.depth[:, ::-1])


def test_an_older_pair_table_with_image_and_depth_columns_reads_the_same(metric_pairs):
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    rows = read_rows(metric_pairs[0])
    older = Dataset.from_dict(
        {
            "image": [row["images"][0] for row in rows],
            "depth": [first_depth(row) for row in rows],
            "source_id": [row["source_id"] for row in rows],
        },
        features=Features({"image": ImageFeature(), "depth": Value("binary"), "source_id": Value("string")}),
    )
    current, old = RGBDPairs(metric_pairs[0]), RGBDPairs(older)
    assert len(current) == len(old) == len(GOOD_IMAGES)
    for index in range(len(current)):
        assert current[index].source_id == old[index].source_id
        np.testing.assert_array_equal(current[index].depth, old[index].depth)
        np.testing.assert_array_equal(np.asarray(current[index].image), np.asarray(old[index].image))


def test_depth_of_another_resolution_is_transformed_with_its_image():
    """A sensor map at half the image's resolution (same aspect ratio) gets the same flip and rotation."""
    image, depth = coordinate_pair(40, 60)
    half = depth[::2, ::2]
    flipped_image, flipped_half = transform_rgbd_pair(image, half, horizontal_flip=True, rotation_degrees=0)
    np.testing.assert_array_equal(flipped_half, half[:, ::-1])
    _, rotated_full = transform_rgbd_pair(image, depth, horizontal_flip=False, rotation_degrees=10)
    _, rotated_half = transform_rgbd_pair(image, half, horizontal_flip=False, rotation_degrees=10)
    assert rotated_half.shape == half.shape
    # Same rotation of the scene: where both are valid, the half map's pixel holds (nearly) the full map's value there.
    inner = (slice(5, -5), slice(5, -5))
    full_at_half = rotated_full[::2, ::2][inner]
    both = (full_at_half > 0) & (rotated_half[inner] > 0)
    close = np.abs(full_at_half - rotated_half[inner])[both] <= 102  # within a pixel in x (1) and y (100)
    assert close.mean() > 0.95
    with pytest.raises(ValueError, match="aspect ratio"):
        transform_rgbd_pair(image, depth[:, :30], horizontal_flip=True, rotation_degrees=0)
