"""What Stage 2 trains, per fusion mode: where LoRA goes, which depth modules train in full next to it, what full
fine-tuning freezes, what stays unquantized under QLoRA, and how the depth path is re-initialised before training.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from trl import get_peft_config

from configuration_depth import DEPTH_ENCODER_MERGER, DEPTH_FUSIONS, DEPTH_MODULE_NAMES


if TYPE_CHECKING:
    from trl import ModelConfig

    from modeling_qwen2_5_vl_depth import Qwen2_5_VLDepthForConditionalGeneration


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
# Every depth module's parameters (the modeling file's `DEPTH_MODULE_PREFIXES`, from the same names).
DEPTH_PARAMETER_PREFIXES = tuple(f"model.{name}." for name in DEPTH_MODULE_NAMES)


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
    trained_in_full = tuple(f"model.{module}." for module in model.config.fusion.trained_in_sft)
    for name, parameter in model.named_parameters():
        is_depth = name.startswith(DEPTH_PARAMETER_PREFIXES)
        if is_depth:
            trains = name.startswith(trained_in_full) or train_depth_encoder
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


def is_depth_module_parameter(name: str) -> bool:
    """Whether a parameter (plain or PEFT-wrapped name) belongs to a depth module trained in full (merger, gate,
    depth channel)."""
    return any(f".{module}." in f".{name}" for module in DEPTH_TRAINED_MODULES)
