"""Depth-tower efficiency: analytic FLOPs, achieved TFLOP/s and MFU, with the stock RGB tower measured beside it.

    python -m bench.bench_depth_tower --size 3b --compile --out bench/results/depth_tower_3b_h100.json  # GPU, real
    python -m bench.bench_depth_tower --size tiny --out bench/results/depth_tower_tiny_cpu.json  # CPU smoke (CI)

Rows: the stock RGB tower, the depth tower at each `--encoder-layers` size, the default-size depth tower with the RGB
tower's unaligned MLP width (when the default pads it, e.g. 3420 -> 3456: the padding's own effect), and with
`--compile` each depth tower again with `torch.compile` on its blocks. `ms_vs_stock_rgb_tower` compares with the RGB
tower at the same image size and batch. FLOPs are those executed (a padded MLP counts its zero units, +1% at 3456).
MFU is against the H100's dense bf16 peak (989 TFLOP/s); on other devices it is printed for reference only.
"""

import argparse
import copy

import torch
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

from bench.common import (
    H100_BF16_DENSE_PEAK_TFLOPS,
    compile_depth_blocks,
    depth_config_for,
    report,
    time_ms,
)
from fast_qwen2_5_vl import Qwen2_5_VLBatchedVisionAttention
from modeling_qwen2_5_vl_depth import Qwen2_5_VLDepthEncoder


def tower_flops(config, images: int, tokens_per_image: int, window_tokens: int | None, out_width: int) -> float:
    """Forward FLOPs (2 per multiply-add) of a Qwen2.5-VL vision tower over `images` square images.

    Blocks listed in `fullatt_block_indexes` attend over the whole image, the others within windows of
    `window_tokens` (the RGB tower: 112 px windows, 64 tokens); the depth tower attends fully everywhere.
    """
    width, mlp, tokens = config.hidden_size, config.intermediate_size, images * tokens_per_image
    patch_inputs = config.in_channels * config.temporal_patch_size * config.patch_size**2
    flops = 2 * tokens * patch_inputs * width
    full_blocks = set(config.fullatt_block_indexes)
    for block in range(config.depth):
        span = tokens_per_image if (block in full_blocks or window_tokens is None) else window_tokens
        flops += 2 * tokens * width * 3 * width  # qkv
        flops += 2 * 2 * tokens * span * width  # scores and weighted sum
        flops += 2 * tokens * width * width  # output projection
        flops += 3 * 2 * tokens * width * mlp  # SwiGLU MLP: gate, up, down
    merge = config.spatial_merge_size**2
    merged = tokens // merge
    flops += 2 * merged * (width * merge) ** 2 + 2 * merged * width * merge * out_width
    return flops


def add_ratios_vs_stock(rows: list[dict]) -> None:
    """`ms_vs_stock_rgb_tower`: each row's time over the stock RGB tower's at the same image size and batch."""
    stock_ms = {(r["image"], r["batch"]): r["ms"] for r in rows if r["tower"] == "rgb tower (stock)"}
    for row in rows:
        row["ms_vs_stock_rgb_tower"] = row["ms"] / stock_ms[(row["image"], row["batch"])]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=["tiny", "3b", "7b"], default="tiny")
    parser.add_argument("--encoder-layers", type=int, nargs="+", default=None, help="depth encoder sizes to time")
    parser.add_argument(
        "--compile", action="store_true", help="also time each depth tower with torch.compile on its blocks"
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    tiny = args.size == "tiny"
    device = torch.device("cuda" if torch.cuda.is_available() and not tiny else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shapes = [(56, 1), (112, 2)] if tiny else [(448, 1), (896, 1), (448, 8), (896, 8)]
    config = depth_config_for(args.size)
    vision = config.vision_config
    encoder_layers = args.encoder_layers or sorted({config.depth_config.depth, vision.depth})
    vision._attn_implementation = "sdpa"
    encoder_configs = {
        f"depth tower ({layers} blocks)": config.default_depth_config(depth=layers) for layers in encoder_layers
    }
    if config.depth_config.intermediate_size != vision.intermediate_size:
        name = f"depth tower ({config.depth_config.depth} blocks, MLP {vision.intermediate_size} unpadded)"
        encoder_configs[name] = config.default_depth_config(intermediate_size=vision.intermediate_size)
    with torch.device(device):
        rgb_tower = Qwen2_5_VisionTransformerPretrainedModel(vision).to(dtype).eval()
        # The RGB tower as Qwen2_5_VLDepthModel runs it: same weights, its windows batched into one attention call.
        batched_rgb_tower = copy.deepcopy(rgb_tower)
        for block in batched_rgb_tower.blocks:
            block.attn = Qwen2_5_VLBatchedVisionAttention(vision).to(dtype)
        batched_rgb_tower.load_state_dict(rgb_tower.state_dict())
        depth_towers = {}
        for name, encoder_config in encoder_configs.items():
            encoder_config._attn_implementation = "sdpa"
            depth_towers[name] = Qwen2_5_VLDepthEncoder(encoder_config).to(dtype).eval()
    if args.compile:
        for layers in encoder_layers:
            plain = depth_towers[f"depth tower ({layers} blocks)"]
            depth_towers[f"depth tower ({layers} blocks, compiled)"] = compile_depth_blocks(copy.deepcopy(plain))
    window_tokens = (vision.window_size // vision.patch_size) ** 2
    rows = []
    generator = torch.Generator().manual_seed(0)
    for side, batch in shapes:
        grid = side // vision.patch_size
        tokens_per_image = grid * grid
        grid_thw = torch.tensor([[1, grid, grid]] * batch, device=device)
        pixels = torch.randn(batch * tokens_per_image, 3 * 2 * vision.patch_size**2, generator=generator)
        depth = torch.rand(batch * tokens_per_image, vision.patch_size**2, generator=generator) * 2 - 1
        pixels, depth = pixels.to(device, dtype), depth.to(device, dtype)
        candidates = [
            ("rgb tower (stock)", rgb_tower, pixels, vision, window_tokens),
            ("rgb tower (ours: batched windows)", batched_rgb_tower, pixels, vision, window_tokens),
        ]
        candidates += [(name, tower, depth, tower.config, None) for name, tower in depth_towers.items()]
        for name, tower, tower_input, tower_config, windows in candidates:
            with torch.inference_mode():
                milliseconds = time_ms(lambda t=tower, x=tower_input, g=grid_thw: t(x, grid_thw=g), device)
            flops = tower_flops(tower_config, batch, tokens_per_image, windows, config.text_config.hidden_size)
            achieved = flops / (milliseconds / 1000) / 1e12
            rows.append(
                {
                    "tower": name,
                    "image": f"{side}x{side}",
                    "batch": batch,
                    "ms": milliseconds,
                    "tflop": flops / 1e12,
                    "tflop_per_s": achieved,
                    "mfu_vs_h100_bf16": achieved / H100_BF16_DENSE_PEAK_TFLOPS,
                }
            )
    add_ratios_vs_stock(rows)
    columns = ["tower", "image", "batch", "ms", "ms_vs_stock_rgb_tower", "tflop", "tflop_per_s", "mfu_vs_h100_bf16"]
    return report("depth_tower", rows, columns, args.out, size=args.size, dtype=str(dtype), compile=args.compile)


if __name__ == "__main__":
    main()
