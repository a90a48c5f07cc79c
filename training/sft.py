"""Stage 2: spatial supervised fine-tuning of Qwen2.5-VL-Depth with LoRA, through TRL's `SFTTrainer`.

The model is built from a plain Qwen2.5-VL checkpoint (`--model_name_or_path`) with the chosen `--depth_fusion`, or
loaded from a Stage-1 folder (`--aligned_depth_model`) whose depth encoder is kept. LoRA adapts the attention and MLP
projections of the language model only; the depth projector (the depth encoder's `merger`) and the fusion gate
(`depth_gate`, "add" only) are trained in full; the RGB vision tower and the depth encoder's blocks stay frozen. After
training the adapter is merged and a plain depth-model folder is exported, loadable with
`AutoModelForImageTextToText.from_pretrained(export_dir, trust_remote_code=True)`.

Data: rows in TRL conversational format with depth, as written by `python -m training.make_world` (`messages`,
`images`, `depth` as 16-bit millimetre PNGs); see `training/collator.py`. `--depth_fusion none` trains the RGB-only
baseline on the very same rows (depth is ignored).

GPU (defaults when CUDA is available: bf16 weights and autocast, with the trained depth merger and gate kept in fp32,
gradient checkpointing, batch 8, lr 2e-4)::

    accelerate launch -m training.sft \\
        --model_name_or_path Qwen/Qwen2.5-VL-3B-Instruct --depth_fusion add \\
        --dataset_path data/world_train --eval_dataset_path data/world_val \\
        --output_dir runs/sft-add --export_dir runs/sft-add/merged --loss_curve runs/sft-add/loss.png \\
        --num_train_epochs 1 --gradient_accumulation_steps 4 --eval_strategy steps --eval_steps 500 \\
        --dataloader_num_workers 4

Several GPUs: DDP with `accelerate launch --multi_gpu --num_processes N ...`; FSDP or DeepSpeed for big models with
`accelerate launch --config_file training/accelerate_configs/<config>.yaml ...` (FSDP must save a FULL_STATE_DICT so
the adapter can be gathered for the merge).

CPU (defaults without CUDA: fp32, no gradient checkpointing, batch 4, `use_cpu`). The README's demo run, on
`runs/tiny-base` = `training.tiny.save_tiny_base` with `model.language_model.norm.weight` scaled x4 (a pretrained-like
logit scale; the random tiny head caps the loss near ln 512, see `sft_base` in tests/test_sft.py)::

    python -m training.make_world --out data/sft_demo/train --split train --num-scenes 34 --seed 0 --size 224
    python -m training.make_world --out data/sft_demo/val --split val --num-scenes 11 --seed 0 --size 224
    OMP_NUM_THREADS=1 python -m training.sft --model_name_or_path runs/tiny-base --depth_fusion add \\
        --dataset_path data/sft_demo/train --max_train_samples 200 --eval_dataset_path data/sft_demo/val \\
        --output_dir runs/sft-cpu --max_steps 100 --learning_rate 2e-3 --lr_scheduler_type cosine --warmup_steps 5 \\
        --logging_steps 5 --eval_strategy steps --eval_steps 20 --save_strategy no --report_to none \\
        --loss_curve docs/sft_loss_curve.png

Two CPU processes (gloo DDP): accelerate starts several CPU processes only through torchrun, i.e. `--multi_gpu` (its
`--cpu` flag and MULTI_CPU configs use the single-process / mpirun launcher); `use_cpu`, the CPU default here, makes
them one gloo group. A launch whose processes do not form one group is refused::

    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \\
        -m training.sft ...   # or --config_file training/accelerate_configs/ddp_cpu.yaml

Every `SFTConfig` / `TrainingArguments` flag and TRL's `ModelConfig` flags apply: LoRA (`--lora_r`, `--lora_alpha`,
`--lora_target_modules`, `--lora_modules_to_save`, ...) and loading (`--load_in_4bit` / `--load_in_8bit` for QLoRA,
which quantizes the language model only and merges the adapter into a rebuilt unquantized model at the end;
`--model_revision`, `--attn_implementation`, `--dtype`, `--trust_remote_code`, `--model_init_kwargs`), all handed to
`from_pretrained` as TRL's own `sft` script hands them. `--use_peft false` fine-tunes the whole language model instead
(still with the vision tower and depth encoder blocks frozen). `--resume_from_checkpoint latest` resumes from the
newest complete checkpoint (one whose save was killed is skipped), `auto` likewise or starts fresh when there is none.
`--config run.yaml` reads any of them from YAML.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from datasets import Dataset
from trl import ModelConfig, SFTConfig, SFTTrainer, TrlParser

from training.checkpoints import resume_checkpoint
from training.collator import DepthVLMCollator
from training.data_files import load_rows
from training.export import export_merged_model
from training.model_loading import keep_in_float32, load_starting_model
from training.plots import write_loss_curve
from training.processed_cache import process_rows
from training.sft_arguments import SpatialSFTScriptArguments
from training.sft_policy import (
    freeze_for_full_finetuning,
    is_depth_module_parameter,
    make_lora_config,
    reinitialise_depth_fusion,
)
from training.sft_trainer import DepthSFTTrainer


def make_parser() -> TrlParser:
    """`TrlParser` over (script, SFT, model) arguments, with Stage-2 defaults that depend on whether CUDA is present."""
    parser = TrlParser((SpatialSFTScriptArguments, SFTConfig, ModelConfig))
    on_gpu = torch.cuda.is_available()
    parser.set_defaults(
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
    return parser


def parse_args(argv: list[str] | None = None) -> tuple[SpatialSFTScriptArguments, SFTConfig, ModelConfig]:
    script_args, training_args, model_args = make_parser().parse_args_and_config(args=argv)
    # Forced, not defaults: the trainer must hand raw rows to our collator, which builds inputs and labels itself.
    training_args.remove_unused_columns = False
    training_args.dataset_kwargs = {**(training_args.dataset_kwargs or {}), "skip_prepare_dataset": True}
    script_args.dataset_path = script_args.dataset_path or script_args.dataset_name
    if script_args.dataset_path is None:
        raise ValueError("Give the training rows with --dataset_path.")
    if model_args.model_name_or_path is None and script_args.aligned_depth_model is None:
        raise ValueError(
            "Give a base model with --model_name_or_path (or a Stage-1 folder with --aligned_depth_model)."
        )
    launched_processes = int(os.environ.get("WORLD_SIZE", "1"))
    if launched_processes != training_args.world_size:
        raise RuntimeError(
            f"{launched_processes} processes were launched but the trainer sees {training_args.world_size}: on a "
            "machine without GPUs pass --use_cpu true, or they would each train alone."
        )
    output_dir = Path(training_args.output_dir)
    script_args.export_dir = script_args.export_dir or str(output_dir / "merged")
    script_args.loss_curve = script_args.loss_curve or str(output_dir / "loss_curve.png")
    return script_args, training_args, model_args


def build_trainer(
    script_args: SpatialSFTScriptArguments,
    training_args: SFTConfig,
    model_args: ModelConfig,
    train_dataset: Dataset | None = None,
    eval_dataset: Dataset | None = None,
) -> SFTTrainer:
    """An `SFTTrainer` with the depth model, LoRA config and collator; datasets are loaded from the paths if not given."""
    with training_args.main_process_first(desc="loading the datasets"):
        if train_dataset is None:
            train_dataset = load_rows(
                script_args.dataset_path,
                script_args.dataset_train_split,
                script_args.max_train_samples,
                script_args.question_types,
            )
        if eval_dataset is None and script_args.eval_dataset_path is not None:
            eval_dataset = load_rows(
                script_args.eval_dataset_path,
                script_args.dataset_test_split,
                script_args.max_eval_samples,
                script_args.question_types,
            )
    model, processor = load_starting_model(script_args, model_args, training_args)
    reinitialise_depth_fusion(model, script_args.depth_gate_init, script_args.depth_merger_zero_init)
    peft_config = make_lora_config(model_args, model)
    if peft_config is None:
        freeze_for_full_finetuning(
            model, script_args.train_vision_tower, script_args.train_depth_encoder, script_args.train_only_depth
        )
    else:
        for flag in ("train_vision_tower", "train_depth_encoder", "train_only_depth"):
            if getattr(script_args, flag):
                raise ValueError(f"--{flag} needs --use_peft false (full fine-tuning).")
    collator = DepthVLMCollator(processor, max_length=training_args.max_length)
    if script_args.process_rows_ahead:
        with training_args.main_process_first(desc="processing the rows"):
            train_dataset = process_rows(train_dataset, collator, num_proc=training_args.dataset_num_proc)
            if eval_dataset is not None:
                eval_dataset = process_rows(eval_dataset, collator, num_proc=training_args.dataset_num_proc)
    trainer = DepthSFTTrainer(
        depth_lr=script_args.depth_lr,
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
        data_collator=collator,
        peft_config=peft_config,
    )
    if training_args.bf16 or training_args.fp16:
        # Under mixed precision the depth merger and gate (PEFT's trainable copies, or the modules themselves) keep
        # fp32 weights, whatever `--dtype` loaded them in and TRL's QLoRA cast to bf16 made of them.
        keep_in_float32(
            parameter
            for name, parameter in trainer.model.named_parameters()
            if parameter.requires_grad and is_depth_module_parameter(name)
        )
    return trainer


def train(
    script_args: SpatialSFTScriptArguments, training_args: SFTConfig, model_args: ModelConfig
) -> tuple[SFTTrainer, dict]:
    """Build the trainer, evaluate, train, evaluate; returns the trainer and a summary of losses and speed."""
    trainer = build_trainer(script_args, training_args, model_args)
    print_ = trainer.accelerator.print
    summary = {"depth_fusion": script_args.depth_fusion}
    if trainer.eval_dataset is not None and script_args.eval_before_training:
        # Inside `train`, once the model is wrapped: evaluating before `train` marks the model as prepared, and
        # accelerate then never wraps it in DDP, so the ranks would silently train apart (transformers 5.24,
        # accelerate 1.15).
        trainer.args.eval_on_start = True
    result = trainer.train(resume_from_checkpoint=resume_checkpoint(training_args))
    first_eval = next((entry for entry in trainer.state.log_history if "eval_loss" in entry), None)
    if trainer.args.eval_on_start and first_eval is not None:
        summary["eval_loss_before"] = first_eval["eval_loss"]
    summary.update(
        train_loss=result.metrics["train_loss"],
        train_steps=result.global_step,
        train_steps_per_second=result.metrics["train_steps_per_second"],
        train_samples_per_second=result.metrics["train_samples_per_second"],
    )
    if trainer.eval_dataset is not None:
        last_eval = next((entry for entry in reversed(trainer.state.log_history) if "eval_loss" in entry), None)
        if last_eval is not None and last_eval["step"] == result.global_step:  # eval_strategy just did it
            summary["eval_loss_after"] = last_eval["eval_loss"]
        else:
            summary["eval_loss_after"] = trainer.evaluate()["eval_loss"]
    print_(
        f"Trained {result.global_step} steps at {summary['train_steps_per_second']:.3f} steps/s "
        f"({summary['train_samples_per_second']:.2f} samples/s), mean train loss {summary['train_loss']:.4f}"
    )
    if "eval_loss_before" in summary and "eval_loss_after" in summary:
        before, after = summary["eval_loss_before"], summary["eval_loss_after"]
        drop = 100 * (1 - after / before) if before > 0 and math.isfinite(before) else float("nan")
        print_(f"Eval answer loss {before:.4f} -> {after:.4f} ({drop:.1f}% lower)")
    return trainer, summary


def finish(
    trainer: SFTTrainer, summary: dict, script_args: SpatialSFTScriptArguments, model_args: ModelConfig
) -> None:
    """Save the adapter, export the merged model, write the loss curve and summary (all ranks call this)."""
    sharded = trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled
    if not sharded:  # sharded runs save it inside `export_merged_model`, where it is needed
        trainer.save_model(trainer.args.output_dir)
    export_dir = export_merged_model(trainer, script_args.export_dir, script_args, model_args)
    if trainer.accelerator.is_main_process:
        title = f"Stage 2 spatial SFT, depth_fusion={script_args.depth_fusion}"
        curve = write_loss_curve(trainer.state.log_history, script_args.loss_curve, title)
        summary = {**summary, "export_dir": str(export_dir), "loss_curve": str(curve)}
        (Path(trainer.args.output_dir) / "sft_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        trainer.accelerator.print(f"Merged model in {export_dir}; loss curve in {curve}")


def main(argv: list[str] | None = None) -> dict:
    script_args, training_args, model_args = parse_args(argv)
    trainer, summary = train(script_args, training_args, model_args)
    finish(trainer, summary, script_args, model_args)
    trainer.end()  # finishes trackers and tears down the process group: nothing distributed may follow
    return summary


if __name__ == "__main__":
    main()
