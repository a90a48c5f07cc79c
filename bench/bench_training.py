"""Training throughput: Stage 1 alignment (pairs/s, depth-tower MFU) and Stage 2 LoRA SFT (samples/s, peak memory).

    python -m bench.bench_training --size 3b --out bench/results/training_3b_h100.json     # GPU, real config
    python -m bench.bench_training --size tiny --out bench/results/training_tiny_cpu.json  # CPU smoke (CI)

Alignment runs `training.align.DepthAlignmentModel` (frozen RGB tower, trainable depth encoder, dense InfoNCE) for a
few optimizer steps; its MFU counts the depth tower's forward and backward (3x the forward FLOPs of
`bench.bench_depth_tower.tower_flops`) against the H100's dense bf16 peak. SFT runs the depth model with LoRA on the
LLM projections (as `training.sft` builds it), gradient checkpointing on GPU, over synthetic prompts of the real
layout; peak memory is what a 24 GB card would have to hold. Random weights: speed and memory do not depend on them.
"""

import argparse
import time

import torch
from peft import LoraConfig, get_peft_model

from bench.bench_depth_tower import tower_flops
from bench.bench_inference import build, synthetic_inputs
from bench.common import (
    H100_BF16_DENSE_PEAK_TFLOPS,
    peak_memory_gib,
    print_table,
    report,
    reset_peak_memory,
    synchronize,
)
from configuration_depth import DEFAULT_DEPTH_FUSION, DEPTH_ENCODER_MERGER
from training.align import DepthAlignmentModel
from training.sft_policy import LLM_LORA_TARGET_MODULES


def timed_steps(step, device: torch.device, warmup: int, steps: int) -> float:
    """Seconds per optimizer step, after warm-up."""
    for _ in range(warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def bench_alignment(size: str, side: int, batch: int, device, dtype, steps: int) -> dict:
    model, config = build(size, DEFAULT_DEPTH_FUSION, None, device, dtype)
    aligner = DepthAlignmentModel.from_depth_model(model, alignment="dense").to(device)
    del model
    inputs, _ = synthetic_inputs(config, side, batch, DEFAULT_DEPTH_FUSION, device, dtype)
    optimizer = torch.optim.AdamW([p for p in aligner.parameters() if p.requires_grad], lr=1e-4)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step():
        with autocast:
            loss = aligner(inputs["pixel_values"], inputs["image_grid_thw"], inputs["depth_values"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    reset_peak_memory(device)
    seconds = timed_steps(step, device, warmup=2, steps=steps)
    grid = side // config.vision_config.patch_size
    flops = 3 * tower_flops(config.depth_config, batch, grid * grid, None, config.text_config.hidden_size)
    achieved = flops / seconds / 1e12
    return {
        "stage": "alignment (dense)",
        "image": f"{side}x{side}",
        "batch": batch,
        "step_ms": seconds * 1000,
        "samples_per_s": batch / seconds,
        "depth_tower_tflop_per_s": achieved,
        "depth_tower_mfu_vs_h100_bf16": achieved / H100_BF16_DENSE_PEAK_TFLOPS,
        "peak_memory_gib": peak_memory_gib(device),
    }


def bench_sft(size: str, side: int, batch: int, device, dtype, steps: int) -> dict:
    model, config = build(size, DEFAULT_DEPTH_FUSION, None, device, dtype)
    model.train()
    if device.type == "cuda":
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    lora = LoraConfig(
        r=16, lora_alpha=32, target_modules=LLM_LORA_TARGET_MODULES, modules_to_save=[DEPTH_ENCODER_MERGER]
    )
    model = get_peft_model(model, lora)
    inputs, _ = synthetic_inputs(config, side, batch, DEFAULT_DEPTH_FUSION, device, dtype)
    labels = inputs["input_ids"].clone()
    labels[:, :-8] = -100  # the answer: the last few tokens, as the collator labels it
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step():
        model(**inputs, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    reset_peak_memory(device)
    seconds = timed_steps(step, device, warmup=1, steps=steps)
    return {
        "stage": "LoRA SFT (add)",
        "image": f"{side}x{side}",
        "batch": batch,
        "step_ms": seconds * 1000,
        "samples_per_s": batch / seconds,
        "peak_memory_gib": peak_memory_gib(device),
        "gradient_checkpointing": device.type == "cuda",
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=["tiny", "3b", "7b"], default="tiny")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    tiny = args.size == "tiny"
    device = torch.device("cuda" if torch.cuda.is_available() and not tiny else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    steps = args.steps or (2 if tiny else 10)
    rows = [
        bench_alignment(args.size, 112 if tiny else 448, 4 if tiny else 64, device, dtype, steps),
        bench_sft(args.size, 112 if tiny else 448, 2 if tiny else 8, device, dtype, steps),
    ]
    print_table(rows[:1], ["stage", "depth_tower_tflop_per_s", "depth_tower_mfu_vs_h100_bf16"])
    columns = ["stage", "image", "batch", "step_ms", "samples_per_s", "peak_memory_gib"]
    return report("training", rows, columns, args.out, size=args.size, dtype=str(dtype))


if __name__ == "__main__":
    main()
