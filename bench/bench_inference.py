"""Inference cost of depth: stock Qwen2.5-VL vs the depth model (each fusion of the fusion table that has a depth
encoder, with the default and a full-size encoder).

    python -m bench.bench_inference --size 3b --compile --out bench/results/inference_3b_h100.json  # GPU, real config
    python -m bench.bench_inference --size tiny --out bench/results/inference_tiny_cpu.json  # CPU smoke (CI)

For each image size and batch: prefill ms (one forward over the prompt, last logits only, as `generate` does), decode
tokens/s (greedy, KV cache), peak memory and visual token count. Ratios against the base model come from the same
run. Random weights: time and memory do not depend on weight values. `--compile` adds `add-compiled`: the `add`
model with `torch.compile` on the depth encoder's blocks, the rest eager (bench_depth_tower compares compiled and eager
towers of every size).
"""

import argparse
import gc

import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from bench.common import (
    compile_depth_blocks,
    depth_config_for,
    peak_memory_gib,
    report,
    reset_peak_memory,
    time_ms,
)
from configuration_depth import DEFAULT_DEPTH_FUSION, DEPTH_ADAPTERS, DEPTH_FUSIONS, RGB_ONLY_FUSION
from modeling_qwen2_5_vl_depth import Qwen2_5_VLDepthForConditionalGeneration


PROMPT_TEXT_TOKENS = 24  # system + question tokens around the image, as in a short spatial question


