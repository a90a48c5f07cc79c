"""Configuration of Qwen2.5-VL-Depth: Qwen2.5-VL plus a depth encoder.

This file is remote code: it imports only `torch`, `transformers` and the project's own remote-code files, so a
model folder that carries it loads with `from_pretrained(..., trust_remote_code=True)`.
"""

import math
from dataclasses import dataclass

from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import SubConfigSpec
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLConfig, Qwen2_5_VLVisionConfig


# The depth modules, by their names under the depth model's `model.` (what a base Qwen2.5-VL checkpoint lacks).
DEPTH_ENCODER = "depth_encoder"  # Qwen2.5-VL vision blocks over the depth map (a copy of the RGB tower's first ones)
DEPTH_ENCODER_MERGER = "depth_encoder.merger"  # the depth projector: merged depth tokens at the LLM's width
DEPTH_GATE = "depth_gate"  # `add`: tanh(gate) per LLM channel, zero-initialised
DEPTH_PATCH_EMBED = "depth_patch_embed"  # `rgbd`: the zero-initialised depth input channel of the RGB tower
DEPTH_ADAPTERS = "depth_adapters"  # `adapter`: side adapters into the RGB tower's blocks, zero-initialised outputs
DEPTH_MODULE_NAMES = (DEPTH_ENCODER, DEPTH_GATE, DEPTH_PATCH_EMBED, DEPTH_ADAPTERS)


@dataclass(frozen=True)
class DepthFusion:
    """One fusion mode: how depth reaches the language model, and everything that follows from it.

    Every part of the project reads these rows (model, processor, rope index, training policy, experiment arms,
    benchmarks, model card); a new mode is a row here plus its module in the modeling file.

    Attributes:
        name: the `config.depth_fusion` value.
        summary: how depth reaches the LLM, one clause ("depth is ..."), for help texts and the model card.
        details: the mechanism in a sentence or two (the model card's).
        modules: the depth modules the mode builds (`DEPTH_MODULE_NAMES`); every other one is absent.
        fused_into: where depth joins the RGB path: `"image_tokens"` (the merged image features), `"vision_blocks"`
            (the RGB tower's residual stream), `"patch_embed"` (the RGB tower's input), or None (no depth).
        tokens_per_image_with_depth: an image with depth takes this many times its own placeholder tokens (2: its
            RGB tokens, then as many depth tokens, each at the M-RoPE position of the RGB patch it covers).
        trained_in_sft: the depth modules Stage 2 trains in full (with LoRA: PEFT's `modules_to_save`); the rest of
            the depth modules stay frozen unless asked (`--train_depth_encoder`). Stage 1 (`training.align`) trains
            the depth encoder of the modes that have one.
        probe: (RGB module, depth module) whose output norms the training log compares: what depth adds, and to what
            (None: the RGB image tokens alone).
    """

    name: str
    summary: str
    details: str = ""
    modules: tuple[str, ...] = ()
    fused_into: str | None = None
    tokens_per_image_with_depth: int = 1
    trained_in_sft: tuple[str, ...] = ()
    probe: tuple[str, str] | None = None

    @property
    def has_depth(self) -> bool:
        return self.fused_into is not None

    @property
    def has_depth_encoder(self) -> bool:
        return DEPTH_ENCODER in self.modules

    @property
    def has_gate(self) -> bool:
        return DEPTH_GATE in self.modules

    @property
    def trained_in_alignment(self) -> tuple[str, ...]:
        return (DEPTH_ENCODER,) if self.has_depth_encoder else ()

    def new_modules_from(self, source: "DepthFusion | None") -> tuple[str, ...]:
        """How a checkpoint of `source` (None: a base Qwen2.5-VL one) converts to this mode: the depth modules it lacks
        start fresh (the depth encoder copied from the RGB tower when `depth_init_from_rgb`, the gate, depth channel
        and adapter outputs at zero, so the model is the source's RGB model exactly); the ones this mode has no use
        for are left out."""
        return tuple(module for module in self.modules if source is None or module not in source.modules)


