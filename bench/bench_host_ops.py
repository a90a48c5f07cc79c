"""Host-side work per training step: aten ops one forward pass dispatches, by region, stock Qwen2.5-VL vs this model.

    python -m bench.bench_host_ops --size small --batch 128 --out bench/results/host_ops_small_cpu.json
    python -m bench.bench_host_ops --size tiny --batch 4                        # CPU smoke (CI)

A small model's step on a GPU is bound by the host: every aten op is a Python dispatch, and on the device a kernel
launch (and sometimes a sync), whatever the tensor size. Stock Qwen2.5-VL rebuilds its M-RoPE index and the vision
towers' position ids and window indices image by image, so their op count grows with the batch while the blocks'
does not. This counts the ops each region dispatches in one forward (caches warm, as in training), on the CPU:
counts, not timings, so they are the same on any machine. Inputs are laid out as the processor lays them out
(`bench.bench_inference.synthetic_inputs`), images of 224x224.
"""

import argparse
import functools
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import Qwen2_5_VLForConditionalGeneration

from bench.bench_inference import synthetic_inputs
from bench.common import depth_config_for, report
from configuration_depth import DEFAULT_DEPTH_FUSION, RGB_ONLY_FUSION
from modeling_qwen2_5_vl_depth import Qwen2_5_VLDepthForConditionalGeneration


REGIONS = ("rope index", "vision tower outside blocks", "vision blocks", "depth encoder outside blocks")
REGIONS += ("depth blocks", "language model layers", "other")


class OpCounter(TorchDispatchMode):
    """Counts dispatched aten ops under the innermost region label that is active."""

    def __init__(self):
        super().__init__()
        self.counts = Counter()
        self.region = "other"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[self.region] += 1
        return func(*args, **(kwargs or {}))

    def label(self, owner, method: str, region: str) -> None:
        original = getattr(owner, method)

        @functools.wraps(original)
        def labelled(*args, **kwargs):
            outer, self.region = self.region, region
            try:
                return original(*args, **kwargs)
            finally:
                self.region = outer

        setattr(owner, method, labelled)


def count_forward(model, inputs) -> Counter:
    counter = OpCounter()
    inner = model.model
    counter.label(inner, "get_rope_index", "rope index")
    counter.label(inner, "get_image_features", "vision tower outside blocks")
    for block in inner.visual.blocks:
        counter.label(block, "forward", "vision blocks")
    for layer in inner.language_model.layers:
        counter.label(layer, "forward", "language model layers")
    if getattr(inner, "depth_encoder", None) is not None:
        counter.label(inner, "get_depth_features", "depth encoder outside blocks")
        for block in inner.depth_encoder.blocks:
            counter.label(block, "forward", "depth blocks")
    with torch.no_grad():
        model(**inputs)  # warm-up: per-grid caches filled, as after a training step
        with counter:
            model(**inputs)
    return counter.counts


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=["tiny", "mini", "small"], default="tiny")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--image-side", type=int, default=224)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for variant, fusion, model_class in [
        ("stock Qwen2.5-VL", RGB_ONLY_FUSION, Qwen2_5_VLForConditionalGeneration),
        ("ours, rgb-only", RGB_ONLY_FUSION, Qwen2_5_VLDepthForConditionalGeneration),
        (f"ours, {DEFAULT_DEPTH_FUSION}", DEFAULT_DEPTH_FUSION, Qwen2_5_VLDepthForConditionalGeneration),
    ]:
        config = depth_config_for(args.size, depth_fusion=fusion)
        config._attn_implementation = "sdpa"
        torch.manual_seed(0)
        model = model_class(config).eval()
        inputs, _ = synthetic_inputs(config, args.image_side, args.batch, fusion, torch.device("cpu"), torch.float32)
        counts = count_forward(model, inputs)
        rows.append({"variant": variant, **{region: counts[region] for region in REGIONS}, "total": counts.total()})
    return report(
        "host_ops", rows, ["variant", *REGIONS, "total"], args.out, size=args.size, batch=args.batch,
        image_side=args.image_side,
    )  # fmt: skip


if __name__ == "__main__":
    main()
