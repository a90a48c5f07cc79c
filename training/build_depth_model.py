"""Turn a plain Qwen2.5-VL checkpoint into a Qwen2.5-VL-Depth folder (model + processor + remote code).

    python -m training.build_depth_model --base Qwen/Qwen2.5-VL-3B-Instruct --out runs/depth-add --depth-fusion add
    python -m training.build_depth_model --base Qwen/Qwen2.5-VL-3B-Instruct --out runs/points-add --depth-input points

Every base weight is kept; only the depth modules are new (the depth encoder starts from the RGB tower unless
`--no-init-from-rgb`). The folder loads anywhere with `AutoModelForImageTextToText.from_pretrained(out,
trust_remote_code=True)` and `AutoProcessor.from_pretrained(out, trust_remote_code=True)`.
"""

import argparse
from pathlib import Path

from configuration_depth import DEFAULT_DEPTH_FUSION, DEFAULT_DEPTH_INPUT, DEPTH_INPUTS
from modeling_qwen2_5_vl_depth import Qwen2_5_VLDepthForConditionalGeneration
from processing_depth import Qwen2_5_VLDepthProcessor
from training.provenance import base_model_provenance
from training.spatialbot import TRAINING_ARMS, model_depth_fusion, processor_for_arm


def build_depth_model(
    base: str | Path,
    depth_fusion: str = DEFAULT_DEPTH_FUSION,
    depth_estimator: str | None = None,
    depth_layers: int | None = None,
    init_from_rgb: bool = True,
    depth_input: str = DEFAULT_DEPTH_INPUT,
    **from_pretrained_kwargs,
) -> tuple[Qwen2_5_VLDepthForConditionalGeneration, Qwen2_5_VLDepthProcessor]:
    """A depth model and its processor from a base Qwen2.5-VL folder or hub id.

    `depth_fusion` is one of the model's modes, or "image": an RGB-only model with `training.spatialbot`'s processor.
    `depth_input` is what the depth path sees of each pixel (`configuration_depth.DEPTH_INPUTS`): its depth, or its
    camera-frame 3D point from depth and intrinsics ("points").
    """
    revision = {"revision": from_pretrained_kwargs["revision"]} if "revision" in from_pretrained_kwargs else {}
    processor = processor_for_arm(base, depth_fusion, depth_estimator=depth_estimator, **revision)
    config_overrides = {
        "depth_fusion": model_depth_fusion(depth_fusion),
        "depth_init_from_rgb": init_from_rgb,
        "depth_input": depth_input,
        # What the exported model card names as `base_model` (a hub id; a local folder is left out there).
        "base_model_name_or_path": base_model_provenance(base),
    }
    if depth_layers is not None:
        config_overrides["depth_config"] = {"depth": depth_layers}
    model = Qwen2_5_VLDepthForConditionalGeneration.from_pretrained(base, **config_overrides, **from_pretrained_kwargs)
    return model, processor


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="Qwen2.5-VL folder or hub id")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--depth-fusion", choices=TRAINING_ARMS, default=DEFAULT_DEPTH_FUSION)
    parser.add_argument("--depth-estimator", default=None, help="DepthAnything id/folder for images without depth")
    parser.add_argument("--depth-layers", type=int, default=None, help="depth encoder blocks (default: 8)")
    parser.add_argument("--no-init-from-rgb", dest="init_from_rgb", action="store_false")
    parser.add_argument(
        "--depth-input",
        choices=tuple(DEPTH_INPUTS),
        default=DEFAULT_DEPTH_INPUT,
        help="; ".join(f"{name}: {entry.summary}" for name, entry in DEPTH_INPUTS.items()),
    )
    args = parser.parse_args(argv)
    model, processor = build_depth_model(
        args.base, args.depth_fusion, args.depth_estimator, args.depth_layers, args.init_from_rgb, args.depth_input
    )
    model.save_pretrained(args.out)
    processor.save_pretrained(args.out)
    print(f"Wrote {args.out} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters)")


if __name__ == "__main__":
    main()