# The mode a depth model gets unless told otherwise.
DEFAULT_DEPTH_FUSION = "add"
# The mode without depth: the RGB-only baseline (and the model of experiment arms that show depth another way).
RGB_ONLY_FUSION = "none"
DEPTH_FUSIONS = {
    fusion.name: fusion
    for fusion in (
        DepthFusion(
            name="add",
            summary="added onto the image tokens through a learned, zero-initialised gate (no extra tokens)",
            details="The depth tokens are added onto the image tokens as `image + tanh(g) · depth`; the per-channel "
            "gate `g` starts at 0, so an untrained depth model is exactly the base model.",
            modules=(DEPTH_ENCODER, DEPTH_GATE),
            fused_into="image_tokens",
            trained_in_sft=(DEPTH_ENCODER_MERGER, DEPTH_GATE),
            probe=("visual.merger", DEPTH_GATE),
        ),
        DepthFusion(
            name="concat",
            summary="appended after each image's tokens as its own tokens, at the positions of the RGB patches",
            details="The depth tokens follow the image's own tokens inside its placeholder run (an image with depth "
            "takes twice as many `<|image_pad|>`), each carrying the M-RoPE position of the RGB patch it covers.",
            modules=(DEPTH_ENCODER,),
            fused_into="image_tokens",
            tokens_per_image_with_depth=2,
            trained_in_sft=(DEPTH_ENCODER_MERGER,),
            probe=("visual.merger", DEPTH_ENCODER_MERGER),
        ),
        DepthFusion(
            name="rgbd",
            summary="a fourth, zero-initialised input channel of the RGB tower's patch embedding (no depth encoder)",
            details="No depth encoder: a zero-initialised depth channel of the RGB tower's patch embedding adds each "
            "depth patch to its RGB patch, and depth goes through the RGB tower's own blocks.",
            modules=(DEPTH_PATCH_EMBED,),
            fused_into="patch_embed",
            trained_in_sft=(DEPTH_PATCH_EMBED,),
            probe=("visual.patch_embed", DEPTH_PATCH_EMBED),
        ),
        DepthFusion(
            name="adapter",
            summary="injected into the frozen RGB tower's first blocks through zero-initialised side adapters from "
            "the depth encoder (no extra tokens)",
            details="After each of the RGB tower's first blocks, a side adapter (down-projection, GELU, "
            "zero-initialised up-projection) of the paired depth-encoder block's output is added to the RGB "
            "residual stream at the same patch; a fresh model is exactly the base model.",
            modules=(DEPTH_ENCODER, DEPTH_ADAPTERS),
            fused_into="vision_blocks",
            trained_in_sft=(DEPTH_ADAPTERS,),
            probe=("visual.blocks.0", DEPTH_ADAPTERS),  # the first adapter's residual, onto the first block's output
        ),
        DepthFusion(
            name=RGB_ONLY_FUSION,
            summary="absent: the RGB-only baseline of the same recipe",
            details="This checkpoint is RGB-only: no depth module is used.",
        ),
    )
}
DEPTH_FUSION_MODES = tuple(DEPTH_FUSIONS)


@dataclass(frozen=True)
class DepthInput:
    """What the depth path sees of each pixel (`config.depth_input`); every part of the project reads these rows.

    Attributes:
        name: the `config.depth_input` value.
        channels: encoded channels per pixel: the depth encoder's (and the `rgbd` depth channel's) `in_channels`.
        uses_intrinsics: whether the camera intrinsics (`depth_intrinsics`) change what the model computes.
        summary: what the channels are, one clause, for help texts and the model card.
    """

    name: str
    channels: int
    uses_intrinsics: bool
    summary: str


