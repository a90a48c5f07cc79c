"""The command line, `python -m training.make_rgbd_pairs` (usage, inputs and outputs: the package docstring)."""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import torch

from processing_depth import DEFAULT_DEPTH_ESTIMATOR, MonocularDepthEstimator
from training.make_rgbd_pairs.card import write_card
from training.make_rgbd_pairs.estimation import depth_encoding_name, generate_shards
from training.make_rgbd_pairs.images import DEFAULT_MAX_PIXELS
from training.make_rgbd_pairs.shards import FORMAT_VERSION, num_shards_for, run_shard_job
from training.make_rgbd_pairs.sources import open_source


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    # The package docstring is the stage's overview; its first paragraph is the summary `--help` shows. `prog`, since
    # argparse would name the program after the file that runs it, `__main__.py`.
    summary = sys.modules[__package__].__doc__.split("\n\n")[0]
    parser = argparse.ArgumentParser(
        prog=f"python -m {__package__}", description=summary, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input", required=True, help="image folder, dataset folder, parquet file(s) or hub id")
    parser.add_argument("--out", required=True, type=Path, help="output folder (rerun the same command to resume)")
    parser.add_argument("--estimator", default=DEFAULT_DEPTH_ESTIMATOR, help="DepthAnything checkpoint id or folder")
    parser.add_argument("--input-type", choices=("auto", "folder", "disk", "parquet", "hub"), default="auto")
    parser.add_argument("--split", default="train", help="split of a dataset input")
    parser.add_argument("--image-column", default=None, help="image column of a dataset input (default: detected)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=4, help="DataLoader workers decoding images")
    parser.add_argument("--shard-size", type=int, default=1000, help="input images per parquet shard")
    parser.add_argument("--max-images", type=int, default=None, help="only the first N input images (sorted)")
    parser.add_argument("--max-side", type=int, default=1024, help="images are downscaled to this longer side")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="larger input images are skipped")
    parser.add_argument("--device", default=None, help="estimator device (default: this process's accelerator)")
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


def distributed_state():
    """This process's rank and world size (1 process without a launcher), from `accelerate.PartialState`."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    # PartialState forms a CPU (gloo) process group only when told to run on CPU; without this, processes launched on
    # a machine with no accelerator would each believe they are alone and all write every shard.
    use_cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.accelerator.is_available()
    return PartialState(cpu=use_cpu)


def main(argv: list[str] | None = None) -> dict:
    """Run the CLI; returns this process's counts (plus the card's totals on the main process)."""
    args = parse_args(argv)
    state = distributed_state()
    out_dir: Path = args.out
    source = open_source(args.input, args.input_type, args.split, args.image_column)
    num_items = len(source) if args.max_images is None else min(len(source), args.max_images)
    if num_items == 0:
        raise SystemExit(f"No images found in {args.input}.")
    num_shards = num_shards_for(num_items, args.shard_size)

    estimator = MonocularDepthEstimator(args.estimator, device=args.device or state.device, batch_size=args.batch_size)
    is_metric = estimator.is_metric  # loads the model now: a wrong --estimator fails before any work
    info = {
        "format_version": FORMAT_VERSION,
        "input": str(args.input),
        "input_description": source.description,
        "estimator": args.estimator,
        "depth_is_metric": is_metric,
        "depth_encoding": depth_encoding_name(is_metric),
        "shard_size": args.shard_size,
        "max_side": args.max_side,
        "max_pixels": args.max_pixels,
        "num_items": num_items,
        "num_shards": num_shards,
        # The shard slices are only stable while the sorted input list is: a changed folder must not mix in.
        "items_sha256": hashlib.sha256("\n".join(source.source_ids[:num_items]).encode()).hexdigest(),
    }

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
        )

    return run_shard_job(state, out_dir, info, write_pending, lambda: write_card(out_dir, info, args.license), "image")
