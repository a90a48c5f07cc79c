"""Loading depth models: a Qwen2.5-VL-Depth model and its processor, from a depth-model folder or built from a base.

* `load_depth_model`: from a depth-model folder (its fusion optionally switched) or built from a plain Qwen2.5-VL
  base, with the base recorded in the config (`base_model_name_or_path`, `training.provenance`) so that every later
  folder (alignment, SFT, export) still names it.
* `load_starting_model`: the depth model a TRL run (`training.sft`) starts from, with the `from_pretrained` arguments
  TRL's own `sft` script builds from `ModelConfig` (`model_init_kwargs`; QLoRA's quantization and device map).
* `keep_in_float32`: trainable weights stay fp32 under bf16/fp16 mixed precision.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from accelerate import PartialState
from trl import get_quantization_config

from configuration_depth import DEFAULT_DEPTH_FUSION, DEPTH_ENCODER
from modeling_qwen2_5_vl_depth import Qwen2_5_VLDepthForConditionalGeneration
from processing_depth import Qwen2_5_VLDepthProcessor
from training.build_depth_model import build_depth_model
from training.provenance import base_model_provenance
from training.sft_policy import UNQUANTIZED_MODULES
from training.spatialbot import model_depth_fusion, processor_for_arm


if TYPE_CHECKING:
    from trl import ModelConfig, SFTConfig

    from training.sft_arguments import SpatialSFTScriptArguments


DEPTH_MODEL_TYPE = Qwen2_5_VLDepthForConditionalGeneration.config_class.model_type


def is_depth_checkpoint(name_or_path: str | Path, revision: str | None = None) -> bool:
    """Whether the folder or hub id holds a Qwen2.5-VL-Depth model (rather than a plain Qwen2.5-VL)."""
    from transformers import PreTrainedConfig

    config_dict, _ = PreTrainedConfig.get_config_dict(str(name_or_path), revision=revision)
    return config_dict.get("model_type") == DEPTH_MODEL_TYPE


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
    switched to `--depth_fusion`; its depth encoder must load in full (`training.model_loading.load_depth_model`).
    """
    depth_input = {"depth_input": script_args.depth_input} if script_args.depth_input else {}
    return load_depth_model(
        script_args.aligned_depth_model or model_args.model_name_or_path,
        script_args.depth_fusion,
        depth_estimator=script_args.depth_estimator,
        **depth_input,
        **model_init_kwargs(model_args, training_args, quantize),
    )
