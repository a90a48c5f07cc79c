"""What the training jobs load, each in one place: dataset files and rows, depth models, and checkpoints to resume.

* `find_data_files` / `load_rows`: parquet shards (or benchmark files) under a folder, and the rows of a parquet
  file or folder, a `save_to_disk` folder or a hub dataset.
* `load_depth_model`: a Qwen2.5-VL-Depth model and its processor, from a depth-model folder (its fusion optionally
  switched) or built from a plain Qwen2.5-VL base, with the base recorded in the config
  (`base_model_name_or_path`) so that every later folder (alignment, SFT, export) still names it.
* `keep_in_float32`: trainable weights stay fp32 under bf16/fp16 mixed precision.
* `resume_checkpoint`: the checkpoint `--resume_from_checkpoint` means, never one that a killed save left incomplete.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging


if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import TrainingArguments

    from modeling_qwen2_5_vl_depth import Qwen2_5_VLDepthForConditionalGeneration
    from processing_depth import Qwen2_5_VLDepthProcessor


logger = logging.get_logger(__name__)

PARQUET_PATTERNS = ("**/*.parquet",)
DEPTH_MODEL_TYPE = "qwen2_5_vl_depth"
# The hub cache keeps a repo's files under `models--{owner}--{name}/snapshots/{revision}`.
HUB_CACHE_SNAPSHOT = re.compile(r"models--(?P<owner>[^/]+?)--(?P<name>[^/]+)/snapshots/[^/]+/?$")
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


# --------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------
def find_data_files(path: str | Path, patterns: Sequence[str] = PARQUET_PATTERNS) -> list[Path]:
    """`path` itself when it is a file; else the files under the folder `path` that match the first of `patterns`
    matching any, sorted. Hidden files and folders are skipped: they are the writers' temporary shards, still being
    written (`.shard-00001.parquet.tmp-123`). The default finds every parquet file, at any depth."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist.")
    for pattern in patterns:
        found = sorted(
            file
            for file in path.glob(pattern)
            if file.is_file() and not any(part.startswith(".") for part in file.relative_to(path).parts)
        )
        if found:
            return found
    raise FileNotFoundError(f"No data files under {path} (looked for {', '.join(patterns)}).")


def load_rows(
    path: str | Path, split: str = "train", max_samples: int | None = None, question_types: list[str] | None = None
) -> Dataset:
    """Rows from a parquet file, a folder of parquet files (any depth), a `save_to_disk` folder (of a `Dataset`, or of
    a `DatasetDict`: its `split`, or its only split), or else a hub dataset id (its `split`); only those of
    `question_types` when given (before `max_samples`)."""
    import datasets

    local = Path(path)
    if local.is_dir() and any((local / name).exists() for name in ("state.json", "dataset_dict.json")):
        rows = datasets.load_from_disk(str(local))
        if isinstance(rows, datasets.DatasetDict):
            if split not in rows and len(rows) != 1:
                raise ValueError(f"{path} has no split {split!r}; its splits are {list(rows)}.")
            rows = rows[split] if split in rows else next(iter(rows.values()))
    elif local.exists():
        files = find_data_files(local)
        rows = datasets.load_dataset("parquet", data_files=[str(file) for file in files], split="train")
    else:
        rows = datasets.load_dataset(str(path), split=split)
    if question_types:
        # Reading only the type column: a row-wise filter would decode every image.
        keep = set(question_types)
        rows = rows.filter(lambda question_type: question_type in keep, input_columns="question_type")
        if len(rows) == 0:
            raise ValueError(f"No rows of question types {sorted(keep)} in {path}.")
    if max_samples is not None:
        rows = rows.select(range(min(max_samples, len(rows))))
    return rows


# --------------------------------------------------------------------------------------------------------------
# Depth models
# --------------------------------------------------------------------------------------------------------------
def is_depth_checkpoint(name_or_path: str | Path, revision: str | None = None) -> bool:
    """Whether the folder or hub id holds a Qwen2.5-VL-Depth model (rather than a plain Qwen2.5-VL)."""
    from transformers import PreTrainedConfig

    config_dict, _ = PreTrainedConfig.get_config_dict(str(name_or_path), revision=revision)
    return config_dict.get("model_type") == DEPTH_MODEL_TYPE


def base_model_provenance(name_or_path: str | Path) -> str:
    """What a model built from `name_or_path` records as its base: the hub id, or the local folder's absolute path.

    A hub id (`owner/name`) is never an absolute path, so the two cannot be confused later, when the folder may no
    longer exist (`config._name_or_path` is not saved at all). A folder in the hub cache is its repo's snapshot, so
    it records the repo id.
    """
    local = Path(name_or_path).expanduser()
    if not local.is_dir():
        return str(name_or_path)
    resolved = local.resolve()
    snapshot = HUB_CACHE_SNAPSHOT.search(resolved.as_posix())
    if snapshot:
        return f"{snapshot['owner']}/{snapshot['name']}"
    return str(resolved)


