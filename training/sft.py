"""Stage 2: spatial supervised fine-tuning of Qwen2.5-VL-Depth, a TRL script: parse, load, `SFTTrainer`, train, save.

The model is built from a plain Qwen2.5-VL checkpoint (`--model_name_or_path`) with the chosen `--depth_fusion`, or
loaded from a Stage-1 folder (`--aligned_depth_model`) whose depth encoder is kept (`training.model_loading`). What
trains is `training.sft_policy`'s: LoRA on the language model's attention and MLP projections, the depth projector and
the fusion gate in full, the RGB tower and the depth encoder's blocks frozen (`--use_peft false`: the whole language
model instead of LoRA). The adapter is then merged into a plain depth-model folder (`training.export`), loadable with
`AutoModelForImageTextToText.from_pretrained(export_dir, trust_remote_code=True)`, and the loss curve is plotted.
Rows: TRL's conversational format with depth, as `python -m training.make_world` writes them (`training/collator.py`);
`--depth_fusion none` trains the RGB-only baseline on the very same rows. `--depth_augmentation realistic` (or a comma
list of `training.depth_corruptions` names) corrupts the depth of a share `--depth_augmentation_p` of the training rows,
each row's draw seeded by `--seed` and its index; the evaluation rows keep their depth.

GPU (defaults with CUDA: bf16 with the trained depth modules kept in fp32, gradient checkpointing, batch 8, lr 2e-4);
several GPUs with `--multi_gpu --num_processes N`, or FSDP (it must save a FULL_STATE_DICT, for the merge) and
DeepSpeed with `--config_file training/accelerate_configs/<config>.yaml`::

    accelerate launch -m training.sft --model_name_or_path Qwen/Qwen2.5-VL-3B-Instruct --depth_fusion add \\
        --dataset_path data/world_train --eval_dataset_path data/world_val --output_dir runs/sft-add \\
        --num_train_epochs 1 --gradient_accumulation_steps 4 --eval_strategy steps --eval_steps 500 \\
        --dataloader_num_workers 4

CPU (defaults without CUDA: fp32, no gradient checkpointing, batch 4, `use_cpu`): the README's demo run, on
`runs/tiny-base` = `training.tiny.save_tiny_base` with `model.language_model.norm.weight` scaled x4 (a pretrained-like
logit scale; the random tiny head caps the loss near ln 512, see `sft_base` in tests/test_sft.py)::

    python -m training.make_world --out data/sft_demo/train --split train --num-scenes 34 --seed 0 --size 224
    python -m training.make_world --out data/sft_demo/val --split val --num-scenes 11 --seed 0 --size 224
    OMP_NUM_THREADS=1 python -m training.sft --model_name_or_path runs/tiny-base --depth_fusion add \\
        --dataset_path data/sft_demo/train --max_train_samples 200 --eval_dataset_path data/sft_demo/val \\
        --output_dir runs/sft-cpu --max_steps 100 --learning_rate 2e-3 --lr_scheduler_type cosine --warmup_steps 5 \\
        --logging_steps 5 --eval_strategy steps --eval_steps 20 --save_strategy no --report_to none \\
        --loss_curve docs/sft_loss_curve.png

Two CPU processes (gloo DDP) start only through torchrun, i.e. `accelerate launch --multi_gpu --num_processes 2
--num_machines 1 --mixed_precision no --dynamo_backend no -m training.sft ...` (or `--config_file
training/accelerate_configs/ddp_cpu.yaml`); `use_cpu` makes them one gloo group, and a launch whose processes do not
form one group is refused. Every `SFTConfig` and `ModelConfig` flag applies, handed to `from_pretrained` as TRL's own
`sft` script hands them: LoRA (`--lora_r`, `--lora_target_modules`, `--lora_modules_to_save`, ...), QLoRA
(`--load_in_4bit` / `--load_in_8bit`: the language model only; the adapter is merged into a rebuilt unquantized
model), `--model_revision`, `--attn_implementation`, `--dtype`, `--trust_remote_code`, `--model_init_kwargs`.
`--resume_from_checkpoint latest` resumes from the newest complete checkpoint (one whose save was killed is skipped),
`auto` likewise or starts fresh; `--config run.yaml` reads any flag from YAML.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import torch
from datasets import Dataset
from trl import ModelConfig, SFTConfig, SFTTrainer, TrlParser

from configuration_depth import RGB_ONLY_FUSION
from training.checkpoints import resume_checkpoint
from training.collator import DepthVLMCollator
from training.data_files import load_rows
from training.depth_corruptions import AUGMENTATION_COLUMN, DepthAugmentation
from training.export import export_merged_model
from training.model_loading import keep_in_float32, load_starting_model
from training.plots import write_loss_curve
from training.processed_cache import process_rows
from training.sft_arguments import SpatialSFTScriptArguments, stage2_defaults
from training.sft_diagnostics import summarise_training
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
    parser.set_defaults(**stage2_defaults(on_gpu=torch.cuda.is_available()))
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
    depth_augmentation_of(script_args, training_args)  # a wrong name or probability is an error now, not after loading
    output_dir = Path(training_args.output_dir)
    script_args.export_dir = script_args.export_dir or str(output_dir / "merged")
    script_args.loss_curve = script_args.loss_curve or str(output_dir / "loss_curve.png")
    return script_args, training_args, model_args


def depth_augmentation_of(
    script_args: SpatialSFTScriptArguments, training_args: SFTConfig
) -> DepthAugmentation | None:
    """The training rows' depth augmentation that `--depth_augmentation`/`--depth_augmentation_p` ask for, seeded by
    `--seed`; None without one."""
    if not script_args.depth_augmentation:
        return None
    if script_args.depth_fusion == RGB_ONLY_FUSION:
        raise ValueError(
            f"--depth_augmentation {script_args.depth_augmentation}: --depth_fusion {RGB_ONLY_FUSION} trains an "
            "RGB-only model, which reads no depth to augment."
        )
    return DepthAugmentation(script_args.depth_augmentation, script_args.depth_augmentation_p, training_args.seed)


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
    augmentation = depth_augmentation_of(script_args, training_args)
    if augmentation is not None:  # the training rows only: evaluation reads the depth as it is
        with training_args.main_process_first(desc="augmenting the training rows' depth"):
            train_dataset = augmentation.apply(train_dataset, num_proc=training_args.dataset_num_proc)
        if training_args.process_index == 0:
            counts = Counter(name or "clean" for name in train_dataset[AUGMENTATION_COLUMN])
            print(f"Depth augmentation of the {len(train_dataset)} training rows: {dict(sorted(counts.items()))}")
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
    summary = {"depth_fusion": script_args.depth_fusion}
    augmentation = depth_augmentation_of(script_args, training_args)
    if augmentation is not None:
        summary["depth_augmentation"] = augmentation.describe()
    if trainer.eval_dataset is not None and script_args.eval_before_training:
        # Inside `train`, once the model is wrapped: evaluating before `train` marks the model as prepared, and
        # accelerate then never wraps it in DDP, so the ranks would silently train apart (transformers 5.24,
        # accelerate 1.15).
        trainer.args.eval_on_start = True
    result = trainer.train(resume_from_checkpoint=resume_checkpoint(training_args))
    summary.update(summarise_training(trainer, result))
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
