"""Depth-pair generation throughput: a naive per-image `pipeline("depth-estimation")` loop vs make_rgbd_pairs.

    python -m bench.bench_depth_generation --images photos/ --num-images 512 --out bench/results/depth_gen_h100.json
    python -m bench.bench_depth_generation --random-real-size --synthetic-images --num-images 128 \
        --out bench/results/depth_generation_da_v2_small_h100.json   # offline, real-size model and photo sizes
    python -m bench.bench_depth_generation --tiny --out bench/results/depth_gen_tiny_cpu.json   # CI smoke, CPU

Both methods do the same job on the same images (the first `--num-images` of the folder, sorted): decode, downscale
to `--max-side`, predict depth at the image's resolution, encode it as a 16-bit PNG and write parquet.

* `naive`: `transformers.pipeline("depth-estimation", model=...)` called once per image, in the pipeline's default
  dtype (fp32), rows written to one parquet file at the end: what a first script usually looks like.
* `make_rgbd_pairs`: `python -m training.make_rgbd_pairs` run in-process: DataLoader workers decode and preprocess,
  the estimator runs batched per preprocessed shape (bf16 on CUDA), depth PNGs are encoded in threads, shards are
  written as they complete.

Times are end to end, model loading included (what a user waits for); a warm-up run before both takes CUDA and
import start-up out of the comparison. `--tiny` builds a tiny random DepthAnything and 16 small images offline: it
checks that the benchmark runs, its numbers say nothing about real throughput. `--synthetic-images` writes
`--num-images` photo-sized JPEGs (1024x768 to 1280x960, several aspect ratios) instead of reading `--images`: with
`--random-real-size` the whole benchmark runs offline at real cost. Nothing here asserts timings.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.common import print_table, save_random_depth_anything
from processing_depth import DEFAULT_DEPTH_ESTIMATOR
from training import make_rgbd_pairs
from training.depth_png import encode_depth_png
from training.tiny import save_tiny_depth_anything


TINY_NUM_IMAGES = 16
TINY_SIZES = [(120, 160), (160, 120), (96, 96), (150, 200)]  # (height, width): several aspect ratios
PHOTO_SIZES = [(768, 1024), (1024, 768), (960, 1280), (720, 1280)]  # (height, width): common camera/phone shapes


def make_tiny_inputs(folder: Path) -> tuple[str, Path]:
    """A tiny random estimator and TINY_NUM_IMAGES small JPEG/PNG images, built offline."""
    estimator = save_tiny_depth_anything(folder / "estimator", metric=False, keep_aspect_ratio=True)
    images = folder / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for index in range(TINY_NUM_IMAGES):
        height, width = TINY_SIZES[index % len(TINY_SIZES)]
        y, x = np.mgrid[0:height, 0:width]
        rgb = np.stack([x * 255 // width, y * 255 // height, rng.integers(0, 256, (height, width))], -1)
        extension = "jpg" if index % 2 else "png"
        Image.fromarray(rgb.astype(np.uint8)).save(images / f"image_{index:03d}.{extension}")
    return str(estimator), images


def make_synthetic_photos(folder: Path, num_images: int) -> Path:
    """`num_images` photo-sized JPEGs (smooth gradients plus noise, so they decode and compress like photos)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(num_images):
        height, width = PHOTO_SIZES[index % len(PHOTO_SIZES)]
        y, x = np.mgrid[0:height, 0:width]
        base = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], -1)
        rgb = np.clip(base + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(rgb).save(folder / f"photo_{index:04d}.jpg", quality=90)
    return folder


def run_naive(image_paths: list[Path], estimator: str, device: str, max_side: int, out_file: Path) -> float:
    """The per-image pipeline loop; returns seconds, model loading included."""
    from datasets import Dataset
    from transformers import pipeline

    start = time.perf_counter()
    depth_pipeline = pipeline("depth-estimation", model=estimator, device=device)
    rows = []
    for path in image_paths:
        image = Image.open(path).convert("RGB")
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        depth = depth_pipeline(image)["predicted_depth"].float().cpu().numpy()  # already at the image's (H, W)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        rows.append({"image": buffer.getvalue(), "depth": encode_depth_png(depth)})
    Dataset.from_list(rows).to_parquet(str(out_file))
    return time.perf_counter() - start


def run_batched(images: Path, num_images: int, estimator: str, device: str, args, out_dir: Path) -> tuple[float, dict]:
    """make_rgbd_pairs end to end; returns seconds (model loading included) and its summary."""
    argv = [
        "--input", str(images), "--out", str(out_dir), "--estimator", estimator, "--device", device,
        "--max-images", str(num_images), "--batch-size", str(args.batch_size), "--num-workers", str(args.num_workers),
        "--shard-size", str(args.shard_size), "--max-side", str(args.max_side), "--no-progress",
    ]  # fmt: skip
    start = time.perf_counter()
    summary = make_rgbd_pairs.main(argv)
    return time.perf_counter() - start, summary


def run_raw_model(estimator: str, device: str, batch_size: int, num_images: int, shape: tuple[int, int]) -> float:
    """The estimator's forward alone on ready tensors (no decode, resize or write): the ceiling for the others."""
    from transformers import DepthAnythingForDepthEstimation

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = DepthAnythingForDepthEstimation.from_pretrained(estimator, dtype=dtype).to(device).eval()
    pixels = torch.randn(batch_size, 3, *shape, device=device, dtype=dtype)
    batches = max(1, num_images // batch_size)
    with torch.inference_mode():
        model(pixel_values=pixels)  # warm-up: kernels, allocator
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(batches):
            model(pixel_values=pixels)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    return batches * batch_size / (time.perf_counter() - start)


def warm_up(image_path: Path, estimator: str, device: str) -> None:
    from transformers import pipeline

    pipeline("depth-estimation", model=estimator, device=device)(Image.open(image_path).convert("RGB"))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=None, help="image folder (required unless --tiny)")
    parser.add_argument("--estimator", default=DEFAULT_DEPTH_ESTIMATOR)
    parser.add_argument(
        "--random-real-size",
        action="store_true",
        help="use Depth-Anything-V2-Small's real config with random weights (offline; same cost as the checkpoint)",
    )
    parser.add_argument("--num-images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=None, help="make_rgbd_pairs workers (default 4; tiny 2)")
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--max-side", type=int, default=1024)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="smoke mode: tiny random model, 16 generated images")
    parser.add_argument(
        "--synthetic-images",
        action="store_true",
        help="generate --num-images photo-sized JPEGs instead of reading --images (offline runs)",
    )
    parser.add_argument("--out", default=None, help="JSON file for the results")
    args = parser.parse_args(argv)
    if args.num_workers is None:
        args.num_workers = 2 if args.tiny else 4

    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    work_dir = Path(tempfile.mkdtemp(prefix="bench_depth_"))
    try:
        if args.tiny:
            estimator, images = make_tiny_inputs(work_dir)
            num_images = TINY_NUM_IMAGES
        else:
            if args.synthetic_images:
                args.images = make_synthetic_photos(work_dir / "photos", args.num_images)
            if args.images is None:
                parser.error("--images is required (or use --tiny or --synthetic-images)")
            estimator, images, num_images = args.estimator, args.images, args.num_images
            if args.random_real_size:
                estimator = save_random_depth_anything(work_dir / "depth_anything_v2_small_random")
        source_ids = make_rgbd_pairs.ImageFolderSource(images).source_ids[:num_images]
        num_images = len(source_ids)
        image_paths = [images / source_id for source_id in source_ids]

        warm_up(image_paths[0], estimator, args.device)
        naive_s = run_naive(image_paths, estimator, args.device, args.max_side, work_dir / "naive.parquet")
        batched_s, summary = run_batched(images, num_images, estimator, args.device, args, work_dir / "batched")
        # Photos of 4:3 reach the estimator as 518 x 686 (short side 518, multiples of 14), as the processor sizes them.
        raw_shape = (56, 56) if args.tiny else (518, 686)
        raw_images_per_s = run_raw_model(estimator, args.device, args.batch_size, num_images, raw_shape)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)

    results = [
        {
            "method": "naive pipeline loop",
            "dtype": "float32",
            "seconds": naive_s,
            "images_per_s": num_images / naive_s,
        },
        {
            "method": "make_rgbd_pairs",
            "dtype": "bfloat16" if args.device.startswith("cuda") else "float32",
            "seconds": batched_s,
            "images_per_s": num_images / batched_s,
            "generation_seconds": summary["seconds"],  # without model loading and set-up
            "generation_images_per_s": num_images / summary["seconds"],
            "skipped": summary["skipped"],
        },
        {
            "method": f"raw model forward {raw_shape[0]}x{raw_shape[1]}",
            "dtype": "bfloat16" if args.device.startswith("cuda") else "float32",
            "seconds": num_images / raw_images_per_s,
            "images_per_s": raw_images_per_s,
        },
    ]
    # The goal's ratio: end-to-end generation (model loading excluded) over the model's own throughput.
    share_of_raw = results[1]["generation_images_per_s"] / raw_images_per_s
    speed_up = naive_s / batched_s
    print(f"{num_images} images")
    print_table(results, ["method", "dtype", "seconds", "images_per_s"])
    print(f"speed-up of make_rgbd_pairs over the naive loop: {speed_up:.2f}x")
    print(f"make_rgbd_pairs (model loading excluded) runs at {share_of_raw:.0%} of the raw model's throughput")

    report = {
        "benchmark": "depth pair generation, end to end (model loading included)",
        "tiny": args.tiny,
        "estimator": "tiny random DepthAnything"
        if args.tiny
        else ("Depth-Anything-V2-Small config, random weights" if args.random_real_size else args.estimator),
        "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"cpu x{os.cpu_count()}",
        "num_images": num_images,
        "synthetic_images": bool(args.synthetic_images and not args.tiny),
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "max_side": args.max_side,
        "results": results,
        "speed_up": speed_up,
        "generation_share_of_raw_model": share_of_raw,
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