def synthetic_inputs(config, image_side: int, batch: int, fusion: str, device, dtype) -> dict:
    """Model inputs laid out exactly as Qwen2_5_VLDepthProcessor lays them out, without a tokenizer."""
    patch, merge = config.vision_config.patch_size, config.vision_config.spatial_merge_size
    grid = image_side // patch
    num_patches, num_tokens = grid * grid, grid * grid // merge**2
    text = torch.full((PROMPT_TEXT_TOKENS,), 100)
    # With depth tokens (concat), an image's run of placeholders also holds them: twice as long.
    run = DEPTH_FUSIONS[fusion].tokens_per_image_with_depth * num_tokens
    vision = [
        torch.tensor([config.vision_start_token_id]),
        torch.full((run,), config.image_token_id),
        torch.tensor([config.vision_end_token_id]),
    ]
    types = [torch.zeros(PROMPT_TEXT_TOKENS // 2 + 1), torch.ones(run), torch.zeros(1)]
    half = PROMPT_TEXT_TOKENS // 2
    input_ids = torch.cat([text[:half], *vision, text[half:]]).long()
    token_types = torch.cat([*types, torch.zeros(PROMPT_TEXT_TOKENS - half)]).int()
    generator = torch.Generator().manual_seed(0)
    inputs = {
        "input_ids": input_ids.repeat(batch, 1),
        "attention_mask": torch.ones(batch, input_ids.numel(), dtype=torch.long),
        "mm_token_type_ids": token_types.repeat(batch, 1),
        "pixel_values": torch.randn(batch * num_patches, 3 * 2 * patch * patch, generator=generator),
        "image_grid_thw": torch.tensor([[1, grid, grid]] * batch),
    }
    if DEPTH_FUSIONS[fusion].has_depth:
        inputs["depth_values"] = torch.rand(batch * num_patches, patch * patch, generator=generator) * 10 + 0.3
    return {
        k: v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device) for k, v in inputs.items()
    }, num_tokens


def build(
    size: str, fusion: str, encoder_layers: int | None, device, dtype, compile_depth: bool = False, stock: bool = False
):
    overrides = {"depth_fusion": fusion}
    if encoder_layers is not None:
        overrides["depth_config"] = {"depth": encoder_layers}
    config = depth_config_for(size, **overrides)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    # `stock`: transformers' own Qwen2.5-VL class (the anchor). This project's class with `fusion="none"` is the same
    # model with the RGB tower's windows batched into one attention call: it separates that gain from depth's cost.
    model_class = Qwen2_5_VLForConditionalGeneration if stock else Qwen2_5_VLDepthForConditionalGeneration
    with torch.device(device):
        model = model_class(config)
    open_depth_path(model)
    model = model.to(dtype).eval()
    if compile_depth:
        compile_depth_blocks(model.model.depth_encoder)
    return model, config


@torch.no_grad()
def open_depth_path(model) -> None:
    """Move the zero-initialised depth modules off zero (a gate, adapter outputs), so the depth path is fully computed
    and used, as in a trained model."""
    if model.config.fusion.has_gate:
        model.model.depth_gate.gate.fill_(0.5)
    if DEPTH_ADAPTERS in model.config.fusion.modules:
        for adapter in model.model.depth_adapters.adapters:
            adapter.up.weight.normal_(0, 0.02)


def measure(model, config, fusion, side, batch, decode_tokens, device, dtype) -> dict:
    inputs, visual_tokens = synthetic_inputs(config, side, batch, fusion, device, dtype)
    with torch.inference_mode():
        reset_peak_memory(device)
        prefill = time_ms(lambda: model(**inputs, logits_to_keep=1), device)
        settings = {"max_new_tokens": decode_tokens, "min_new_tokens": decode_tokens, "do_sample": False}
        generate = time_ms(lambda: model.generate(**inputs, **settings), device, warmup=1, repeats=3)
    decode_ms = generate - prefill
    decode_tokens_per_s = batch * decode_tokens / decode_ms * 1000 if decode_ms > 0 else None
    return {
        "prefill_ms": prefill,
        "decode_tokens_per_s": decode_tokens_per_s,
        "peak_memory_gib": peak_memory_gib(device),
        "visual_tokens": visual_tokens * DEPTH_FUSIONS[fusion].tokens_per_image_with_depth,
        "sequence_length": inputs["input_ids"].shape[1],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=["tiny", "3b", "7b"], default="tiny")
    parser.add_argument("--image-sides", type=int, nargs="+", default=None)
    parser.add_argument("--batches", type=int, nargs="+", default=None)
    parser.add_argument("--decode-tokens", type=int, default=None)
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time the add model with torch.compile on the depth encoder blocks",
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    tiny = args.size == "tiny"
    device = torch.device("cuda" if torch.cuda.is_available() and not tiny else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    sides = args.image_sides or ([56, 112] if tiny else [448, 896])
    batches = args.batches or ([1, 2] if tiny else [1, 8])
    decode_tokens = args.decode_tokens or (4 if tiny else 32)
    full_layers = depth_config_for(args.size).vision_config.depth
    variants = [  # (name, fusion, depth encoder blocks, compiled, stock class)
        ("base", RGB_ONLY_FUSION, None, False, True),
        ("rgb-only (ours)", RGB_ONLY_FUSION, None, False, False),
    ]
    for name, fusion in DEPTH_FUSIONS.items():  # each fusion with a depth encoder, at the default and the full depth
        if fusion.has_depth_encoder:
            variants += [(name, name, None, False, False), (f"{name}-full", name, full_layers, False, False)]
    if args.compile:
        variants.append((f"{DEFAULT_DEPTH_FUSION}-compiled", DEFAULT_DEPTH_FUSION, None, True, False))
    rows = []
    for name, fusion, layers, compile_depth, stock in variants:
        model, config = build(args.size, fusion, layers, device, dtype, compile_depth, stock)
        for side in sides:
            for batch in batches:
                row = {"variant": name, "image": f"{side}x{side}", "batch": batch}
                row.update(measure(model, config, fusion, side, batch, decode_tokens, device, dtype))
                row["depth_layers"] = config.depth_config.depth if config.has_depth_encoder else 0
                rows.append(row)
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    base = {(r["image"], r["batch"]): r for r in rows if r["variant"] == "base"}
    ours = {(r["image"], r["batch"]): r for r in rows if r["variant"] == "rgb-only (ours)"}
    for row in rows:
        reference = base[(row["image"], row["batch"])]
        row["prefill_vs_base"] = row["prefill_ms"] / reference["prefill_ms"]
        # What depth itself costs: against the same model without depth.
        row["prefill_vs_ours_rgb_only"] = row["prefill_ms"] / ours[(row["image"], row["batch"])]["prefill_ms"]
        if row["decode_tokens_per_s"] and reference["decode_tokens_per_s"]:
            row["decode_vs_base"] = row["decode_tokens_per_s"] / reference["decode_tokens_per_s"]
    columns = ["variant", "image", "batch", "depth_layers", "visual_tokens", "prefill_ms", "prefill_vs_base"]
    columns += ["prefill_vs_ours_rgb_only"]
    columns += ["decode_tokens_per_s", "decode_vs_base", "peak_memory_gib"]
    return report("inference", rows, columns, args.out, size=args.size, dtype=str(dtype), compile=args.compile)


if __name__ == "__main__":
    main()
