"""The command line, `python -m training.make_rgbd_pairs` (usage, inputs and outputs: the package docstring)."""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import torch

from processing_depth import DEFAULT_DEPTH_ESTIMATOR, MonocularDepthEstimator
from training.make_rgbd_pairs.card import write_card
from training.make_rgbd_pairs.estimation import DecodeAndPreprocess, depth_encoding_name, generate_shards
from training.make_rgbd_pairs.images import DEFAULT_MAX_PIXELS
from training.make_rgbd_pairs.measured import (
    DEPTH_SCALE_PRESETS,
    FLOAT_METRES,
    SENSOR_ESTIMATOR,
    DepthScale,
    parse_depth_scale,
)
from training.make_rgbd_pairs.shards import FORMAT_VERSION, num_shards_for, run_shard_job
from training.make_rgbd_pairs.sources import (
    DEFAULT_DEPTH_COLUMN,
    DEFAULT_DEPTH_DIR,
    INPUT_TYPES,
    RGB_DIR_NAMES,
    TABLE_INPUT_TYPES,
    detect_input_type,
    open_source,
)


PROBE_ITEMS = 16
ESTIMATOR_DTYPES = ("auto", "float32", "bfloat16")  # auto: the estimator's default for its device
# Skips that say the depth (or the way it is read) is off: when most probed pairs have one, the settings are wrong, not
# a file here and there.
SETTINGS_REASONS = (
    "negative_depth",
    "no_valid_depth",
    "implausible_depth",
    "depth_not_16bit",
    "unreadable_depth",
    "read_error",
)
SCALE_HINT = (
    "1000 for millimetres (NYU, ScanNet, ARKitScenes), 5000 for TUM, 256 for KITTI, or a preset "
    f"({', '.join(DEPTH_SCALE_PRESETS)})"
)


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    # The package docstring is the stage's overview; its first paragraph is the summary `--help` shows. `prog`, since
    # argparse would name the program after the file that runs it, `__main__.py`.
    summary = sys.modules[__package__].__doc__.split("\n\n")[0]
    parser = argparse.ArgumentParser(
        prog=prog or f"python -m {__package__}",
        description=summary,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--input", required=True, help="image folder, rgb/+depth/ folder, NYU .mat, dataset folder, parquet or hub id"
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder (rerun the same command to resume)")
    parser.add_argument(
        "--estimator", default=DEFAULT_DEPTH_ESTIMATOR, help="DepthAnything id/folder for inputs without depth"
    )
    parser.add_argument("--input-type", choices=INPUT_TYPES, default="auto")
    parser.add_argument("--split", default="train", help="split of a dataset input")
    parser.add_argument(
        "--image-column", default=None, help="image column / .mat dataset (default: detected / images)"
    )
    parser.add_argument(
        "--depth-column", default=None, help="measured depth column / .mat dataset (default: none, estimated / depths)"
    )
    parser.add_argument(
        "--depth-scale",
        type=parse_depth_scale,
        default=None,
        help=f"measured depth's stored units per metre, or one of {', '.join(DEPTH_SCALE_PRESETS)} (integer depth)",
    )
    parser.add_argument("--rgb-dir", default=None, help=f"rgb subfolder name (default: {'/'.join(RGB_DIR_NAMES)})")
    parser.add_argument("--depth-dir", default=None, help=f"depth subfolder name (default: {DEFAULT_DEPTH_DIR})")
    parser.add_argument("--batch-size", type=int, default=32, help="images per estimator batch")
    parser.add_argument("--num-workers", type=int, default=4, help="DataLoader workers reading and decoding pairs")
    parser.add_argument("--shard-size", type=int, default=1000, help="input items per parquet shard")
    parser.add_argument("--max-items", "--max-images", type=int, default=None, help="only the first N inputs (sorted)")
    parser.add_argument("--max-side", type=int, default=1024, help="images are downscaled to this longer side")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="larger input images are skipped")
    parser.add_argument("--device", default=None, help="estimator device (default: this process's accelerator)")
    parser.add_argument(
        "--dtype",
        choices=ESTIMATOR_DTYPES,
        default="auto",
        help="estimator precision (auto: bf16 on CUDA and on CPUs with bf16 dot products (AVX512-BF16, AMX), about 2x "
        "faster there than fp32 with a median 1%% depth difference; fp32 on other CPUs)",
    )
    parser.add_argument("--encode-threads", type=int, default=4, help="threads encoding depth PNGs")
    parser.add_argument("--license", default="other", help="license id for the dataset card")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)
    for name in ("batch_size", "shard_size", "max_side"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.num_workers < 0:
        parser.error("--num-workers must be >= 0")
    return args


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 dot products in hardware (AVX512-BF16 or AMX tiles)."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def estimator_dtype(name: str, device: str | torch.device = "cpu") -> torch.dtype | None:
    """`--dtype` as `MonocularDepthEstimator` takes it on `device` (`None`: the estimator's own default, bf16 on CUDA
    and fp32 elsewhere).

    `auto` is bf16 wherever the hardware computes it natively: CUDA, and CPUs with bf16 dot products, where it makes
    the job 2.5x the naive fp32 loop and fp32 cannot reach 1.5x (its raw forward alone is 1.35x;
    `bench/results/depth_generation_da_v2_small_cpu_64.json`). Pair generation makes training data, and bf16 moves a
    pixel's depth by a median 1% (same file), well inside an estimator's own error. `float32` keeps full precision.
    """
    if name != "auto":
        return getattr(torch, name)
    if torch.device(device).type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def distributed_state():
    """This process's rank and world size (1 process without a launcher), from `accelerate.PartialState`."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    # PartialState forms a CPU (gloo) process group only when told to run on CPU; without this, processes launched on
    # a machine with no accelerator would each believe they are alone and all write every shard.
    use_cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.accelerator.is_available()
    return PartialState(cpu=use_cpu)


def probe_depth_settings(source, depth_scale: DepthScale | None, max_side: int, max_pixels: int, num_items: int):
    """Stop before any work when most of the first pairs are unusable for a reason that points at the settings (a
    wrong scale, column or sign convention) rather than at a file here and there, instead of writing a dataset of
    skips. That catches unit mistakes (metres read as millimetres, a 1000 scale given as 1), though not a 1000 vs
    5000 mix-up, whose depths are both plausible."""
    from training.make_rgbd_pairs.estimation import WorkItem

    items = [WorkItem(0, index, index, source.source_ids[index]) for index in range(min(num_items, PROBE_ITEMS))]
    probed = DecodeAndPreprocess(source, items, None, max_side, max_pixels, depth_scale)
    results = [probed[k] for k in range(len(items))]
    telling = [result["skip"] for result in results if result.get("skip", {}).get("reason") in SETTINGS_REASONS]
    if 2 * len(telling) > len(results):
        examples = "\n".join(
            f"  {items[k].source_id}: {result['skip']['reason']}: {result['skip']['detail']}"
            for k, result in enumerate(results)
            if result.get("skip", {}).get("reason") in SETTINGS_REASONS
        )
        raise SystemExit(
            f"{len(telling)} of the first {len(results)} pairs have unusable depth, for example:\n{examples}\nCheck "
            f"--depth-scale (integer depth: {SCALE_HINT}; float depth is metres unless a scale is given) and "
            "--depth-column."
        )


def main(argv: list[str] | None = None, measured_only: bool = False, prog: str | None = None) -> dict:
    """Run the CLI; returns this process's counts (plus the card's totals on the main process).

    `measured_only`: the input must bring its own depth (`python -m training.ingest_sensor`): a folder is read as
    rgb/ + depth/ pairs and a dataset's depth column defaults to `depth`; nothing is estimated.
    """
    args = parse_args(argv, prog)
    state = distributed_state()
    out_dir: Path = args.out
    input_type, depth_column = args.input_type, args.depth_column
    if measured_only:
        if input_type == "auto":
            input_type = detect_input_type(args.input, args.rgb_dir, args.depth_dir)
        input_type = "pairs" if input_type == "folder" else input_type
        if input_type in TABLE_INPUT_TYPES:
            depth_column = depth_column or DEFAULT_DEPTH_COLUMN
    source = open_source(
        args.input, input_type, args.split, args.image_column, depth_column, args.rgb_dir, args.depth_dir
    )
    num_items = len(source) if args.max_items is None else min(len(source), args.max_items)
    if num_items == 0:
        raise SystemExit(f"No images found in {args.input}.")
    info = {
        "format_version": FORMAT_VERSION,
        "input": str(args.input),
        "input_description": source.description,
        "input_format": source.input_format,
        "input_reading": source.reading,
        "shard_size": args.shard_size,
        "max_side": args.max_side,
        "max_pixels": args.max_pixels,
        "num_items": num_items,
        "num_shards": num_shards_for(num_items, args.shard_size),
        # The shard slices are only stable while the sorted input list is: a changed folder must not mix in.
        "items_sha256": hashlib.sha256("\n".join(source.source_ids[:num_items]).encode()).hexdigest(),
    }
    if source.provides_depth:
        if args.depth_scale is None and not source.depth_is_float:
            raise SystemExit(
                f"{source.description} stores integer depth (16-bit PNGs, integer arrays), which has no unit of its "
                f"own: pass --depth-scale (units per metre: {SCALE_HINT}). Float depth is metres."
            )
        # Every rank probes: they all stop together, before any barrier.
        probe_depth_settings(source, args.depth_scale, args.max_side, args.max_pixels, num_items)
        estimator = None
        info.update(
            estimator=SENSOR_ESTIMATOR,
            depth_is_metric=True,
            depth_encoding=depth_encoding_name(True),
            depth_scale=(args.depth_scale or FLOAT_METRES).describe(),
        )
    else:
        if args.depth_scale is not None:
            raise SystemExit(
                f"--depth-scale applies to measured depth, and {source.description} has none: its depth is estimated "
                "(give a dataset's depth column with --depth-column, or an rgb/ + depth/ folder)."
            )
        estimator = MonocularDepthEstimator(
            args.estimator,
            device=args.device or state.device,
            batch_size=args.batch_size,
            dtype=estimator_dtype(args.dtype, args.device or state.device),
        )
        is_metric = estimator.is_metric  # loads the model now: a wrong --estimator fails before any work
        info.update(
            estimator=args.estimator,
            # Provenance (the first run's), not a resume setting: another precision gives the same estimate to ~1%.
            estimator_dtype=str(estimator.model.dtype).removeprefix("torch."),
            depth_is_metric=is_metric,
            depth_encoding=depth_encoding_name(is_metric),
        )

    def write_pending(pending: list[int], rank_name: str) -> dict:
        return generate_shards(
            source,
            pending,
            num_items,
            estimator,
            out_dir,
            args.shard_size,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            max_side=args.max_side,
            max_pixels=args.max_pixels,
            encode_threads=args.encode_threads,
            progress=args.progress and state.is_local_main_process,
            description=f"{rank_name}RGB-D pairs",
            depth_scale=args.depth_scale,
        )

    return run_shard_job(state, out_dir, info, write_pending, lambda: write_card(out_dir, info, args.license), "pair")
