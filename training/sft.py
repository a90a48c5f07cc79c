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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from accelerate import PartialState
from datasets import Dataset
from trl import (
    ModelConfig,
    ScriptArguments,
    SFTConfig,
    SFTTrainer,
    TrlParser,
    get_peft_config,
    get_quantization_config,
)

from configuration_depth import (
    DEFAULT_DEPTH_FUSION,
    DEPTH_ADAPTERS,
    DEPTH_ENCODER_MERGER,
    DEPTH_FUSIONS,
    DEPTH_GATE,
    DEPTH_MODULE_NAMES,
    DEPTH_PATCH_EMBED,
)
from modeling_qwen2_5_vl_depth import DEPTH_MODULE_PREFIXES, Qwen2_5_VLDepthForConditionalGeneration
from processing_depth import Qwen2_5_VLDepthProcessor
from training.collator import DepthVLMCollator
from training.load import keep_in_float32, load_depth_model, load_rows, resume_checkpoint
from training.processed_cache import process_rows
from training.spatialbot import ARM_SUMMARIES, TRAINING_ARMS


# LoRA goes on every attention and MLP projection of the language model, and nowhere else: the vision tower and the
# depth encoder use the same projection names (gate_proj, up_proj, down_proj), hence a regex anchored on
# `language_model` (PEFT full-matches a string `target_modules` against module names).
LLM_LORA_TARGET_MODULES = (
    r".*\.language_model\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))"
)
# Depth modules trained in full next to the adapter (PEFT matches module names by suffix), as the fusion table says
# per mode (`DepthFusion.trained_in_sft`): e.g. the depth projector, which maps depth features into the LLM's
# embedding space, and the "add" fusion gate.
DEPTH_TRAINED_MODULES = tuple(dict.fromkeys(m for fusion in DEPTH_FUSIONS.values() for m in fusion.trained_in_sft))
# Modules bitsandbytes leaves unquantized under --load_in_4bit/8bit (start-of-name regexes; `lm_head` is transformers'
# own default, which an explicit list replaces).
UNQUANTIZED_MODULES = (r"model\.visual", *(rf"model\.{name}" for name in DEPTH_MODULE_NAMES), "lm_head")
DEPTH_PARAMETER_PREFIXES = DEPTH_MODULE_PREFIXES


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


def kbit_device_map() -> dict[str, int] | None:
    """Each process's quantized model whole on its own accelerator (bitsandbytes weights are placed as they load and
    cannot be moved later), as TRL's `get_kbit_device_map` did; None without an accelerator."""
    if torch.cuda.is_available() or torch.xpu.is_available():
        return {"": PartialState().local_process_index}
    return None


def model_init_kwargs(model_args: ModelConfig, training_args: SFTConfig, quantize: bool = True) -> dict:
    """`from_pretrained` keyword arguments of the starting model, built as TRL's own `sft` script builds them.

    `--model_revision`, `--trust_remote_code`, `--attn_implementation` and `--dtype`, then `--model_init_kwargs` over
    them; with `--load_in_4bit` / `--load_in_8bit` (and `quantize`) TRL's bitsandbytes config
    (`get_quantization_config`) and a device map per process (`kbit_device_map`). Only the language model is
    quantized (QLoRA): the vision towers are small next to it, the depth encoder is aligned to the unquantized RGB
    tower, and its merger trains in full.
    """
    kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": training_args.trust_remote_code,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
    }
    kwargs.update(training_args.model_init_kwargs or {})
    quantization_config = get_quantization_config(model_args) if quantize else None
    if quantization_config is not None:
        quantization_config.llm_int8_skip_modules = list(UNQUANTIZED_MODULES)
        kwargs["quantization_config"] = quantization_config
        kwargs["device_map"] = kbit_device_map()
    return kwargs


