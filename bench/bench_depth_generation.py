"""Depth-pair generation throughput: a naive per-image `pipeline("depth-estimation")` loop vs make_rgbd_pairs.

    python -m bench.bench_depth_generation --images photos/ --num-images 512 --out bench/results/depth_gen_h100.json
    python -m bench.bench_depth_generation --random-real-size --synthetic-images --num-images 128 \
        --out bench/results/depth_generation_da_v2_small_h100.json   # offline, real-size model and photo sizes
    python -m bench.bench_depth_generation --tiny --out bench/results/depth_gen_tiny_cpu.json   # CI smoke, CPU
    OMP_NUM_THREADS=1 python -m bench.bench_depth_generation --random-real-size --synthetic-images --num-images 64 \
        --device cpu --dtypes float32 bfloat16 --naive-dtypes float32 bfloat16 \
        --out bench/results/depth_generation_da_v2_small_cpu_64.json

Both methods do the same job on the same images (the first `--num-images` of the folder, sorted): decode, downscale
to `--max-side`, predict depth at the image's resolution, encode it as a 16-bit PNG and write parquet.

* `naive`: `transformers.pipeline("depth-estimation", model=...)` called once per image, in the pipeline's default
  dtype (fp32), rows written to one parquet file at the end: what a first script usually looks like.
* `make_rgbd_pairs`: `python -m training.make_rgbd_pairs` run in-process, once per `--dtypes` entry (its `--dtype`;
  `auto` is bf16 on CUDA and on CPUs with bf16 dot products, fp32 on other CPUs): DataLoader workers decode and preprocess, the estimator runs batched per
  preprocessed shape on accelerators and one image per forward on CPU, depth PNGs are encoded in threads, shards are
  written as they complete.

Times are end to end, model loading included (what a user waits for); a warm-up run before both takes CUDA and
import start-up out of the comparison. Each row has its wall time (`seconds`) and its CPU time (`cpu_seconds`: user +
system of every thread and of the DataLoader workers): on a machine shared with other jobs the wall time includes
waiting for a core, and the CPU time is the work itself (make_rgbd_pairs' workers included, so it is no fairer to it). `--tiny` builds a tiny random DepthAnything and 16 small images offline: it
checks that the benchmark runs, its numbers say nothing about real throughput. `--synthetic-images` writes
`--num-images` photo-sized JPEGs (1024x768 to 1280x960, several aspect ratios) instead of reading `--images`: with
`--random-real-size` the whole benchmark runs offline at real cost. Nothing here asserts timings.

`--naive-dtypes float32 bfloat16` also times the naive loop in bf16: a make_rgbd_pairs run in bf16 then gets its
speed-up over it too (`speed_up_over_naive_same_dtype`), which separates what the implementation gains from what the
precision does. `ceiling.float32` says how far fp32 could get at best on the machine: the raw forward's FLOP rate
(FLOPs from torch's FlopCounterMode) against a 2048x2048 fp32 matmul timed in the same run, and the naive loop over the
raw forward alone, a bound no end-to-end fp32 run can beat without doing less arithmetic.

For every precision other than fp32, `depth_error_vs_float32` compares the estimator's stored depth (what
`MonocularDepthEstimator` returns) in that precision with fp32's, per pixel, on one of the images and on a rendered
scene of the world (structured: floor, walls, objects): the relative error's median, mean, 99th percentile and
maximum over the pixels valid in both, and the share of pixels valid in only one. With random weights the relative
map has pixels of near-zero disparity, whose depth (its inverse) magnifies any error: the median is the typical pixel.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.common import environment, print_table, save_random_depth_anything
from processing_depth import DEFAULT_DEPTH_ESTIMATOR, MonocularDepthEstimator
from training import make_rgbd_pairs
from training.depth_png import encode_depth_png
from training.make_rgbd_pairs.cli import ESTIMATOR_DTYPES, estimator_dtype
from training.tiny import save_tiny_depth_anything


TINY_NUM_IMAGES = 16
TINY_SIZES = [(120, 160), (160, 120), (96, 96), (150, 200)]  # (height, width): several aspect ratios
PHOTO_SIZES = [(768, 1024), (1024, 768), (960, 1280), (720, 1280)]  # (height, width): common camera/phone shapes
# The raw-forward ceiling on CPU runs this many images at most: a forward there takes seconds, and 8 give a steady rate.
CPU_RAW_IMAGES = 8


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


def cpu_seconds() -> float:
    """CPU time so far of this process (every thread) and of its ended children (DataLoader workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_naive(
    image_paths: list[Path], estimator: str, device: str, max_side: int, out_file: Path, dtype: str = "float32"
) -> tuple[float, float]:
    """The per-image pipeline loop in `dtype`; returns wall and CPU seconds, model loading included. Other than in fp32
    it calls the pipeline's preprocess, forward and postprocess itself, which is what its bf16 output needs."""
    from datasets import Dataset
    from transformers import pipeline

    start, start_cpu = time.perf_counter(), cpu_seconds()
    depth_pipeline = pipeline("depth-estimation", model=estimator, device=device, dtype=getattr(torch, dtype))
    rows = []
    for path in image_paths:
        image = Image.open(path).convert("RGB")
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        if dtype == "float32":
            depth = depth_pipeline(image)["predicted_depth"].float().cpu().numpy()  # already at the image's (H, W)
        else:
            # The pipeline's own steps, with its output cast to fp32 first: its postprocess calls `.numpy()` on the
            # predicted depth, which fails on a bf16 tensor (transformers 5.24).
            outputs = depth_pipeline.forward(depth_pipeline.preprocess(image))
            outputs["predicted_depth"] = outputs["predicted_depth"].float()
            depth = depth_pipeline.postprocess(outputs)["predicted_depth"].cpu().numpy()
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        rows.append({"image": buffer.getvalue(), "depth": encode_depth_png(depth)})
    Dataset.from_list(rows).to_parquet(str(out_file))
    return time.perf_counter() - start, cpu_seconds() - start_cpu


def run_batched(
    images: Path, num_images: int, estimator: str, device: str, dtype: str, args, out_dir: Path
) -> tuple[float, float, dict, str]:
    """make_rgbd_pairs end to end; returns wall and CPU seconds (model loading included), its summary and the dtype it
    ran in."""
    argv = [
        "--input", str(images), "--out", str(out_dir), "--estimator", estimator, "--device", device,
        "--dtype", dtype, "--max-images", str(num_images), "--batch-size", str(args.batch_size),
        "--num-workers", str(args.num_workers), "--shard-size", str(args.shard_size), "--max-side", str(args.max_side),
        "--no-progress",
    ]  # fmt: skip
    start, start_cpu = time.perf_counter(), cpu_seconds()
    summary = make_rgbd_pairs.main(argv)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - start_cpu
    return seconds, cpu, summary, json.loads((out_dir / "generation.json").read_text())["estimator_dtype"]


def make_estimator(estimator: str, device: str, dtype: str, batch_size: int) -> MonocularDepthEstimator:
    """The estimator as make_rgbd_pairs builds it for `--dtype dtype`."""
    return MonocularDepthEstimator(
        estimator, device=device, batch_size=batch_size, dtype=estimator_dtype(dtype, device)
    )


def run_raw_model(
    estimator: MonocularDepthEstimator, batch_size: int, num_images: int, shape: tuple[int, int]
) -> float:
    """The estimator's forward alone on ready tensors (no decode, resize or write): the ceiling for the others. It runs
    as `predict` runs it: its dtype and attention, a whole batch per forward on accelerators and one image on CPU."""
    model = estimator.model
    device = model.device
    forward_batch = batch_size if device.type != "cpu" else 1
    if device.type == "cpu":
        num_images = min(num_images, CPU_RAW_IMAGES)
    pixels = torch.randn(forward_batch, 3, *shape, device=device, dtype=model.dtype)
    forwards = max(1, num_images // forward_batch)
    with torch.inference_mode():
        model(pixel_values=pixels)  # warm-up: kernels, allocator
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(forwards):
            model(pixel_values=pixels)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return forwards * forward_batch / (time.perf_counter() - start)


def forward_flops(estimator: MonocularDepthEstimator, shape: tuple[int, int]) -> int:
    """FLOPs of one image's forward at `shape` (matmuls, convolutions and attention, as torch's FlopCounterMode counts
    them)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = estimator.model
    pixels = torch.randn(1, 3, *shape, device=model.device, dtype=model.dtype)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(pixel_values=pixels)
    return counter.get_total_flops()


def matmul_rate(device: str, dtype: torch.dtype = torch.float32, size: int = 2048, seconds: float = 1.0) -> float:
    """FLOP/s of a large square matmul on `device`: what this machine's GEMMs reach in `dtype`, measured here."""
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    torch.mm(a, b)  # warm-up
    synchronize = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    synchronize()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        calls += 1
    synchronize()
    return calls * 2 * size**3 / (time.perf_counter() - start)


def float32_ceiling(
    estimator: MonocularDepthEstimator,
    raw_images_per_s: float,
    shape: tuple[int, int],
    naive_seconds: float,
    num_images: int,
    device: str,
) -> dict:
    """How far any fp32 implementation could get: the raw forward's FLOP rate against this machine's own fp32 GEMM
    rate, and the naive loop over the raw forward alone (no decode, resize or write: no end-to-end run can beat it
    without less arithmetic or a lower precision)."""
    flops = forward_flops(estimator, shape)
    forward_rate, gemm_rate = flops * raw_images_per_s, matmul_rate(device)
    return {
        "forward_gflop": flops / 1e9,
        "forward_gflop_per_s": forward_rate / 1e9,
        "matmul_2048_gflop_per_s": gemm_rate / 1e9,
        "forward_share_of_matmul_rate": forward_rate / gemm_rate,
        "best_possible_speed_up_over_naive": naive_seconds / (num_images / raw_images_per_s),
    }


def structured_image(height: int, width: int) -> Image.Image:
    """A rendered scene of the world: the structured input of the precision comparison."""
    from training import world

    return Image.fromarray(world.render(world.sample_scene("train", 0, 0), width, height).rgb)


def depth_error(depth: np.ndarray, reference: np.ndarray) -> dict:
    """Per-pixel relative error of `depth` against `reference` (both the estimator's stored depth, 0 = invalid)."""
    both_valid = (depth > 0) & (reference > 0)
    relative = np.abs(depth[both_valid] - reference[both_valid]) / reference[both_valid]
    return {
        "median_relative_error": float(np.median(relative)),
        "mean_relative_error": float(relative.mean()),
        "p99_relative_error": float(np.quantile(relative, 0.99)),
        "max_relative_error": float(relative.max()),
        "validity_differs_share": float(((depth > 0) != (reference > 0)).mean()),
    }


def precision_errors(estimator: str, device: str, dtype: str, images: dict[str, Image.Image]) -> dict:
    """`depth_error` of `dtype`'s depth against fp32's on the same device, per named image."""
    low, reference = make_estimator(estimator, device, dtype, 1), make_estimator(estimator, device, "float32", 1)
    return {name: depth_error(low([image])[0], reference([image])[0]) for name, image in images.items()}


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
    parser.add_argument(
        "--dtypes",
        nargs="+",
        choices=ESTIMATOR_DTYPES,
        default=["auto"],
        help="make_rgbd_pairs --dtype values to time, each against the same naive loop",
    )
    parser.add_argument(
        "--naive-dtypes",
        nargs="+",
        choices=ESTIMATOR_DTYPES[1:],
        default=["float32"],
        help="precisions of the naive loop (the first is the one every speed-up is over: fp32, the pipeline's default); "
        "a make_rgbd_pairs run in another of them also gets its speed-up over the naive loop in its own precision",
    )
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
        naive = {
            dtype: run_naive(
                image_paths, estimator, args.device, args.max_side, work_dir / f"naive_{dtype}.parquet", dtype
            )
            for dtype in args.naive_dtypes
        }
        naive_s, naive_cpu_s = naive[args.naive_dtypes[0]]
        ours, raw, ceiling = [], [], {}
        # Photos of 4:3 reach the estimator as 518 x 686 (short side 518, multiples of 14), as the processor sizes them.
        raw_shape = (56, 56) if args.tiny else (518, 686)
        for dtype in args.dtypes:
            seconds, cpu, summary, ran_in = run_batched(
                images, num_images, estimator, args.device, dtype, args, work_dir / f"batched_{dtype}"
            )
            ours.append(
                {
                    "method": "make_rgbd_pairs",
                    "dtype": ran_in,
                    "seconds": seconds,
                    "images_per_s": num_images / seconds,
                    "speed_up_over_naive": naive_s / seconds,
                    "cpu_seconds": cpu,
                    "cpu_speed_up_over_naive": naive_cpu_s / cpu,
                    "generation_seconds": summary["seconds"],  # without model loading and set-up
                    "generation_images_per_s": num_images / summary["seconds"],
                    "skipped": summary["skipped"],
                }
            )
            raw_estimator = make_estimator(estimator, args.device, dtype, args.batch_size)
            raw_images_per_s = run_raw_model(raw_estimator, args.batch_size, num_images, raw_shape)
            raw.append(
                {
                    "method": f"raw model forward {raw_shape[0]}x{raw_shape[1]}",
                    "dtype": ran_in,
                    "seconds": num_images / raw_images_per_s,
                    "images_per_s": raw_images_per_s,
                }
            )
            # End-to-end generation (model loading excluded) over the model's own throughput in the same precision.
            ours[-1]["generation_share_of_raw_model"] = ours[-1]["generation_images_per_s"] / raw_images_per_s
            if ran_in in naive and ran_in != args.naive_dtypes[0]:
                # What the implementation adds beyond the precision: the naive loop run in the same one.
                ours[-1]["speed_up_over_naive_same_dtype"] = naive[ran_in][0] / seconds
            if ran_in == "float32" and "float32" not in ceiling:
                ceiling["float32"] = float32_ceiling(
                    raw_estimator, raw_images_per_s, raw_shape, naive_s, num_images, args.device
                )
        error_images = {
            "photo": Image.open(image_paths[0]).convert("RGB"),
            "rendered scene": structured_image(*TINY_SIZES[0] if args.tiny else PHOTO_SIZES[0]),
        }
        errors = {
            row["dtype"]: precision_errors(estimator, args.device, dtype, error_images)
            for dtype, row in zip(args.dtypes, ours)
            if row["dtype"] != "float32"
        }
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)

    results = [
        *(
            {
                "method": "naive pipeline loop",
                "dtype": dtype,
                "seconds": seconds,
                "images_per_s": num_images / seconds,
                "cpu_seconds": cpu,
            }
            for dtype, (seconds, cpu) in naive.items()
        ),
        *ours,
        *raw,
    ]
    print(f"{num_images} images")
    print_table(results, ["method", "dtype", "seconds", "images_per_s", "speed_up_over_naive", "cpu_seconds"])
    for row in ours:
        print(
            f"make_rgbd_pairs in {row['dtype']}: {row['speed_up_over_naive']:.2f}x the naive loop "
            f"({row['cpu_speed_up_over_naive']:.2f}x in CPU time); model loading excluded it runs at "
            f"{row['generation_share_of_raw_model']:.0%} of the raw model's throughput"
        )
    for row in ours:
        if "speed_up_over_naive_same_dtype" in row:
            print(
                f"make_rgbd_pairs in {row['dtype']}: {row['speed_up_over_naive_same_dtype']:.2f}x the naive loop in {row['dtype']}"
            )
    if "float32" in ceiling:
        fp32 = ceiling["float32"]
        print(
            f"fp32 ceiling: the forward ({fp32['forward_gflop']:.0f} GFLOP) runs at {fp32['forward_gflop_per_s']:.0f} "
            f"GFLOP/s, {fp32['forward_share_of_matmul_rate']:.0%} of a 2048^2 matmul's {fp32['matmul_2048_gflop_per_s']:.0f}; "
            f"the raw forward alone is {fp32['best_possible_speed_up_over_naive']:.2f}x the naive loop"
        )
    for dtype, by_image in errors.items():
        for name, error in by_image.items():
            print(
                f"{dtype} vs float32 on the {name}: relative depth error median {error['median_relative_error']:.2%}, "
                f"mean {error['mean_relative_error']:.2%}, p99 {error['p99_relative_error']:.2%}"
            )

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
        # The fastest make_rgbd_pairs run over the naive loop, each timed in this same run.
        "speed_up": max(row["speed_up_over_naive"] for row in ours),
        "depth_error_vs_float32": errors,
        # What fp32 could reach at best on this machine (absent when no make_rgbd_pairs run was in fp32).
        "ceiling": ceiling,
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        **{key: environment()[key] for key in ("torch", "transformers", "threads")},  # threads: torch's intra-op
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