def hub_base_model(config) -> str | None:
    """The hub id of the base a depth model was built from, or None when it was a local folder or is unknown."""
    recorded = getattr(config, "base_model_name_or_path", None)
    if not recorded or Path(recorded).is_absolute():
        return None
    return recorded


def load_depth_model(
    name_or_path: str | Path,
    depth_fusion: str | None = None,
    *,
    depth_estimator: str | None = None,
    depth_layers: int | None = None,
    init_from_rgb: bool = True,
    seed: int = 0,
    **from_pretrained_kwargs,
) -> tuple[Qwen2_5_VLDepthForConditionalGeneration, Qwen2_5_VLDepthProcessor]:
    """A depth model and its processor from a Qwen2.5-VL-Depth folder or a plain Qwen2.5-VL base (folder or hub id).

    `depth_fusion` is one of the model's modes or `training.spatialbot`'s "image" arm (an RGB-only model whose
    processor draws depth as a picture). A depth folder loads as saved; `depth_fusion` switches its fusion when given.
    Its depth encoder must load in full (a folder saved without one, switched to a fusion that needs one, is
    refused); a gate new to it starts at zero. A plain base becomes a depth model as `build_depth_model` makes it
    (`depth_fusion` defaults to "add"; `depth_layers` and `init_from_rgb` shape the new encoder), every base weight
    kept, and its name is recorded in `config.base_model_name_or_path` (`base_model_provenance`) unless the base
    records one itself.

    Whatever is initialised at random (a new gate or encoder) is drawn under `seed`, so rebuilding the model (for an
    adapter merge, on every rank) gives the same weights; the caller's RNG state is left alone.
    `from_pretrained_kwargs` (`dtype`, `attn_implementation`, `revision`, `quantization_config`, `device_map`, ...)
    go to the model's `from_pretrained`.
    """
    from configuration_depth import DEFAULT_DEPTH_FUSION, DEPTH_ENCODER
    from modeling_qwen2_5_vl_depth import Qwen2_5_VLDepthForConditionalGeneration
    from processing_depth import Qwen2_5_VLDepthProcessor
    from training.build_depth_model import build_depth_model
    from training.spatialbot import model_depth_fusion, processor_for_arm

    revision = from_pretrained_kwargs.get("revision")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if not is_depth_checkpoint(name_or_path, revision=revision):
            model, processor = build_depth_model(
                name_or_path,
                depth_fusion or DEFAULT_DEPTH_FUSION,
                depth_estimator=depth_estimator,
                depth_layers=depth_layers,
                init_from_rgb=init_from_rgb,
                **from_pretrained_kwargs,
            )
            if not getattr(model.config, "base_model_name_or_path", None):
                model.config.base_model_name_or_path = base_model_provenance(name_or_path)
            return model, processor

        # The folder carries remote code for the Auto classes; ours are imported, so never run (or prompt for) it.
        processor_kwargs = {"trust_remote_code": False}
        if revision is not None:
            processor_kwargs["revision"] = revision
        if depth_estimator is not None:
            processor_kwargs["depth_estimator"] = depth_estimator
        config_overrides = {}
        if depth_fusion is None:
            processor = Qwen2_5_VLDepthProcessor.from_pretrained(name_or_path, **processor_kwargs)
        else:
            processor = processor_for_arm(name_or_path, depth_fusion, **processor_kwargs)
            config_overrides["depth_fusion"] = model_depth_fusion(depth_fusion)
        model, loading_info = Qwen2_5_VLDepthForConditionalGeneration.from_pretrained(
            name_or_path, output_loading_info=True, **config_overrides, **from_pretrained_kwargs
        )
    missing_encoder = [key for key in loading_info["missing_keys"] if key.startswith(f"model.{DEPTH_ENCODER}.")]
    if missing_encoder:
        raise ValueError(
            f"{name_or_path} has no trained depth encoder to keep (missing {missing_encoder[:3]}...): start from a "
            "depth model that has one, or from a plain base to build a new one."
        )
    return model, processor


def keep_in_float32(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Cast the given parameters to float32 in place (bf16/fp16 mixed precision computes in low precision under
    autocast, but the optimizer must update fp32 weights).

    A bf16 weight cannot take updates smaller than its spacing: at 0.1 that is 2^-11 ≈ 5e-4, more than an AdamW step
    at lr 2e-4, so such a weight never moves (measured: a bf16 gate at 0.1 stays at 0.1 for 100 steps where fp32
    reaches 0.08). fp16 mixed precision refuses low-precision trainable weights outright.
    """
    for parameter in parameters:
        if parameter.is_floating_point() and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()


# --------------------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------------------
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
