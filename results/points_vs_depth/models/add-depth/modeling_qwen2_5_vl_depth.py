"""Qwen2.5-VL-Depth: Qwen2.5-VL that also sees a depth map, built modular-style on the installed Qwen2.5-VL classes.

A depth encoder (Qwen2.5-VL vision blocks over a 1-channel depth map, on the RGB image's patch grid and 2x2 merge)
turns each image's depth map into exactly as many tokens as the image has. Depth is an input of the image features:
`get_image_features(pixel_values, image_grid_thw, depth_values=..., image_has_depth=...)` returns each image's fused
features, chosen by `config.depth_fusion`:

- `"add"`: the RGB tokens plus the depth tokens through a zero-initialised gate, so a fresh model is the base model;
- `"concat"`: the RGB tokens followed by the depth tokens (the image's placeholder run is twice as long), each depth
  token with the M-RoPE position of the RGB patch it covers;
- `"rgbd"`: direct RGB-D input (the seed's baseline): the RGB tower's patch embedding gets a zero-initialised fourth,
  depth channel, and depth goes through the RGB tower's own blocks; no depth encoder, no extra tokens;
- `"adapter"`: side adapters beside the frozen RGB tower (HFIT-style): the depth encoder's block `i` feeds a small
  adapter whose zero-initialised output is added to RGB block `i`'s output at the same patch; no extra tokens;
- `"none"`: no depth at all (the RGB-only baseline).

Each mode's modules, token count and training policy are its row of `configuration_depth.DEPTH_FUSIONS`.
Everything after the image features is stock Qwen2.5-VL, so transformers' generation machinery (pre-encoding before
prefill, beam expansion, chunked prefill) carries depth as it carries the images.

The speed code (the stock vision tower with batched attention and cached index bookkeeping, the host-side rope
index) is `fast_qwen2_5_vl.py`, tested equal to stock; this file is the depth diff on top of it.

This file is remote code: it imports only `torch`, `transformers` and the project's own remote-code files.
"""

import math

import torch
import torch.nn as nn
from transformers import initialization as init
from transformers.configuration_utils import PreTrainedConfig
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import BaseModelOutputWithPooling, MultimodalCausalLMOutputWithPast
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLModel,
    Qwen2_5_VLPreTrainedModel,
    Qwen2_5_VLTextModel,
)
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple, logging
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import get_max_seqlen, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs
from transformers.vision_utils import (
    get_vision_attention_seqlens,
    get_vision_cu_seqlens,
    get_vision_position_ids,
    get_vision_window_index,
)


try:  # loaded as remote code: a module of a package built from the model folder
    from .configuration_depth import (
        DEFAULT_DEPTH_FUSION,
        DEPTH_ADAPTERS,
        DEPTH_ENCODER,
        DEPTH_FUSIONS,
        DEPTH_GATE,
        DEPTH_MODULE_NAMES,
        DEPTH_PATCH_EMBED,
        Qwen2_5_VLDepthConfig,
        Qwen2_5_VLDepthEncoderConfig,
    )
    from .fast_qwen2_5_vl import FastQwen2_5_VisionTransformer, image_text_rope_index, vision_position_ids
except ImportError:  # imported from a checkout, where the remote-code files are top-level modules
    from configuration_depth import (
        DEFAULT_DEPTH_FUSION,
        DEPTH_ADAPTERS,
        DEPTH_ENCODER,
        DEPTH_FUSIONS,
        DEPTH_GATE,
        DEPTH_MODULE_NAMES,
        DEPTH_PATCH_EMBED,
        Qwen2_5_VLDepthConfig,
        Qwen2_5_VLDepthEncoderConfig,
    )
    from fast_qwen2_5_vl import FastQwen2_5_VisionTransformer, image_text_rope_index, vision_position_ids


logger = logging.get_logger(__name__)

# Parameter names of the modules a base Qwen2.5-VL checkpoint does not have.
DEPTH_MODULE_PREFIXES = tuple(f"model.{name}." for name in DEPTH_MODULE_NAMES)


class Qwen2_5_VLDepthGate(nn.Module):
    """`tanh(gate) * x` with one gate per channel, all at zero: the depth path starts as an exact no-op and opens as
    it learns.

    Per channel (like LayerScale) rather than one scalar (like Flamingo's): each channel opens along its own gradient,
    where a single scalar follows the sum of all channels' gradients, which largely cancel while the model is still
    learning what depth is for.
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.gate = nn.Parameter(torch.zeros(width))

    def forward(self, depth_embeds: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.gate).to(depth_embeds.dtype) * depth_embeds


class Qwen2_5_VLDepthPatchEmbed(nn.Conv3d):
    """The depth channel of the `rgbd` fusion: a bias-free convolution from one depth patch (its `in_channels`
    encoded channels: 1 for depth, 3 for camera-frame points) to the RGB tower's width, zero-initialised, whose output
    is added to the RGB patch embedding.

    That is the RGB patch embedding widened from 3 to 4 input channels with the new channel at zero: a convolution is
    linear in its input channels. The RGB tower sees each image as 2 identical frames (`temporal_patch_size`); depth is
    one frame, which a 4th channel over 2 identical frames would see through the sum of its two temporal kernels.
    """

    def __init__(self, vision_config, in_channels: int = 1) -> None:
        kernel_size = (1, vision_config.patch_size, vision_config.patch_size)
        super().__init__(
            in_channels, vision_config.hidden_size, kernel_size=kernel_size, stride=kernel_size, bias=False
        )
        self.patch_size = vision_config.patch_size

    def forward(self, depth_patches: torch.Tensor) -> torch.Tensor:
        """`(num_patches, in_channels * patch_size**2)` encoded depth -> `(num_patches, hidden_size)` embeddings."""
        depth_patches = depth_patches.view(-1, self.in_channels, 1, self.patch_size, self.patch_size)
        depth_patches = depth_patches.to(self.weight.dtype)
        return super().forward(depth_patches).view(-1, self.out_channels)


class Qwen2_5_VLDepthAdapterUpProjection(nn.Linear):
    """A side adapter's output layer: an `nn.Linear` that `_init_weights` starts at zero (weight and bias)."""


