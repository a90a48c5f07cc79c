"""The command line, `python -m training.align` (usage, flags and outputs: the package docstring)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from transformers import HfArgumentParser, TrainingArguments

from training.align.job import AlignmentArguments, train_alignment


def use_cpu_for_cpu_only_multiprocess_launch() -> None:
    """accelerate launches several CPU processes only through torchrun (its MULTI_CPU type needs mpirun), and torchrun
    does not pass `use_cpu` on. Without a GPU, such processes would each train alone: make them CPU DDP (gloo)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")


def parse_args(argv: list[str] | None = None) -> tuple[AlignmentArguments, TrainingArguments]:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The package docstring is the stage's overview; its first paragraph is the summary `--help` shows. `prog`, since
    # argparse would name the program after the file that runs it, `__main__.py`.
    summary = sys.modules[__package__].__doc__.split("\n\n")[0]
    parser = HfArgumentParser(
        (AlignmentArguments, TrainingArguments), prog=f"python -m {__package__}", description=summary
    )
    script_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    if not any(arg == "--output_dir" or arg.startswith("--output_dir=") for arg in argv):
        training_args.output_dir = str(Path(script_args.out) / "checkpoints")
    if training_args.ddp_find_unused_parameters is None:
        # Every trainable parameter gets a gradient each step; searching for unused ones only costs time.
        training_args.ddp_find_unused_parameters = False
    return script_args, training_args


def main(argv: list[str] | None = None) -> dict:
    use_cpu_for_cpu_only_multiprocess_launch()
    script_args, training_args = parse_args(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) != training_args.world_size:
        raise RuntimeError(
            f"Launched as {os.environ['WORLD_SIZE']} processes but the Trainer sees world size "
            f"{training_args.world_size}: each process would train alone."
        )
    return train_alignment(script_args, training_args).metrics