def load_starting_model(
    script_args: SpatialSFTScriptArguments, model_args: ModelConfig, training_args: SFTConfig, quantize: bool = True
) -> tuple[Qwen2_5_VLDepthForConditionalGeneration, Qwen2_5_VLDepthProcessor]:
    """The depth model and processor training starts from, deterministically (the adapter merge rebuilds it).

    From a base checkpoint (`--model_name_or_path`) every base weight is kept, so add/concat/none models share them
    exactly. From a Stage-1 folder (`--aligned_depth_model`) its weights are loaded as they are, with the fusion
    switched to `--depth_fusion`; its depth encoder must load in full (`training.load.load_depth_model`).
    """
    return load_depth_model(
        script_args.aligned_depth_model or model_args.model_name_or_path,
        script_args.depth_fusion,
        depth_estimator=script_args.depth_estimator,
        **model_init_kwargs(model_args, training_args, quantize),
    )


def depth_modules_to_train(model: Qwen2_5_VLDepthForConditionalGeneration) -> list[str]:
    """The depth modules trained in full for this fusion mode (its row of the fusion table)."""
    return list(model.config.fusion.trained_in_sft)


def make_lora_config(model_args: ModelConfig, model: Qwen2_5_VLDepthForConditionalGeneration):
    """TRL's LoRA config from `ModelConfig`, with Stage-2 defaults for what it targets and what it trains in full.

    `--lora_target_modules` given once is used as PEFT's string form (a regex, or "all-linear"); given several times
    it is a list of module-name suffixes, which also match the vision tower's and depth encoder's MLPs.
    """
    peft_config = get_peft_config(model_args)
    if peft_config is None:
        return None
    targets = model_args.lora_target_modules
    if targets is None:
        peft_config.target_modules = LLM_LORA_TARGET_MODULES
    elif len(targets) == 1:
        peft_config.target_modules = targets[0]
    if model_args.lora_modules_to_save is None:
        peft_config.modules_to_save = depth_modules_to_train(model) or None
    return peft_config


def freeze_for_full_finetuning(
    model: Qwen2_5_VLDepthForConditionalGeneration,
    train_vision_tower: bool = False,
    train_depth_encoder: bool = False,
    train_only_depth: bool = False,
) -> None:
    """Without LoRA: train the language model, depth merger and gate (and the RGB tower, the depth encoder's blocks if
    asked); freeze the rest. `train_only_depth`: the depth modules alone (the language model and RGB tower frozen)."""
    for name, parameter in model.named_parameters():
        is_depth = name.startswith(DEPTH_PARAMETER_PREFIXES)
        if is_depth:
            trains = (
                name.startswith(tuple(f"model.{module}." for module in DEPTH_TRAINED_MODULES)) or train_depth_encoder
            )
        elif train_only_depth:
            trains = False
        else:
            trains = not name.startswith("model.visual.") or train_vision_tower
        parameter.requires_grad_(trains)


def is_depth_parameter(name: str) -> bool:
    """A depth-module parameter (encoder, merger, gate), also under a PEFT wrapper's prefix."""
    return any(prefix in name for prefix in DEPTH_PARAMETER_PREFIXES)


@torch.no_grad()
def reinitialise_depth_fusion(
    model: Qwen2_5_VLDepthForConditionalGeneration, gate_init: float | None, merger_zero_init: bool
) -> None:
    """`--depth_merger_zero_init`: zero the depth projector's last linear layer, so depth adds exactly nothing yet
    gets the full gradient (not one scaled by tanh(0) = 0); `--depth_gate_init`: set the 'add' gate's channels."""
    fusion = model.config.fusion
    if merger_zero_init:
        if DEPTH_ENCODER_MERGER not in fusion.trained_in_sft:
            raise ValueError(
                "--depth_merger_zero_init needs a fusion that trains the depth projector ("
                + ", ".join(
                    name for name, other in DEPTH_FUSIONS.items() if DEPTH_ENCODER_MERGER in other.trained_in_sft
                )
                + f"), not {fusion.name!r}."
            )
        last = model.model.depth_encoder.merger.mlp[-1]
        last.weight.zero_()
        if last.bias is not None:
            last.bias.zero_()
    if gate_init is not None:
        if not fusion.has_gate:
            raise ValueError(
                "--depth_gate_init needs a gated fusion ("
                + ", ".join(name for name, other in DEPTH_FUSIONS.items() if other.has_gate)
                + f"), not {fusion.name!r}."
            )
        model.model.depth_gate.gate.fill_(gate_init)