DEFAULT_DEPTH_INPUT = "depth"
DEPTH_INPUTS = {
    entry.name: entry
    for entry in (
        DepthInput(
            name="depth",
            channels=1,
            uses_intrinsics=False,
            summary="each pixel's metric depth z, log-encoded over a fixed range (intrinsics are not used)",
        ),
        DepthInput(
            name="points",
            channels=3,
            uses_intrinsics=True,
            summary="each pixel's camera-frame 3D point (x, y, z) from its depth and the intrinsics K: x and y "
            "signed-log-encoded, z log-encoded as `depth` does",
        ),
    )
}

# Where each Auto class finds this model's code inside a saved folder. One class serves `AutoModel` and
# `AutoModelForImageTextToText`: both should give a model that can `generate`.
AUTO_MAP = {
    "AutoConfig": "configuration_depth.Qwen2_5_VLDepthConfig",
    "AutoModel": "modeling_qwen2_5_vl_depth.Qwen2_5_VLDepthForConditionalGeneration",
    "AutoModelForImageTextToText": "modeling_qwen2_5_vl_depth.Qwen2_5_VLDepthForConditionalGeneration",
}

# Layers of the default depth encoder. Depth maps carry far less information than RGB, and the depth tower runs on
# every prefill, so the default is a quarter of the RGB tower's 32 blocks (same width, so it can start from them).
DEFAULT_DEPTH_ENCODER_LAYERS = 8

# The RGB-derived encoder's MLP width is rounded up to a multiple of this. Qwen2.5-VL's vision MLP is 3420 wide: a bf16
# row of 3420 values (6840 bytes) is not 16-byte aligned, and cuBLAS then runs the down projection about 3.5x slower on
# an H100 than at 3456. `Qwen2_5_VLDepthEncoder.init_from_rgb` zero-fills the extra units, so the padded encoder computes
# exactly what the unpadded RGB blocks compute.
MLP_WIDTH_MULTIPLE = 64


@strict
class Qwen2_5_VLDepthEncoderConfig(Qwen2_5_VLVisionConfig):
    r"""
    Configuration of the depth encoder: Qwen2.5-VL vision blocks over a 1-channel depth map.

    It takes every field of [`Qwen2_5_VLVisionConfig`] with depth-specific defaults:
    - `in_channels=1`: one channel of encoded depth (see `Qwen2_5_VLDepthConfig.depth_min_meters`); 3 for camera-frame
      points (`depth_input="points"`: x, y, z), the top config's `DEPTH_INPUTS` row decides.
    - `temporal_patch_size=1`: a depth map is one frame. The RGB tower sees each image as two identical frames, so
      its 3D patch kernel summed over time and colour is exactly the 1-frame, 1-channel kernel (`init_from_rgb`).
    - `fullatt_block_indexes=None` means every block uses full attention over the image. Depth maps at VLM
      resolutions need no window attention, and one SDPA call per block is what makes the tower fast.
    - `depth` (number of blocks), `hidden_size`, `num_heads` and `intermediate_size` set the encoder's size.
    """

    model_type = "qwen2_5_vl_depth_encoder"
    base_config_key = "depth_config"

    depth: int = DEFAULT_DEPTH_ENCODER_LAYERS
    hidden_size: int = 1280
    in_channels: int = 1
    temporal_patch_size: int | list[int] | tuple[int, int] = 1
    fullatt_block_indexes: list[int] | tuple[int, ...] | None = None

    def __post_init__(self, **kwargs):
        # "Every block" is stored as the list 0..depth-1, which goes stale when `depth` is overridden: renew it.
        full_attention_everywhere = self.fullatt_block_indexes is None or list(self.fullatt_block_indexes) == list(
            range(len(self.fullatt_block_indexes))
        )
        if not full_attention_everywhere:
            raise ValueError(
                "The depth encoder uses full attention in every block: leave `fullatt_block_indexes` unset; got "
                f"{self.fullatt_block_indexes}."
            )
        self.fullatt_block_indexes = list(range(self.depth))
        super().__post_init__(**kwargs)
        channels = sorted({entry.channels for entry in DEPTH_INPUTS.values()})
        if self.in_channels not in channels:
            raise ValueError(
                f"The depth encoder takes {' or '.join(map(str, channels))} channels per pixel (DEPTH_INPUTS); got "
                f"in_channels={self.in_channels}."
            )


