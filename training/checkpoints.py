"""Checkpoints to resume from: `resume_checkpoint` is the checkpoint `--resume_from_checkpoint` means, never one
that a killed save left incomplete (`incomplete_checkpoint_reason`, `newest_complete_checkpoint`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging


if TYPE_CHECKING:
    from transformers import TrainingArguments


logger = logging.get_logger(__name__)

# What `Trainer._save_checkpoint` writes into `checkpoint-N`, in this order: the model (`save_model`), the optimizer
# and scheduler (unless `save_only_model`), the RNG states, and last `trainer_state.json`.
TRAINER_STATE_NAME = "trainer_state.json"
# Weights: model.safetensors(.index.json), pytorch_model.bin(.index.json) and FSDP's pytorch_model_fsdp*, PEFT's
# adapter_model.*; DeepSpeed keeps weights and optimizer in global_step*/. Optimizer: optimizer.pt / optimizer.bin
# (accelerate) / FSDP's optimizer_0/.
CHECKPOINT_WEIGHTS_PREFIXES = ("model.safetensors", "pytorch_model", "adapter_model", "global_step")
CHECKPOINT_OPTIMIZER_PREFIXES = ("optimizer", "global_step")
RESUME_NEWEST = ("true", "latest", "last")
RESUME_IF_ANY = "auto"


def incomplete_checkpoint_reason(folder: str | Path, require_optimizer: bool = True) -> str | None:
    """Why `folder` is not a checkpoint the Trainer can resume from, or None when it is complete.

    The Trainer writes `trainer_state.json` last, so a save killed part way leaves no (or a truncated) state file;
    the weights and optimizer files are checked too, in case a folder lost files some other way.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return "it is not a folder"
    try:
        json.loads((folder / TRAINER_STATE_NAME).read_text())
    except FileNotFoundError:
        return f"it has no {TRAINER_STATE_NAME} (the Trainer writes it last: the save was interrupted)"
    except ValueError:
        return f"its {TRAINER_STATE_NAME} is truncated (the save was interrupted)"
    names = [entry.name for entry in folder.iterdir()]
    if not any(name.startswith(CHECKPOINT_WEIGHTS_PREFIXES) for name in names):
        return "it has no model weights"
    if require_optimizer and not any(name.startswith(CHECKPOINT_OPTIMIZER_PREFIXES) for name in names):
        return "it has no optimizer state"
    return None


def newest_complete_checkpoint(output_dir: str | Path, require_optimizer: bool = True) -> Path | None:
    """The complete `checkpoint-N` folder of `output_dir` with the highest N, or None; incomplete ones are logged."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    pattern = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
    steps = {int(match[1]): entry for entry in output_dir.iterdir() if (match := pattern.match(entry.name))}
    for step in sorted(steps, reverse=True):
        reason = incomplete_checkpoint_reason(steps[step], require_optimizer)
        if reason is None:
            return steps[step]
        logger.warning(f"Not resuming from {steps[step]}: {reason}.")
    return None


def resume_checkpoint(args: TrainingArguments) -> str | None:
    """The checkpoint `args.resume_from_checkpoint` asks for, for `Trainer.train(resume_from_checkpoint=...)`.

    `true` / `latest` / `last`: the newest complete checkpoint in `output_dir` (an error if there is none); `auto`:
    the same, or a fresh start when there is none (a job that is simply rerun after a kill); a path: that checkpoint,
    which must be complete. Unset (or `false`): a fresh start. Unlike the Trainer's own `True`, a newest checkpoint
    whose save was killed part way is skipped, not loaded (and crashed on).
    """
    value = args.resume_from_checkpoint
    if value is None or value is False or (isinstance(value, str) and value.lower() in ("", "false", "no")):
        return None
    require_optimizer = not args.save_only_model
    if value is True or (isinstance(value, str) and value.lower() in (*RESUME_NEWEST, RESUME_IF_ANY)):
        checkpoint = newest_complete_checkpoint(args.output_dir, require_optimizer)
        if checkpoint is None and not (isinstance(value, str) and value.lower() == RESUME_IF_ANY):
            raise ValueError(
                f"--resume_from_checkpoint {value}: no complete checkpoint in {args.output_dir} (use `auto` to start "
                "fresh when there is none)."
            )
        return None if checkpoint is None else str(checkpoint)
    reason = incomplete_checkpoint_reason(value, require_optimizer)
    if reason is not None:
        raise ValueError(f"Cannot resume from {value}: {reason}.")
    return str(value)
