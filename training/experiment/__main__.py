"""`python -m training.experiment`: run (or report) one preset of the experiment."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import training.experiment as package
from training.experiment.presets import PRESETS, Preset
from training.experiment.runner import Experiment
from training.spatialbot import TRAINING_ARMS


def parse_preset(argv: list[str] | None = None) -> tuple[Preset, argparse.Namespace]:
    """The preset the command line names, with its overrides applied, and the parsed arguments."""
    parser = argparse.ArgumentParser(
        prog="python -m training.experiment", description=package.__doc__.split("\n\n")[0]
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="override the preset's seeds")
    parser.add_argument("--arms", nargs="+", default=None, choices=TRAINING_ARMS)
    parser.add_argument(
        "--no-ablations", action="store_true", help="only the main comparison (no single-seed arms, no ablations)"
    )
    parser.add_argument("--parallel-runs", type=int, default=None, help="override the preset's parallel_runs")
    parser.add_argument("--sft-steps", type=int, default=None, help="override the preset's sft_steps")
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="override the preset's image_size: every world is rendered and every model sized for it (a multiple of 28)",
    )
    parser.add_argument(
        "--train-depth-encoder", action="store_true", help="stage 2 also trains the depth encoder's blocks (H3)"
    )
    parser.add_argument("--depth-lr", type=float, default=None, help="override the preset's depth_lr")
    parser.add_argument(
        "--depth-warmup-steps", type=int, default=None, help="override the preset's depth_warmup_steps (H2)"
    )
    parser.add_argument(
        "--tokenizer-corpus",
        choices=["world", "default"],
        default=None,
        help="override the preset's tokenizer_corpus (default: the byte-level tokenizer of training.tiny)",
    )
    parser.add_argument(
        "--tokenizer-digits",
        choices=["merged", "single"],
        default=None,
        help="override the preset's tokenizer_digits (single: every digit its own token, as Qwen2's tokenizer)",
    )
    parser.add_argument(
        "--scene-conversations", choices=["true", "false"], default=None, help="override scene_conversations"
    )
    parser.add_argument(
        "--depth-input", choices=["depth", "points"], default=None, help="override the preset's depth_input"
    )
    parser.add_argument(
        "--align-reconstruction-weight",
        type=float,
        default=None,
        help="override the preset's align_reconstruction_weight (stage 1's reconstruction term; 0: contrastive only)",
    )
    parser.add_argument(
        "--stage0-question-types", choices=["rgb", "all"], default=None, help="override stage0_question_types"
    )
    parser.add_argument("--no-capacity-control", action="store_true", help="skip the capacity-matched control arm")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per stage (override the preset's)")
    parser.add_argument(
        "--shared-stages", type=Path, default=None, help="reuse the data and stage 0 of this experiment folder"
    )
    parser.add_argument("--launcher", default="", help='e.g. "accelerate launch --num_processes 8"')
    parser.add_argument("--report-only", action="store_true", help="rebuild the report from finished evaluations")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    overrides = {}
    if args.seeds:
        overrides["seeds"] = tuple(args.seeds)
    if args.arms:
        overrides["arms"] = tuple(args.arms)
    if args.no_ablations:
        overrides["alignment_ablations"] = ()
        overrides["single_seed_arms"] = ()
    if args.parallel_runs:
        overrides["parallel_runs"] = args.parallel_runs
    if args.sft_steps:
        overrides["sft_steps"] = args.sft_steps
    if args.image_size:
        if args.image_size % 28:
            parser.error(f"--image-size must be a multiple of 28 (one merged token is 28 px); got {args.image_size}")
        overrides["image_size"] = args.image_size
    if args.train_depth_encoder:
        overrides["train_depth_encoder"] = True
    if args.depth_lr:
        overrides["depth_lr"] = args.depth_lr
    if args.depth_warmup_steps is not None:
        overrides["depth_warmup_steps"] = args.depth_warmup_steps
    if args.tokenizer_corpus:
        overrides["tokenizer_corpus"] = None if args.tokenizer_corpus == "default" else args.tokenizer_corpus
    if args.tokenizer_digits:
        overrides["tokenizer_digits"] = args.tokenizer_digits
    if args.depth_input:
        overrides["depth_input"] = args.depth_input
    if args.align_reconstruction_weight is not None:
        overrides["align_reconstruction_weight"] = args.align_reconstruction_weight
    if args.stage0_question_types:
        overrides["stage0_question_types"] = args.stage0_question_types
    if args.scene_conversations:
        overrides["scene_conversations"] = args.scene_conversations == "true"
    if args.no_capacity_control:
        overrides["capacity_controls"] = ()
    if args.threads:
        overrides["threads"] = args.threads
    return replace(preset, **overrides), args


def main(argv: list[str] | None = None) -> dict:
    preset, args = parse_preset(argv)
    out = args.out or Path("runs") / f"experiment_{args.preset}"
    experiment = Experiment(preset, out, args.launcher, shared_stages=args.shared_stages)
    return experiment.report_existing() if args.report_only else experiment()


if __name__ == "__main__":
    main()