class Qwen2_5_VLDepthAdapter(nn.Module):
    """One side adapter of the `adapter` fusion: depth-encoder hidden states of a block -> what is added to the RGB
    tower's residual stream after the paired RGB block, per patch: `up(gelu(down(depth)))`.

    A bottleneck (down to `depth_adapter_width`) as in adapter tuning, with the up-projection zero-initialised (as
    LoRA's B, ControlNet's zero convolutions): a fresh adapter adds exactly nothing, and its first gradient (on `up`)
    is not zero.
    """

    def __init__(self, depth_width: int, rgb_width: int, bottleneck_width: int) -> None:
        super().__init__()
        self.down = nn.Linear(depth_width, bottleneck_width)
        self.act = nn.GELU()
        self.up = Qwen2_5_VLDepthAdapterUpProjection(bottleneck_width, rgb_width)

    def forward(self, depth_hidden_states: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(depth_hidden_states.to(self.down.weight.dtype))))


class Qwen2_5_VLDepthAdapters(nn.Module):
    """The `adapter` fusion's side adapters, one per depth-encoder block: adapter `i` reads depth block `i`'s output
    and writes into RGB block `i`'s. The depth encoder starts as a copy of the RGB tower's first blocks, so each pair
    of blocks sits at the same depth of the same network."""

    def __init__(self, config: Qwen2_5_VLDepthConfig) -> None:
        super().__init__()
        depth_width, rgb_width = config.depth_config.hidden_size, config.vision_config.hidden_size
        if config.depth_config.depth > config.vision_config.depth:
            raise ValueError(
                f"The adapter fusion pairs each of the depth encoder's {config.depth_config.depth} blocks with an RGB "
                f"block, but the RGB tower has only {config.vision_config.depth}."
            )
        self.adapters = nn.ModuleList(
            Qwen2_5_VLDepthAdapter(depth_width, rgb_width, config.depth_adapter_width)
            for _ in range(config.depth_config.depth)
        )

    def forward(self, depth_block_states: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """The depth encoder's per-block outputs -> each adapter's residual, in the same (patch) order."""
        return tuple(adapter(states) for adapter, states in zip(self.adapters, depth_block_states))


class Qwen2_5_VLDepthAwareVisionTransformer(FastQwen2_5_VisionTransformer):
    """The stock RGB tower (same weights, same keys; its fast version) whose forward can add depth where it joins the
    RGB path: a residual to its patch embeddings (the `rgbd` fusion's depth channel) and to the output of each of its
    first blocks (what the `adapter` fusion's side adapters inject). Without them it is the stock tower.

    The tower reorders its patches into windows (`get_vision_window_index`, 2x2 merge units at a time) before its
    blocks and back after the merger, while the residuals come per patch in the processor's order (that of
    `pixel_values` and `depth_values`): the patch-embedding residual is added before that reordering, and each block
    residual is put in window order the way the stock forward reorders its patch embeddings, so residual row `p`
    lands on RGB patch `p`.
    """

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        hidden_states: torch.Tensor,
        grid_thw: torch.Tensor,
        patch_embed_residual: torch.Tensor | None = None,
        block_residuals: tuple[torch.Tensor, ...] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | BaseModelOutputWithPooling:
        """
        Args:
            hidden_states (`torch.Tensor` of shape `(seq_len, patch_dim)`): `pixel_values`.
            grid_thw (`torch.Tensor` of shape `(num_images, 3)`): the images' patch grids.
            patch_embed_residual (`torch.Tensor` of shape `(seq_len, hidden_size)`, *optional*):
                Added to the patch embeddings, in the patches' input order.
            block_residuals (`tuple[torch.Tensor]`, *optional*):
                Residual `i`, of shape `(seq_len, hidden_size)` in the patches' input order, is added to block `i`'s
                output; blocks past the tuple's length get none.
        """
        # The stock forward (with the fast tower's cached indices), with the residuals added where depth joins.
        kwargs = self.with_cached_grid_indices(grid_thw, kwargs)
        position_ids = get_vision_position_ids(grid_thw, self.spatial_merge_size, kwargs=kwargs)
        cu_seqlens, max_seqlen = get_vision_attention_seqlens(grid_thw, self.config, kwargs=kwargs)
        window_index, cu_window_seqlens = get_vision_window_index(
            grid_thw,
            spatial_merge_size=self.spatial_merge_size,
            window_size=self.window_size,
            patch_size=self.patch_size,
            kwargs=kwargs,
        )
        max_window_seqlen = get_max_seqlen(
            cu_window_seqlens, self.config, kwargs=kwargs, kwarg_name="max_window_seqlen"
        )
        hidden_states = self.patch_embed(hidden_states)
        if patch_embed_residual is not None:
            hidden_states = hidden_states + patch_embed_residual.to(hidden_states.dtype)
        seq_len, _ = hidden_states.size()
        hidden_states = self.permute_input_for_window_attn(hidden_states, window_index, seq_len=seq_len)
        position_embeddings = self.rotary_pos_emb(hidden_states, position_ids)
        position_embeddings = tuple(
            self.permute_input_for_window_attn(freq, window_index, seq_len=seq_len) for freq in position_embeddings
        )
        for layer_num, blk in enumerate(self.blocks):
            full_attention = layer_num in self.fullatt_block_indexes
            hidden_states = blk(
                hidden_states,
                cu_seqlens=cu_seqlens if full_attention else cu_window_seqlens,
                max_seqlen=max_seqlen if full_attention else max_window_seqlen,
                position_embeddings=position_embeddings,
                **kwargs,
            )
            if block_residuals is not None and layer_num < len(block_residuals):
                residual = self.permute_input_for_window_attn(block_residuals[layer_num], window_index, seq_len)
                hidden_states = hidden_states + residual.to(hidden_states.dtype)
        reverse_indices = torch.argsort(window_index)
        merged_hidden_states = self.merger(hidden_states)
        merged_hidden_states = merged_hidden_states[reverse_indices, :]
        return BaseModelOutputWithPooling(last_hidden_state=hidden_states, pooler_output=merged_hidden_states)


class Qwen2_5_VLDepthPreTrainedModel(Qwen2_5_VLPreTrainedModel):
    config: Qwen2_5_VLDepthConfig
    input_modalities = ("image", "video", "text")
    _no_split_modules = ["Qwen2_5_VLDecoderLayer", "Qwen2_5_VLVisionBlock"]

    def _init_weights(self, module):
        if isinstance(module, Qwen2_5_VLDepthPatchEmbed):  # a Conv3d, which the parent would draw at random
            init.zeros_(module.weight)
            return
        if isinstance(module, Qwen2_5_VLDepthAdapterUpProjection):  # a Linear, which the parent would draw at random
            init.zeros_(module.weight)
            init.zeros_(module.bias)
            return
        super()._init_weights(module)
        if isinstance(module, Qwen2_5_VLDepthGate):
            init.zeros_(module.gate)


class Qwen2_5_VLDepthEncoder(FastQwen2_5_VisionTransformer):
    """The Qwen2.5-VL vision tower (its fast version: same modules and keys) over a 1-channel depth map, with full
    attention in every block, merged 2x2 and projected to the LLM width.

    Its input is laid out exactly like the RGB tower's `pixel_values`: one row per 14x14 patch, patches of each 2x2
    merge group contiguous, so its output token `i` covers the same image region as RGB token `i`.
    """

    config: Qwen2_5_VLDepthEncoderConfig

    def forward(
        self, hidden_states: torch.Tensor, grid_thw: torch.Tensor, output_hidden_states: bool = False, **kwargs
    ) -> BaseModelOutputWithPooling:
        """
        Args:
            hidden_states (`torch.Tensor` of shape `(num_patches, patch_size * patch_size)`):
                Encoded depth (see `Qwen2_5_VLDepthModel.encode_depth`), one row per patch.
            grid_thw (`torch.LongTensor` of shape `(num_images, 3)`):
                The RGB images' patch grids, which the depth maps share.
            output_hidden_states (`bool`, defaults to `False`):
                Also return `hidden_states`: the patch embeddings, then every block's output (what the `adapter`
                fusion's side adapters read), one row per patch in the input's order.
        """
        # Not the stock forward: with full attention in every block its window reordering changes nothing but the
        # order of the block outputs (which the adapters read in the input's order), and same-size images here batch
        # without a host sync.
        position_ids = vision_position_ids(grid_thw, self.spatial_merge_size)
        cu_seqlens = get_vision_cu_seqlens(grid_thw)
        seq_lens = (grid_thw[:, 0] * grid_thw[:, 1] * grid_thw[:, 2]).tolist()
        uniform_seq_len = seq_lens[0] if len(set(seq_lens)) == 1 else None

        hidden_states = self.patch_embed(hidden_states)
        position_embeddings = self.rotary_pos_emb(hidden_states, position_ids)
        all_hidden_states = [hidden_states]
        for block in self.blocks:
            hidden_states = block(
                hidden_states,
                cu_seqlens=cu_seqlens,
                position_embeddings=position_embeddings,
                max_seqlen=max(seq_lens),
                uniform_seq_len=uniform_seq_len,
            )
            all_hidden_states.append(hidden_states)
        return BaseModelOutputWithPooling(
            last_hidden_state=hidden_states,
            pooler_output=self.merger(hidden_states),
            hidden_states=tuple(all_hidden_states) if output_hidden_states else None,
        )

    @torch.no_grad()
    def init_from_rgb(self, rgb_tower: nn.Module) -> None:
        """Start from the RGB tower: its first `depth` blocks, its merger, and its patch embedding in one channel.

        A depth map replicated over the RGB tower's 3 colour channels and 2 frames would give
        `sum_{c,t} W[:, c, t] * d`, so the 1-channel, 1-frame kernel is the RGB kernel summed over colour and time.

        The encoder's MLP may be wider than the RGB tower's (the derived default pads 3420 to 3456, see
        `configuration_depth.MLP_WIDTH_MULTIPLE`): the RGB MLP weights fill the leading units and the extra ones are
        zero (their `gate_proj`/`up_proj` rows and biases, their `down_proj` columns). An extra unit then computes
        `silu(0) * 0 = 0` and adds nothing, so the encoder's output is exactly the unpadded one; and every gradient
        reaching those weights is exactly zero (each is a product with the zero `up`/`down` weights or the zero
        activation), so no optimizer step (AdamW's decoupled weight decay included) moves them: the padding stays a
        fixed point of training and only makes the matrix shapes friendlier to the GPU.
        """
        rgb_config = rgb_tower.config
        for field in ("hidden_size", "num_heads", "patch_size", "spatial_merge_size"):
            if getattr(rgb_config, field) != getattr(self.config, field):
                raise ValueError(
                    f"Cannot initialise the depth encoder from the RGB tower: {field} differs "
                    f"({getattr(self.config, field)} vs {getattr(rgb_config, field)}). Set depth_init_from_rgb=False."
                )
        if self.config.intermediate_size < rgb_config.intermediate_size:
            raise ValueError(
                "Cannot initialise the depth encoder from the RGB tower: its MLP is narrower "
                f"({self.config.intermediate_size} vs {rgb_config.intermediate_size}). Set depth_init_from_rgb=False."
            )
        if self.config.depth > len(rgb_tower.blocks):
            raise ValueError(
                f"The depth encoder has {self.config.depth} blocks but the RGB tower only {len(rgb_tower.blocks)}."
            )
        # With camera-frame points (x, y, z) the z channel takes the summed kernel and x, y start at zero, so a fresh
        # `points` encoder computes exactly what a fresh `depth` one does, and training opens x and y.
        rgb_kernel = rgb_tower.patch_embed.proj.weight
        self.patch_embed.proj.weight.zero_()
        self.patch_embed.proj.weight[:, -1:].copy_(rgb_kernel.sum(dim=(1, 2), keepdim=True))
        width = rgb_config.intermediate_size
        for depth_block, rgb_block in zip(self.blocks, rgb_tower.blocks):
            rgb_state = rgb_block.state_dict()
            if rgb_state.keys() != depth_block.state_dict().keys():
                raise ValueError("The RGB tower's blocks do not have the depth encoder's weights.")
            for name, parameter in depth_block.state_dict(keep_vars=True).items():
                source = rgb_state[name]
                if parameter.shape == source.shape:
                    parameter.copy_(source)
                    continue
                # A padded MLP weight: the RGB values in the leading units, zero in the rest.
                parameter.zero_()
                if name.startswith(("mlp.gate_proj.", "mlp.up_proj.")):
                    parameter[:width].copy_(source)
                elif name == "mlp.down_proj.weight":
                    parameter[:, :width].copy_(source)
                else:
                    raise ValueError(f"Unexpected shape mismatch for {name}: {parameter.shape} vs {source.shape}.")
        if rgb_tower.merger.mlp[-1].out_features == self.merger.mlp[-1].out_features:
            self.merger.load_state_dict(rgb_tower.merger.state_dict())


# `forward` and `generate` refuse depth without its images alike.
DEPTH_WITHOUT_PIXELS_ERROR = (
    "depth_values were given without pixel_values: depth is encoded together with its images (for pre-encoded inputs, "
    "pass get_image_features(pixel_values, image_grid_thw, depth_values=...) as mm_encoder_outputs['image'])."
)


def encode_metric_depth(depth_meters: torch.Tensor, config: Qwen2_5_VLDepthConfig) -> torch.Tensor:
    """Metric depth (metres) to encoder input: log-depth over the config's fixed range, mapped to [-1, 1].

    Pixels that are not a positive finite distance (0 = sensor hole or sky, NaN, inf, negative) become
    `config.depth_invalid_value`, outside [-1, 1]. The same distance gives the same input in every image.
    """
    depth = depth_meters.float()
    valid = torch.isfinite(depth) & (depth > 0)
    log_min, log_max = math.log(config.depth_min_meters), math.log(config.depth_max_meters)
    log_depth = torch.log(depth.clamp(config.depth_min_meters, config.depth_max_meters))
    encoded = 2 * (log_depth - log_min) / (log_max - log_min) - 1
    return torch.where(valid, encoded, torch.full_like(encoded, config.depth_invalid_value))


def encode_metric_points(
    depth_meters: torch.Tensor, rays: torch.Tensor, config: Qwen2_5_VLDepthConfig
) -> torch.Tensor:
    """Metric depth (metres) and pixel rays to `points` encoder input: `(num_patches, 3 * patch_size**2)`, channels
    x, y, z one after the other (the patch embedding's channel order).

    `rays` `(num_patches, 2, patch_size**2)` are each pixel's `((u - cx) / fx, (v - cy) / fy)`, so the camera-frame
    point is `z * (ray_x, ray_y, 1)`. x and y are encoded as `asinh(x / d_min) / asinh(d_max / d_min)`: signed, metric
    (the same offset in metres gives the same value in every image), about logarithmic beyond `d_min` like z's log
    encoding, and in [-1, 1] over the depth range. z is `encode_metric_depth`'s; invalid pixels get
    `config.depth_invalid_value` in all three channels.
    """
    depth = depth_meters.float()
    valid = torch.isfinite(depth) & (depth > 0)
    z = torch.where(valid, depth, torch.zeros_like(depth))
    scale = math.asinh(config.depth_max_meters / config.depth_min_meters)
    lateral = torch.asinh(z[:, None] * rays.float() / config.depth_min_meters) / scale  # (patches, 2, p*p)
    invalid = torch.full_like(depth, config.depth_invalid_value)
    x, y = (torch.where(valid, lateral[:, axis], invalid) for axis in (0, 1))
    return torch.cat([x, y, encode_metric_depth(depth_meters, config)], dim=-1)


def default_intrinsics(height: int, width: int, horizontal_fov_degrees: float) -> tuple[float, float, float, float]:
    """(fx, fy, cx, cy) of a pinhole camera with this horizontal field of view, square pixels and the principal point
    at the image centre, in the pixels of a `height` x `width` image (pixel centres at integer coordinates)."""
    focal = (width / 2) / math.tan(math.radians(horizontal_fov_degrees) / 2)
    return focal, focal, (width - 1) / 2, (height - 1) / 2


def pixel_rays(
    image_grid_thw: torch.LongTensor,
    depth_intrinsics: torch.Tensor | None,
    patch_size: int,
    merge_size: int,
    default_horizontal_fov_degrees: float,
) -> torch.Tensor:
    """Each depth pixel's ray `((u - cx) / fx, (v - cy) / fy)`, laid out like `depth_values`: `(num_patches, 2,
    patch_size**2)` over the images' grids, in the processor's patch order (`Qwen2_5_VLDepthProcessor._patchify`).

    `depth_intrinsics` `(num_images, 4)` are (fx, fy, cx, cy) in the pixels of each resized image (what the
    processor makes of `intrinsics=`); a row of NaN (or no tensor) is an image whose camera is unknown, which gets
    `default_intrinsics` at `default_horizontal_fov_degrees`.
    """
    rays = []
    for index, (frames, grid_h, grid_w) in enumerate(image_grid_thw.tolist()):
        height, width = grid_h * patch_size, grid_w * patch_size
        row = depth_intrinsics[index] if depth_intrinsics is not None else None
        if row is None or bool(torch.isnan(row).any()):
            fx, fy, cx, cy = default_intrinsics(height, width, default_horizontal_fov_degrees)
        else:
            fx, fy, cx, cy = row.double().tolist()
        device = image_grid_thw.device
        ray_x = ((torch.arange(width, device=device, dtype=torch.float64) - cx) / fx).expand(height, width)
        ray_y = ((torch.arange(height, device=device, dtype=torch.float64) - cy) / fy)[:, None].expand(height, width)
        grid = torch.stack([ray_x, ray_y]).float()  # (2, H, W)
        patches = grid.reshape(
            2, grid_h // merge_size, merge_size, patch_size, grid_w // merge_size, merge_size, patch_size
        ).permute(1, 4, 2, 5, 0, 3, 6)  # (gh/m, gw/m, m, m, 2, p, p): the processor's patch order, per channel
        rays.append(patches.reshape(grid_h * grid_w, 2, patch_size * patch_size).repeat(frames, 1, 1))
    return torch.cat(rays)


def encode_depth_input(
    depth_meters: torch.Tensor,
    config: Qwen2_5_VLDepthConfig,
    image_grid_thw: torch.LongTensor | None = None,
    depth_intrinsics: torch.Tensor | None = None,
) -> torch.Tensor:
    """Metric depth (metres) of the images on `image_grid_thw` to depth-path input, per `config.depth_input`:
    `encode_metric_depth` (`"depth"`), or the camera-frame points of `encode_metric_points` (`"points"`, which needs
    the grids, and the intrinsics of `get_image_features`; without them, `default_intrinsics` with a warning)."""
    if not config.input.uses_intrinsics:
        return encode_metric_depth(depth_meters, config)
    if image_grid_thw is None:
        raise ValueError("depth_input='points' needs the images' grids (image_grid_thw) to place each pixel's ray.")
    num_images = image_grid_thw.shape[0]
    if depth_intrinsics is not None:
        depth_intrinsics = depth_intrinsics.to(image_grid_thw.device)
        if tuple(depth_intrinsics.shape) != (num_images, 4):
            raise ValueError(
                f"depth_intrinsics has shape {tuple(depth_intrinsics.shape)} but {num_images} image(s) have depth: "
                "give one (fx, fy, cx, cy) row per image with depth (NaN for an unknown camera)."
            )
    if depth_intrinsics is None or bool(torch.isnan(depth_intrinsics).any()):
        logger.warning_once(
            "A depth_input='points' model got depth without camera intrinsics: it assumes a pinhole camera with a "
            f"{config.default_horizontal_fov_degrees} degree horizontal field of view, square pixels and the "
            "principal point at the image centre (config.default_horizontal_fov_degrees). Pass intrinsics= to the "
            "processor (or 'intrinsics' in the image block) for metric sizes."
        )
    vision = config.vision_config
    rays = pixel_rays(
        image_grid_thw,
        depth_intrinsics,
        vision.patch_size,
        vision.spatial_merge_size,
        config.default_horizontal_fov_degrees,
    ).to(depth_meters.device)
    return encode_metric_points(depth_meters, rays, config)


def on_every_patch(
    values: torch.Tensor, image_grid_thw: torch.LongTensor, has_depth: torch.BoolTensor
) -> torch.Tensor:
    """Per-patch rows of the images with depth -> rows for every image's patches, exact zeros for those without."""
    patch_has_depth = has_depth.repeat_interleave(image_grid_thw.prod(-1))
    every_patch = values.new_zeros(patch_has_depth.shape[0], values.shape[-1])
    return every_patch.masked_scatter(patch_has_depth[:, None].to(values.device), values)


class Qwen2_5_VLDepthModel(Qwen2_5_VLDepthPreTrainedModel, Qwen2_5_VLModel):
    config: Qwen2_5_VLDepthConfig

    def __init__(self, config: Qwen2_5_VLDepthConfig):
        # Qwen2_5_VLModel.__init__, with the RGB tower that can take depth residuals (same weights).
        super(Qwen2_5_VLModel, self).__init__(config)
        self.visual = Qwen2_5_VLDepthAwareVisionTransformer._from_config(config.vision_config)
        self.language_model = Qwen2_5_VLTextModel._from_config(config.text_config)
        self.rope_deltas = None
        # The fusion mode's depth modules (its row of DEPTH_FUSIONS), under their table names.
        depth_modules = {
            DEPTH_ENCODER: lambda: Qwen2_5_VLDepthEncoder._from_config(config.depth_config),
            DEPTH_GATE: lambda: Qwen2_5_VLDepthGate(config.depth_config.out_hidden_size),
            DEPTH_PATCH_EMBED: lambda: Qwen2_5_VLDepthPatchEmbed(config.vision_config, config.input.channels),
            DEPTH_ADAPTERS: lambda: Qwen2_5_VLDepthAdapters(config),
        }
        for name in config.fusion.modules:
            self.add_module(name, depth_modules[name]())
        self.post_init()

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        image_grid_thw: torch.LongTensor | None = None,
        depth_values: torch.Tensor | None = None,
        image_has_depth: torch.BoolTensor | None = None,
        depth_intrinsics: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling:
        r"""
        Each image's features, with its depth fused in per `config.depth_fusion`: `add` gives the RGB tokens plus the
        gated depth tokens, `concat` the RGB tokens followed by the depth tokens, `rgbd` the RGB tower's tokens of the
        image with depth as a fourth input channel, `adapter` the RGB tower's tokens with the side adapters' residuals
        added after its first blocks. Images without depth get their stock RGB features, so without
        `depth_values` this is exactly Qwen2.5-VL's `get_image_features`.

        depth_values (`torch.Tensor` of shape `(num_depth_patches, patch_size * patch_size)`, *optional*):
            Metric depth in metres of the images that have depth, each patchified on its image's grid by
            `Qwen2_5_VLDepthProcessor`. Invalid pixels (holes, sky) are 0 or NaN.
        image_has_depth (`torch.BoolTensor` of shape `(num_images,)`, *optional*):
            Which images `depth_values` covers. Defaults to every image.
        depth_intrinsics (`torch.Tensor` of shape `(num_depth_images, 4)`, *optional*):
            Camera intrinsics (fx, fy, cx, cy) of the images with depth, in the pixels of each resized image (the
            processor makes them from `intrinsics=`); a row of NaN is an unknown camera. Read by a
            `depth_input="points"` model only (see `Qwen2_5_VLDepthConfig.default_horizontal_fov_degrees` for unknown
            cameras); a `"depth"` model does not use them.
        """
        kwargs["return_dict"] = True
        has_depth = self.images_with_depth(depth_values, image_has_depth, image_grid_thw)
        fused_into = self.config.fusion.fused_into
        if has_depth is not None and fused_into == "vision_blocks":
            kwargs["block_residuals"] = self.depth_block_residuals(
                depth_values, image_grid_thw, has_depth, depth_intrinsics
            )
            return super().get_image_features(pixel_values, image_grid_thw, **kwargs)
        if has_depth is not None and fused_into == "patch_embed":
            kwargs["patch_embed_residual"] = self.depth_patch_embeds(
                depth_values, image_grid_thw, has_depth, depth_intrinsics
            )
            return super().get_image_features(pixel_values, image_grid_thw, **kwargs)
        image_outputs = super().get_image_features(pixel_values, image_grid_thw, **kwargs)
        if has_depth is None:
            return image_outputs

        depth_tokens = iter(
            self.get_depth_features(
                depth_values, image_grid_thw[has_depth], depth_intrinsics=depth_intrinsics
            ).pooler_output
        )
        fused = []
        for rgb_tokens, with_depth in zip(image_outputs.pooler_output, has_depth.tolist()):
            if not with_depth:
                fused.append(rgb_tokens)
                continue
            depth = next(depth_tokens).to(rgb_tokens.dtype)
            if self.config.fusion.has_gate:
                fused.append(rgb_tokens + self.depth_gate(depth))
            else:  # the depth tokens follow the image's (`tokens_per_image_with_depth=2`)
                fused.append(torch.cat([rgb_tokens, depth]))
        image_outputs.pooler_output = tuple(fused)
        return image_outputs

    def get_placeholder_mask(self, input_ids, inputs_embeds, image_features=None, video_features=None):
        """Stock, with a mismatch of image placeholders and features explained by depth under a fusion with depth
        tokens (`concat`): the text of an image with depth has more placeholders, so a prompt and depth inputs that
        disagree on depth mismatch."""
        try:
            return super().get_placeholder_mask(input_ids, inputs_embeds, image_features, video_features)
        except ValueError as error:
            copies = self.config.fusion.tokens_per_image_with_depth
            if copies == 1 or image_features is None:
                raise
            times = "twice" if copies == 2 else f"{copies} times"
            raise ValueError(
                f"{error}. With depth_fusion={self.config.depth_fusion!r} an image with depth has {times} its image "
                "placeholders (its RGB tokens, then its depth tokens) and an image without depth only its RGB tokens: "
                "the text and the depth inputs disagree on which images have depth (were the depth_values / "
                "image_has_depth of this prompt dropped, or marked False?)."
            ) from error

    def images_with_depth(
        self,
        depth_values: torch.Tensor | None,
        image_has_depth: torch.Tensor | None,
        image_grid_thw: torch.LongTensor | None,
    ) -> torch.BoolTensor | None:
        """Which images get depth (on `image_grid_thw`'s device), or None when none does; refuses inputs that do not
        fit together."""
        if depth_values is None:
            if image_has_depth is not None and bool(image_has_depth.any()):
                raise ValueError("image_has_depth marks images with depth, but no depth_values were given.")
            return None
        if not self.config.has_depth:
            raise ValueError(
                f"This model has depth_fusion={self.config.depth_fusion!r} (RGB only): it takes no depth_values."
            )
        if image_grid_thw is None:
            raise ValueError("depth_values were given without an image: depth needs image_grid_thw of its images.")
        num_images = image_grid_thw.shape[0]
        if image_has_depth is None:
            return torch.ones(num_images, dtype=torch.bool, device=image_grid_thw.device)
        if image_has_depth.shape != (num_images,) or image_has_depth.dtype != torch.bool:
            raise ValueError(
                f"image_has_depth must be a bool tensor of shape ({num_images},), one entry per image; got "
                f"{image_has_depth.dtype} of shape {tuple(image_has_depth.shape)}."
            )
        has_depth = image_has_depth.to(image_grid_thw.device)
        return has_depth if bool(has_depth.any()) else None

    def encode_depth(
        self,
        depth_meters: torch.Tensor,
        image_grid_thw: torch.LongTensor | None = None,
        depth_intrinsics: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Metric depth (metres) to depth-path input per `config.depth_input`; see `encode_depth_input`."""
        return encode_depth_input(depth_meters, self.config, image_grid_thw, depth_intrinsics)

    def check_depth_values(self, depth_values: torch.Tensor, image_grid_thw: torch.LongTensor, patch_dim: int) -> None:
        """Refuse depth that is not one row of `patch_dim` values per patch of the images with depth."""
        num_patches = int(image_grid_thw.prod(-1).sum())
        if depth_values.ndim != 2 or tuple(depth_values.shape) != (num_patches, patch_dim):
            raise ValueError(
                f"depth_values has shape {tuple(depth_values.shape)} but the grids {image_grid_thw.tolist()} of the "
                f"images with depth need ({num_patches}, {patch_dim}): one row of {patch_dim} depth values per patch. "
                "Depth must be patchified on its image's grid (use Qwen2_5_VLDepthProcessor)."
            )

    def depth_patch_embeds(
        self,
        depth_values: torch.Tensor,
        image_grid_thw: torch.LongTensor,
        has_depth: torch.BoolTensor,
        depth_intrinsics: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`rgbd`: the depth channel's patch embeddings of every image's patches (zero for images without depth)."""
        depth_grids = image_grid_thw[has_depth]
        self.check_depth_values(depth_values, depth_grids, self.depth_patch_embed.patch_size**2)
        embeds = self.depth_patch_embed(self.encode_depth(depth_values, depth_grids, depth_intrinsics))
        return on_every_patch(embeds, image_grid_thw, has_depth)

    def depth_block_residuals(
        self,
        depth_values: torch.Tensor,
        image_grid_thw: torch.LongTensor,
        has_depth: torch.BoolTensor,
        depth_intrinsics: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """`adapter`: what each side adapter adds to its RGB block's output, one row per patch of every image in the
        processor's patch order (exactly zero for the images without depth, so they get their stock features)."""
        depth_outputs = self.get_depth_features(
            depth_values, image_grid_thw[has_depth], output_hidden_states=True, depth_intrinsics=depth_intrinsics
        )
        residuals = self.depth_adapters(depth_outputs.hidden_states[1:])  # each block's output, not the embeddings
        return tuple(on_every_patch(residual, image_grid_thw, has_depth) for residual in residuals)

    @can_return_tuple
    def get_depth_features(
        self, depth_values: torch.Tensor, image_grid_thw: torch.LongTensor, **kwargs
    ) -> BaseModelOutputWithPooling:
        """Encode depth maps into merged tokens, one tensor per image (`pooler_output`), like `get_image_features`.

        Args:
            depth_values (`torch.Tensor` of shape `(num_patches, patch_size * patch_size)`):
                Metric depth in metres, patchified on the RGB grid by `Qwen2_5_VLDepthProcessor`.
            image_grid_thw (`torch.LongTensor` of shape `(num_images, 3)`):
                The grids of the images the depth maps belong to: depth maps share them by construction.
            depth_intrinsics (`torch.Tensor` of shape `(num_images, 4)`, *optional*):
                (fx, fy, cx, cy) per image in its resized pixels, for `depth_input="points"` (see
                `get_image_features`).
        """
        if not self.config.has_depth_encoder:
            with_encoder = [repr(name) for name, fusion in DEPTH_FUSIONS.items() if fusion.has_depth_encoder]
            raise ValueError(
                f"This model has depth_fusion={self.config.depth_fusion!r}: it has no depth encoder (only "
                f"{', '.join(with_encoder)} do)."
            )
        encoder_config = self.depth_encoder.config
        self.check_depth_values(depth_values, image_grid_thw, encoder_config.patch_size**2)
        encoder_input = self.encode_depth(depth_values, image_grid_thw, kwargs.get("depth_intrinsics"))
        encoder_input = encoder_input.to(self.depth_encoder.dtype)
        depth_outputs = self.depth_encoder(
            encoder_input, grid_thw=image_grid_thw, output_hidden_states=kwargs.get("output_hidden_states", False)
        )
        split_sizes = (image_grid_thw.prod(-1) // self.depth_encoder.spatial_merge_size**2).tolist()
        depth_outputs.pooler_output = torch.split(depth_outputs.pooler_output, split_sizes)
        return depth_outputs

    def get_rope_index(
        self,
        input_ids: torch.LongTensor,
        mm_token_type_ids: torch.IntTensor,
        image_grid_thw: torch.LongTensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        second_per_grid_ts: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stock M-RoPE positions, on the host for text and images (`image_text_rope_index`: same values), through the
        stock method with video.

        A fusion whose image with depth gets more tokens (`tokens_per_image_with_depth=2`, `concat`) has image runs
        twice as long as the grid's tokens: an image followed by its depth tokens. The depth half takes the positions
        of the RGB patches it covers, and the text after it continues as if it were absent, so the rope delta counts
        the depth tokens as length that adds no position.
        """
        if video_grid_thw is None:
            tokens_per_image_with_depth = self.config.fusion.tokens_per_image_with_depth
            return image_text_rope_index(
                mm_token_type_ids,
                attention_mask,
                image_grid_thw,
                self.config.vision_config.spatial_merge_size,
                copies_per_image=(1, tokens_per_image_with_depth) if tokens_per_image_with_depth > 1 else (1,),
            )
        return super().get_rope_index(
            input_ids, mm_token_type_ids, image_grid_thw, video_grid_thw, second_per_grid_ts, attention_mask
        )

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        mm_token_type_ids: torch.IntTensor | None = None,
        second_per_grid_ts: torch.Tensor | None = None,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        depth_values: torch.Tensor | None = None,
        image_has_depth: torch.BoolTensor | None = None,
        depth_intrinsics: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ):
        r"""
        depth_values (`torch.Tensor` of shape `(num_depth_patches, patch_size * patch_size)`, *optional*):
            Metric depth in metres of the images that have depth (see `get_image_features`). Without it the model is
            exactly the base Qwen2.5-VL.
        image_has_depth (`torch.BoolTensor` of shape `(num_images,)`, *optional*):
            Which images `depth_values` covers. Defaults to every image.
        depth_intrinsics (`torch.Tensor` of shape `(num_depth_images, 4)`, *optional*):
            Camera intrinsics of the images with depth (see `get_image_features`).
        """
        if depth_values is not None or image_has_depth is not None:
            if pixel_values is None:
                raise ValueError(DEPTH_WITHOUT_PIXELS_ERROR)
            # The stock forward encodes `pixel_values` without depth; encode them here with it instead.
            image_outputs = self.get_image_features(
                pixel_values,
                image_grid_thw,
                depth_values=depth_values,
                image_has_depth=image_has_depth,
                depth_intrinsics=depth_intrinsics,
                **kwargs,
            )
            mm_encoder_outputs = {**(mm_encoder_outputs or {}), "image": image_outputs}
            pixel_values = None
        elif self.training and self.config.has_depth and pixel_values is not None:
            # Trainers drop dataset columns they do not know (TRL keeps only messages and images): say so, rather
            # than let a depth model be fine-tuned RGB-only without anyone noticing.
            logger.warning_once(
                "Training a depth model on images without depth_values: depth did not reach the model. With TRL, "
                "put each depth map inside its image block of the messages ({'type': 'image', 'depth': ...}); see "
                "the README's 'Fine-tuning with trl sft'."
            )
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            pixel_values=pixel_values,
            pixel_values_videos=pixel_values_videos,
            image_grid_thw=image_grid_thw,
            video_grid_thw=video_grid_thw,
            mm_token_type_ids=mm_token_type_ids,
            second_per_grid_ts=second_per_grid_ts,
            mm_encoder_outputs=mm_encoder_outputs,
            **kwargs,
        )


def new_depth_module_prefixes(source_config: dict, config: Qwen2_5_VLDepthConfig) -> tuple[str, ...]:
    """The depth modules of `config` that a checkpoint with `source_config` (its config.json) does not have by design:
    all of them for a base Qwen2.5-VL checkpoint; for a depth checkpoint saved in another fusion mode, those its mode
    lacks (`DepthFusion.new_modules_from`)."""
    if source_config.get("model_type") != config.model_type:
        return DEPTH_MODULE_PREFIXES
    source_fusion = DEPTH_FUSIONS.get(source_config.get("depth_fusion", DEFAULT_DEPTH_FUSION))
    return tuple(f"model.{name}." for name in config.fusion.new_modules_from(source_fusion))


class Qwen2_5_VLDepthForConditionalGeneration(
    Qwen2_5_VLDepthPreTrainedModel, Qwen2_5_VLForConditionalGeneration, GenerationMixin
):
    config: Qwen2_5_VLDepthConfig

    def __init__(self, config: Qwen2_5_VLDepthConfig):
        # Skip Qwen2_5_VLForConditionalGeneration.__init__: it would build (and allocate) a plain Qwen2_5_VLModel.
        super(Qwen2_5_VLForConditionalGeneration, self).__init__(config)
        self.model = Qwen2_5_VLDepthModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_depth_features(self, depth_values: torch.Tensor, image_grid_thw: torch.LongTensor, **kwargs):
        return self.model.get_depth_features(depth_values, image_grid_thw, **kwargs)

    def _prepare_multimodal_encoder_kwargs_for_generation(self, model_kwargs: dict) -> dict:
        # Generation encodes the images before prefill and drops every `get_image_features` argument, depth included,
        # even without images to encode: depth without its images would be dropped silently, where `forward` refuses.
        depth_given = model_kwargs.get("depth_values") is not None or model_kwargs.get("image_has_depth") is not None
        if depth_given and model_kwargs.get("pixel_values") is None:
            raise ValueError(DEPTH_WITHOUT_PIXELS_ERROR)
        return super()._prepare_multimodal_encoder_kwargs_for_generation(model_kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """Load a depth checkpoint, or build a depth model from a plain Qwen2.5-VL checkpoint.

        From a base checkpoint every base weight loads (legacy pre-4.52 key names included) and only the depth modules
        are new: the gate at zero, and the depth encoder copied from the RGB tower when `depth_init_from_rgb`. A depth
        checkpoint must have its depth weights: any that are missing raise, since initialising them would silently
        turn depth off (a gate at zero) or undo its training (an encoder re-copied from the RGB tower).
        """
        output_loading_info = kwargs.pop("output_loading_info", False)
        model, loading_info = super().from_pretrained(
            pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
        )
        hub_kwargs = {
            key: kwargs[key]
            for key in ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")
            if key in kwargs
        }
        if pretrained_model_name_or_path is None:  # weights from `state_dict=` only: the given config describes them
            source_config = model.config.to_dict()
        else:
            source_config, _ = PreTrainedConfig.get_config_dict(pretrained_model_name_or_path, **hub_kwargs)
        new_prefixes = new_depth_module_prefixes(source_config, model.config)
        missing = set(loading_info["missing_keys"])
        missing_depth = sorted(key for key in missing if key.startswith(DEPTH_MODULE_PREFIXES))
        unexpectedly_missing = [key for key in missing_depth if not key.startswith(new_prefixes)]
        # Depth weights missing next to base weights that loaded are a damaged depth checkpoint. When no base weight
        # loaded either, the file holds none of this model: its missing keys are reported (the load report,
        # `output_loading_info`) as for any model, not blamed on depth.
        has_base_weights = any(
            name not in missing and not name.startswith(DEPTH_MODULE_PREFIXES) for name, _ in model.named_parameters()
        )
        if unexpectedly_missing and has_base_weights:
            fusion_unnamed = (
                source_config.get("model_type") == model.config.model_type
                and "depth_fusion" not in source_config
                and "depth_fusion" not in kwargs
                and not isinstance(kwargs.get("config"), PreTrainedConfig)
            )
            if fusion_unnamed:
                raise ValueError(
                    f"The config.json of {pretrained_model_name_or_path} has no 'depth_fusion' key, so it loaded as "
                    f"the default {model.config.depth_fusion!r}, whose depth weights the checkpoint lacks (e.g. "
                    f"{unexpectedly_missing[:5]}): add the 'depth_fusion' it was saved with to its config.json, or "
                    "pass depth_fusion=... to from_pretrained."
                )
            raise ValueError(
                f"{pretrained_model_name_or_path} is a depth model checkpoint but lacks {len(unexpectedly_missing)} "
                f"depth weights, e.g. {unexpectedly_missing[:5]}: they would be initialised instead of loaded. Save the "
                "model again with save_pretrained, or load the base Qwen2.5-VL checkpoint to start depth afresh."
            )
        if (
            model.config.has_depth_encoder
            and model.config.depth_init_from_rgb
            and f"model.{DEPTH_ENCODER}." in new_prefixes
        ):
            model.model.depth_encoder.init_from_rgb(model.model.visual)
            logger.info("New depth encoder initialised from the RGB tower of %s.", pretrained_model_name_or_path)
        missing_base = sorted(key for key in missing if not key.startswith(DEPTH_MODULE_PREFIXES))
        if missing_base:
            logger.warning("Base weights missing from %s: %s", pretrained_model_name_or_path, missing_base[:10])
        return (model, loading_info) if output_loading_info else model

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        mm_token_type_ids: torch.IntTensor | None = None,
        second_per_grid_ts: torch.Tensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        depth_values: torch.Tensor | None = None,
        image_has_depth: torch.BoolTensor | None = None,
        depth_intrinsics: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MultimodalCausalLMOutputWithPast:
        r"""
        depth_values (`torch.Tensor` of shape `(num_depth_patches, patch_size * patch_size)`, *optional*):
            Metric depth in metres of the images that have depth, from `Qwen2_5_VLDepthProcessor`. See
            `Qwen2_5_VLDepthModel.get_image_features`.
        image_has_depth (`torch.BoolTensor` of shape `(num_images,)`, *optional*):
            Which images `depth_values` covers. Defaults to every image.
        depth_intrinsics (`torch.Tensor` of shape `(num_depth_images, 4)`, *optional*):
            Camera intrinsics (fx, fy, cx, cy) of the images with depth in their resized pixels, from the processor's
            `intrinsics=`; read by `depth_input="points"` models.
        """
        # The stock forward hands its extra kwargs to the inner model, whose forward names the depth inputs.
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            pixel_values=pixel_values,
            pixel_values_videos=pixel_values_videos,
            image_grid_thw=image_grid_thw,
            video_grid_thw=video_grid_thw,
            mm_token_type_ids=mm_token_type_ids,
            second_per_grid_ts=second_per_grid_ts,
            logits_to_keep=logits_to_keep,
            mm_encoder_outputs=mm_encoder_outputs,
            depth_values=depth_values,
            image_has_depth=image_has_depth,
            depth_intrinsics=depth_intrinsics,
            **kwargs,
        )


# Checkpoints saved before transformers 4.52 (the published Qwen2.5-VL ones) name the text model `model.*` and the
# tower `visual.*`. transformers maps them for its own Qwen2.5-VL classes only, so the same renaming is registered for
# ours, leaving every depth module of the fusion table alone. (transformers inverts these patterns to save in the same
# layout: keep their shape.)
_MODERN_SUBMODULES = "|".join(("language_model", "visual", *DEPTH_MODULE_NAMES))
register_checkpoint_conversion_mapping(
    "Qwen2_5_VLDepthForConditionalGeneration",
    [
        WeightRenaming(source_patterns=r"^visual", target_patterns="model.visual"),
        WeightRenaming(
            source_patterns=rf"^model(?!\.({_MODERN_SUBMODULES}))",
            target_patterns="model.language_model",
        ),
    ],
    overwrite=True,
)
register_checkpoint_conversion_mapping(
    "Qwen2_5_VLDepthModel",
    [
        WeightRenaming(
            source_patterns=rf"^model\.(?!(?:{_MODERN_SUBMODULES})\.)(.+)",
            target_patterns=r"model.language_model.\1",
        ),
    ],
    overwrite=True,
)

Qwen2_5_VLDepthForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")

__all__ = [
    "Qwen2_5_VLDepthEncoder",
    "Qwen2_5_VLDepthForConditionalGeneration",
    "Qwen2_5_VLDepthModel",
    "Qwen2_5_VLDepthPreTrainedModel",
]
