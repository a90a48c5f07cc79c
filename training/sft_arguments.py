"""Stage 2's script arguments, besides TRL's `SFTConfig` and `ModelConfig` (`training.sft` parses all three), and its
defaults of theirs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from trl import ScriptArguments

from configuration_depth import DEFAULT_DEPTH_FUSION, DEPTH_INPUTS
from training.depth_corruptions import CORRUPTION_NAMES
from training.spatialbot import ARM_SUMMARIES, TRAINING_ARMS


@dataclass
class SpatialSFTScriptArguments(ScriptArguments):
    """Script arguments of Stage 2, besides TRL's `ScriptArguments` (whose `dataset_name` is `dataset_path`'s alias)."""

    depth_fusion: Literal[TRAINING_ARMS] = field(
        default=DEFAULT_DEPTH_FUSION,
        metadata={
            "help": "How depth reaches the LLM: "
            + " | ".join(f"{arm} (depth is {summary})" for arm, summary in ARM_SUMMARIES.items())
            + "."
        },
    )
    depth_input: Literal[tuple(DEPTH_INPUTS)] | None = field(
        default=None,
        metadata={
            "help": "What the depth path of a model built from a plain base sees: "
            + " | ".join(f"{name} ({entry.summary})" for name, entry in DEPTH_INPUTS.items())
            + ". Default: the starting depth folder's own, else depth."
        },
    )
    dataset_path: str | None = field(
        default=None,
        metadata={
            "help": "Training rows: a folder of parquet shards (training.make_world), a parquet file, a "
            "`save_to_disk` folder, or a hub dataset id (split --dataset_train_split)."
        },
    )
    eval_dataset_path: str | None = field(
        default=None,
        metadata={"help": "Held-out rows for the answer loss, same formats (split --dataset_test_split)."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N evaluation rows."})
    question_types: list[str] | None = field(
        default=None,
        metadata={"help": "Train and evaluate only on rows of these question types (the `question_type` column)."},
    )
    eval_before_training: bool = field(
        default=True,
        metadata={
            "help": "Evaluate once before the first step (`eval_on_start`), so the loss curve starts at step 0."
        },
    )
    aligned_depth_model: str | None = field(
        default=None,
        metadata={
            "help": "Stage-1 depth-model folder to start from instead of --model_name_or_path; its depth encoder is "
            "kept, its fusion is switched to --depth_fusion when they differ."
        },
    )
    depth_estimator: str | None = field(
        default=None, metadata={"help": "DepthAnything id/folder, only for rows that have no depth."}
    )
    depth_augmentation: str | None = field(
        default=None,
        metadata={
            "help": "Augment the training rows' depth (never the evaluation rows'): a corruption of "
            "training.depth_corruptions, or a comma list of them ("
            + ", ".join(CORRUPTION_NAMES)
            + "); each row, with probability --depth_augmentation_p, gets one of them, drawn per row from --seed."
        },
    )
    depth_augmentation_p: float = field(
        default=0.5, metadata={"help": "Share of the training rows whose depth --depth_augmentation corrupts."}
    )
    process_rows_ahead: bool = field(
        default=False,
        metadata={
            "help": "Process every row once before training (chat template, image processor, depth patches; "
            "training.processed_cache) instead of in every step's collator: bit-identical batches, ~350 KB of disk "
            "per 112-px row. Pays off from about one epoch on."
        },
    )
    train_vision_tower: bool = field(
        default=False,
        metadata={
            "help": "With --use_peft false, train the RGB vision tower too (pre-training a base from scratch, as the "
            "experiment's stage 0 does); by default it stays frozen."
        },
    )
    export_dir: str | None = field(
        default=None, metadata={"help": "Where the merged model + processor are saved (default: OUTPUT_DIR/merged)."}
    )
    depth_lr: float | None = field(
        default=None,
        metadata={
            "help": "Learning rate of the depth modules that train (merger, gate, and the encoder blocks with "
            "--train_depth_encoder); default: --learning_rate. The same schedule scales both rates."
        },
    )
    depth_gate_init: float | None = field(
        default=None,
        metadata={
            "help": "'add' only: set every channel of the fusion gate to this value before training (tanh(1.0) = "
            "0.76). Default: leave it as loaded (zero for a new gate). Use with --depth_merger_zero_init so the "
            "fresh model still equals the base exactly."
        },
    )
    depth_merger_zero_init: bool = field(
        default=False,
        metadata={
            "help": "Zero the depth projector's last layer (weight and bias) before training: depth then adds "
            "exactly nothing, whatever the gate, and the last layer gets the full gradient from the first step."
        },
    )
    train_depth_encoder: bool = field(
        default=False,
        metadata={"help": "With --use_peft false, also train the depth encoder's blocks (not only its merger)."},
    )
    train_only_depth: bool = field(
        default=False,
        metadata={
            "help": "With --use_peft false, train only the depth modules (merger, gate, encoder blocks with "
            "--train_depth_encoder) and freeze the language model: a projector warm-up stage (LLaVA's stage 1)."
        },
    )
    loss_curve: str | None = field(
        default=None,
        metadata={
            "help": "PNG of the training/eval loss (default: OUTPUT_DIR/loss_curve.png); a .json sits next to it."
        },
    )


def stage2_defaults(on_gpu: bool) -> dict:
    """Stage 2's defaults of TRL's `SFTConfig` and `ModelConfig` flags (for `TrlParser.set_defaults`), with or without
    GPUs."""
    return dict(
        use_peft=True,
        learning_rate=2e-4,  # the usual LoRA rate; TRL's 2e-5 is meant for full fine-tuning
        remove_unused_columns=False,  # the collator needs the raw `messages`, `images` and `depth` columns
        prediction_loss_only=True,  # eval needs only the answer loss; logits would cost a second forward pass
        # bf16 and gradient checkpointing are what big models need on GPUs; on CPU bf16 autocast is slow and
        # checkpointing only trades time for memory that a CPU run does not lack.
        bf16=on_gpu,
        gradient_checkpointing=on_gpu,
        # Without `use_cpu`, processes started by `accelerate launch` on a machine without GPUs do not form a gloo
        # group: each would train alone on the whole dataset.
        use_cpu=not on_gpu,
        dtype="bfloat16" if on_gpu else "float32",
        per_device_train_batch_size=8 if on_gpu else 4,
        per_device_eval_batch_size=8 if on_gpu else 4,
    )