def depth_fusion_stats(model: torch.nn.Module) -> dict[str, float]:
    """Scalars of the depth path to log during training: mean and max |tanh(gate)| ('add'), and the Frobenius norm
    of the depth projector's last layer (only trainable copies: a PEFT wrapper also holds the frozen original)."""
    stats = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if name.endswith(f"{DEPTH_GATE}.gate") or f"{DEPTH_GATE}.modules_to_save" in name:
            gate = parameter.detach().float().tanh().abs()
            stats.update(depth_gate_abs_mean=float(gate.mean()), depth_gate_abs_max=float(gate.max()))
        elif DEPTH_ENCODER_MERGER in name and name.endswith("mlp.2.weight"):
            stats["depth_merger_out_norm"] = float(parameter.detach().float().norm())
        elif DEPTH_PATCH_EMBED in name and name.endswith(".weight"):
            stats["depth_patch_embed_norm"] = float(parameter.detach().float().norm())
        elif DEPTH_ADAPTERS in name and name.endswith("up.weight"):  # all adapters' output layers together
            norm = float(parameter.detach().float().norm())
            stats["depth_adapter_up_norm"] = math.hypot(stats.get("depth_adapter_up_norm", 0.0), norm)
    return stats


class DepthFusionProbe:
    """Forward hooks that keep, for the last training batch, the mean L2 norm per token of what the RGB path computes
    and of what depth adds to it, at the modules the fusion table names (`DepthFusion.probe`: e.g. 'add' compares the
    RGB image tokens with tanh(gate) * projector output, 'rgbd' the RGB patch embedding with the depth channel's)."""

    def __init__(self, model: torch.nn.Module):
        self.norms: dict[str, float] = {}
        modules = dict(model.named_modules())
        # A PEFT wrapper keeps the module's name as a suffix. Without depth, the RGB image tokens alone.
        rgb_suffix, depth_suffix = model.config.fusion.probe or ("visual.merger", None)
        for name, module in modules.items():
            if name.endswith(rgb_suffix):
                module.register_forward_hook(self._hook("rgb_token_norm"))
            elif depth_suffix is not None and name.endswith(depth_suffix):
                module.register_forward_hook(self._hook("depth_added_norm"))

    def _hook(self, key: str):
        def hook(module, inputs, output):
            if isinstance(output, tuple) and output:  # the side adapters: the first one's residual
                output = output[0]
            if torch.is_tensor(output):
                self.norms[key] = float(output.detach().float().norm(dim=-1).mean())

        return hook

    def stats(self) -> dict[str, float]:
        stats = dict(self.norms)
        if "rgb_token_norm" in stats and "depth_added_norm" in stats and stats["rgb_token_norm"] > 0:
            stats["depth_to_rgb_norm_ratio"] = stats["depth_added_norm"] / stats["rgb_token_norm"]
        return stats


class DepthSFTTrainer(SFTTrainer):
    """`SFTTrainer` with a separate learning rate for the depth modules (`depth_lr`) and the depth path's gate,
    projector and token norms logged next to the loss (so they land in `log_history` and the loss-curve JSON)."""

    def __init__(self, *args, depth_lr: float | None = None, **kwargs):
        self.depth_lr = depth_lr
        super().__init__(*args, **kwargs)
        self.depth_probe = DepthFusionProbe(self.model)

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        if self.depth_lr is None:
            return optimizer
        names = {id(parameter): name for name, parameter in (model or self.model).named_parameters()}
        groups = []
        for group in optimizer.param_groups:
            params = group.pop("params")
            depth = [p for p in params if is_depth_parameter(names.get(id(p), ""))]
            rest = [p for p in params if not is_depth_parameter(names.get(id(p), ""))]
            if rest:
                groups.append({**group, "params": rest})
            if depth:
                groups.append({**group, "params": depth, "lr": self.depth_lr})
        optimizer.param_groups = []
        for group in groups:
            optimizer.add_param_group(group)
        return optimizer

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs:  # training logs only
            logs = {**logs, **depth_fusion_stats(self.model), **self.depth_probe.stats()}
        super().log(logs, *args, **kwargs)


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