@strict
class Qwen2_5_VLDepthConfig(Qwen2_5_VLConfig):
    r"""
    Configuration of [`Qwen2_5_VLDepthForConditionalGeneration`]: a Qwen2.5-VL configuration plus a depth encoder.

    A plain Qwen2.5-VL `config.json` (flat or nested) loads into this class unchanged; the depth fields then take their
    defaults, which is how a base checkpoint becomes a depth model.

    Args:
        depth_config (`dict` or `Qwen2_5_VLDepthEncoderConfig`, *optional*):
            The depth encoder's size. When omitted it is derived from the RGB tower: same width, heads, patch and merge
            size, `DEFAULT_DEPTH_ENCODER_LAYERS` blocks, output width equal to the LLM width, and the RGB MLP width
            rounded up to a multiple of `MLP_WIDTH_MULTIPLE` (3420 -> 3456; the extra units start at zero and compute
            nothing, see `Qwen2_5_VLDepthEncoder.init_from_rgb`). Fields given here are kept as they are, so a saved
            config (which lists every field) reloads with the width it was saved with.
        depth_fusion (`str`, *optional*, defaults to `"add"`):
            How depth reaches the language model.
            - `"add"`: the depth encoder's merged tokens are added onto the RGB image tokens through a zero-initialised
              gate per channel (`tanh(gate) * depth`, the gates a vector of LLM width). No extra tokens; a fresh model is exactly the base model.
            - `"concat"`: each image's depth tokens follow its RGB tokens inside the image's own run of placeholders
              (an image with depth has twice as many `<|image_pad|>`), and each depth token gets the M-RoPE (t, h, w)
              position of the RGB patch it covers.
            - `"rgbd"`: direct RGB-D input, the seed's baseline: the RGB tower's patch embedding gets a fourth (depth)
              channel, a zero-initialised `Conv3d` over the encoded depth added to the RGB patch embeddings, so a fresh
              model is exactly the base model. No depth encoder; depth goes through the RGB tower's own blocks.
            - `"adapter"`: side adapters beside the frozen RGB tower (HFIT-style): the depth encoder runs beside the
              RGB tower's first blocks, and after RGB block `i` a small adapter of depth block `i`'s output
              (down-projection, GELU, zero-initialised up-projection) is added to the RGB residual stream at the same
              patch. No extra tokens; a fresh model is exactly the base model.
            - `"none"`: the RGB-only baseline. No depth modules are built and depth input is an error.
            Each mode's properties (modules, tokens, what trains) are its row of `DEPTH_FUSIONS`.
        depth_init_from_rgb (`bool`, *optional*, defaults to `True`):
            When the depth encoder is newly created from a base checkpoint, copy the RGB tower's first blocks, merger
            and patch embedding (summed over colour and time into one channel) instead of a random init.
        depth_min_meters (`float`, *optional*, defaults to 0.1), depth_max_meters (`float`, *optional*, defaults to 100.0):
            Metric depth becomes encoder input as log-depth over this fixed range, mapped linearly to [-1, 1]:
            `2 * (log d - log d_min) / (log d_max - log d_min) - 1`, clamped. A fixed range keeps the metric scale: the
            same distance gives the same input in every image (per-image min-max normalisation would throw it away).
        depth_invalid_value (`float`, *optional*, defaults to -2.0):
            Encoder input for invalid pixels (depth that is 0, negative, NaN or inf: sensor holes, sky). It lies
            outside [-1, 1] so the encoder can tell "no measurement" from "near".
        depth_input (`str`, *optional*, defaults to `"depth"`):
            What the depth path sees of each pixel (`DEPTH_INPUTS`): `"depth"`, its metric depth z; `"points"`, its
            camera-frame 3D point `(x, y, z) = z * ((u - cx) / fx, (v - cy) / fy, 1)` from its depth and the camera
            intrinsics (`depth_intrinsics`, which the processor makes from `intrinsics=`), x and y encoded as
            `asinh(x / depth_min_meters) / asinh(depth_max_meters / depth_min_meters)` (signed, metric, the same
            value for the same offset in every image) and z as `"depth"` encodes it. Works with every fusion mode.
        default_horizontal_fov_degrees (`float`, *optional*, defaults to 60.0):
            `"points"` only: the camera assumed for an image with depth but no intrinsics, a pinhole with this
            horizontal field of view, square pixels and the principal point at the image centre (a warning says so,
            once). 60 degrees is a typical phone or webcam lens and the middle of the rendered world's 40-80.
        depth_adapter_width (`int`, *optional*):
            `"adapter"` only: the bottleneck width of each side adapter; defaults to a quarter of the RGB tower's width.
        base_model_name_or_path (`str`, *optional*):
            The Qwen2.5-VL checkpoint the depth model was built from: a hub id, or a local folder's absolute path.
            Saved with the config (unlike `_name_or_path`), so a model card can name its real base.
    """

    model_type = "qwen2_5_vl_depth"
    sub_configs_defaults = {
        **Qwen2_5_VLConfig.sub_configs_defaults,
        # Optional so that `None` survives `PreTrainedConfig.__post_init__`: the default is derived from the RGB tower.
        "depth_config": SubConfigSpec(config_class=Qwen2_5_VLDepthEncoderConfig, optional=True),
    }

    depth_config: dict | Qwen2_5_VLDepthEncoderConfig | None = None
    depth_fusion: str = DEFAULT_DEPTH_FUSION
    depth_init_from_rgb: bool = True
    depth_min_meters: float = 0.1
    depth_max_meters: float = 100.0
    depth_invalid_value: float = -2.0
    depth_input: str = DEFAULT_DEPTH_INPUT
    default_horizontal_fov_degrees: float = 60.0
    depth_adapter_width: int | None = None
    base_model_name_or_path: str | None = None

    def __post_init__(self, **kwargs):
        # A base Qwen2.5-VL config.json says `model_type: qwen2_5_vl`; keep this class's own type, never that one.
        kwargs.pop("model_type", None)
        if self.depth_fusion not in DEPTH_FUSION_MODES:
            raise ValueError(
                f"Unknown depth_fusion {self.depth_fusion!r}: expected one of {', '.join(DEPTH_FUSION_MODES)}."
            )
        if self.depth_input not in DEPTH_INPUTS:
            raise ValueError(f"Unknown depth_input {self.depth_input!r}: expected one of {', '.join(DEPTH_INPUTS)}.")
        if not 0 < self.default_horizontal_fov_degrees < 180:
            raise ValueError(
                f"default_horizontal_fov_degrees must lie in (0, 180); got {self.default_horizontal_fov_degrees}."
            )
        if not 0 < self.depth_min_meters < self.depth_max_meters or not math.isfinite(self.depth_max_meters):
            raise ValueError(
                "The depth encoding range needs 0 < depth_min_meters < depth_max_meters < inf; got "
                f"{self.depth_min_meters} and {self.depth_max_meters}."
            )
        # A dict (from config.json, or a partial override such as {"depth": 4}) is laid over the RGB-derived default.
        depth_overrides = self.depth_config if isinstance(self.depth_config, dict) else None
        if depth_overrides is not None:
            self.depth_config = None
        # `depth_config` comes into being after the parent has handed `attn_implementation` to the sub-configs.
        attn_implementation = kwargs.get("attn_implementation")
        super().__post_init__(**kwargs)
        if self.depth_config is None:
            self.depth_config = self.default_depth_config(**(depth_overrides or {}))
        if isinstance(attn_implementation, dict):
            attn_implementation = attn_implementation.get("depth_config", self._attn_implementation)
        if attn_implementation is not None:
            self.depth_config._attn_implementation = attn_implementation
        if self.depth_config.in_channels != self.input.channels:
            raise ValueError(
                f"depth_input={self.depth_input!r} gives the depth encoder {self.input.channels} channel(s) per pixel, "
                f"but depth_config has in_channels={self.depth_config.in_channels}."
            )
        if self.depth_adapter_width is None:
            self.depth_adapter_width = max(1, self.vision_config.hidden_size // 4)
        # Entries already present (e.g. `repo--module.Class` from the Hub) win over the local file names.
        self.auto_map = {**AUTO_MAP, **(getattr(self, "auto_map", None) or {})}

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        # The stock `from_dict` sets keyword overrides after construction; `depth_input` decides the derived depth
        # encoder's input channels in `__post_init__`, so it must be part of the construction.
        if "depth_input" in kwargs:
            config_dict = {**config_dict, "depth_input": kwargs.pop("depth_input")}
        return super().from_dict(config_dict, **kwargs)

    def default_depth_config(self, **overrides) -> Qwen2_5_VLDepthEncoderConfig:
        """The default depth encoder (the RGB tower's family and width, fewer blocks, LLM-width output) + overrides.

        The MLP width is the RGB tower's rounded up to a multiple of `MLP_WIDTH_MULTIPLE`, unless `intermediate_size`
        is among the overrides (then it is used as given).
        """
        vision = self.vision_config
        fields = {
            "depth": min(DEFAULT_DEPTH_ENCODER_LAYERS, vision.depth),
            "hidden_size": vision.hidden_size,
            "hidden_act": vision.hidden_act,
            "intermediate_size": -(-vision.intermediate_size // MLP_WIDTH_MULTIPLE) * MLP_WIDTH_MULTIPLE,
            "num_heads": vision.num_heads,
            "patch_size": vision.patch_size,
            "spatial_merge_size": vision.spatial_merge_size,
            "out_hidden_size": self.text_config.hidden_size,
            "initializer_range": vision.initializer_range,
            "in_channels": self.input.channels,
        }
        overrides = {key: value for key, value in overrides.items() if key != "model_type"}
        return Qwen2_5_VLDepthEncoderConfig(**{**fields, **overrides})

    @property
    def fusion(self) -> DepthFusion:
        """The fusion mode's row of `DEPTH_FUSIONS`."""
        return DEPTH_FUSIONS[self.depth_fusion]

    @property
    def input(self) -> DepthInput:
        """The depth input's row of `DEPTH_INPUTS`."""
        return DEPTH_INPUTS[self.depth_input]

    @property
    def has_depth(self) -> bool:
        """Whether the model takes depth input at all."""
        return self.fusion.has_depth

    @property
    def has_depth_encoder(self) -> bool:
        """Whether depth goes through a separate depth encoder."""
        return self.fusion.has_depth_encoder


Qwen2_5_VLDepthConfig.register_for_auto_class()

__all__ = [
    "DEFAULT_DEPTH_FUSION",
    "DEFAULT_DEPTH_INPUT",
    "DEPTH_INPUTS",
    "DepthInput",
    "Qwen2_5_VLDepthConfig",
    "Qwen2_5_VLDepthEncoderConfig",
    "DEPTH_ADAPTERS",
    "DEPTH_ENCODER",
    "DEPTH_ENCODER_MERGER",
    "DEPTH_FUSIONS",
    "DEPTH_FUSION_MODES",
    "DEPTH_GATE",
    "DEPTH_MODULE_NAMES",
    "DEPTH_PATCH_EMBED",
    "DepthFusion",
    "MLP_WIDTH_MULTIPLE",
    "RGB_ONLY_FUSION",
]