def is_depth_module_parameter(name: str) -> bool:
    """Whether a parameter (plain or PEFT-wrapped name) belongs to a depth module trained in full (merger, gate,
    depth channel)."""
    return any(f".{module}." in f".{name}" for module in DEPTH_TRAINED_MODULES)


def merged_model_from_adapter(
    adapter_dir: str | Path, script_args: SpatialSFTScriptArguments, model_args: ModelConfig, training_args: SFTConfig
) -> Qwen2_5_VLDepthForConditionalGeneration:
    """Rebuild the starting model (unquantized), load the saved adapter (and full depth modules) into it and merge.

    Used when training sharded the weights (FSDP, DeepSpeed): the adapter saved by `trainer.save_model` is gathered,
    the in-memory model is not; and after QLoRA, whose 4/8-bit weights the adapter must not be merged into.
    """
    from peft import PeftModel

    model, _ = load_starting_model(script_args, model_args, training_args, quantize=False)
    return PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()


def export_merged_model(
    trainer: SFTTrainer,
    export_dir: str | Path,
    script_args: SpatialSFTScriptArguments,
    model_args: ModelConfig,
) -> Path:
    """Merge LoRA into the weights and save a plain depth-model folder (model, processor, remote code).

    Call on every rank. Unsharded (single process, DDP), the main process merges the trained model in place, which
    leaves `trainer.model` merged. Sharded, the adapter is first gathered into `output_dir` and merged into a rebuilt
    copy of the starting model; so is a QLoRA adapter (saved there by `finish`), into the unquantized model.
    """
    accelerator = trainer.accelerator
    export_dir = Path(export_dir)
    model = accelerator.unwrap_model(trainer.model)
    is_peft = hasattr(model, "merge_and_unload")
    sharded = trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled
    quantized = model_args.load_in_4bit or model_args.load_in_8bit
    if sharded:
        trainer.save_model(trainer.args.output_dir)  # collective: gathers the full adapter / weights
    if accelerator.is_main_process:
        if (sharded or quantized) and is_peft:
            model = merged_model_from_adapter(trainer.args.output_dir, script_args, model_args, trainer.args)
        elif sharded:
            model = Qwen2_5_VLDepthForConditionalGeneration.from_pretrained(trainer.args.output_dir)
        elif is_peft:
            model = model.merge_and_unload()
        model.save_pretrained(export_dir)
        trainer.processing_class.save_pretrained(export_dir)
    accelerator.wait_for_everyone()
    return export_dir


def write_loss_curve(log_history: list[dict], png_path: str | Path, title: str = "Stage 2 spatial SFT") -> Path:
    """Plot training and evaluation loss per step from `trainer.state.log_history`; the history goes next to it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    png_path.with_suffix(".json").write_text(json.dumps(log_history, indent=1) + "\n")
    train = [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry]
    evaluation = [(entry["step"], entry["eval_loss"]) for entry in log_history if "eval_loss" in entry]
    figure, axis = plt.subplots(figsize=(7, 4), dpi=120)
    if train:
        axis.plot(*zip(*train), label="train loss (answer tokens)", color="tab:blue")
    if evaluation:
        axis.plot(*zip(*evaluation), "o--", label="eval loss (answer tokens)", color="tab:orange")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("cross-entropy (nats/token)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(png_path)
    plt.close(figure)
    return png_path


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
