"""Qwen2.5-VL-Depth: Qwen2.5-VL that also sees a depth map, built modular-style on the installed Qwen2.5-VL classes.

A depth encoder (Qwen2.5-VL vision blocks over a 1-channel depth map, on the RGB image's patch grid and 2x2 merge)
turns each image's depth map into exactly as many tokens as the image has. They reach the language model in one of
three ways, chosen by `config.depth_fusion`:

- `"add"`: added onto the image tokens through a zero-initialised gate, so a fresh model is the base model;
- `"concat"`: appended after the image as `<|vision_start|><|depth_pad|>...<|vision_end|>`, each depth token with
  the M-RoPE position of the RGB patch it covers;
- `"none"`: no depth at all (the RGB-only baseline).

This file is remote code: it imports only `torch`, `transformers` and the project's own remote-code files.
"""

import functools
import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import initialization as init
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    MultimodalBaseModelOutputWithPast,
    MultimodalCausalLMOutputWithPast,
)
from transformers.modeling_utils import slice_logits_to_keep
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
    Qwen2_5_VisionPatchEmbed,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLModel,
    Qwen2_5_VLPatchMerger,
    Qwen2_5_VLPreTrainedModel,
    Qwen2_5_VLVisionAttention,
    Qwen2_5_VLVisionBlock,
    Qwen2_5_VLVisionRotaryEmbedding,
    apply_rotary_pos_emb_vision,
)
from transformers.utils import can_return_tuple, logging
from transformers.vision_utils import get_vision_cu_seqlens, get_vision_position_ids, get_vision_window_index


try:  # loaded as remote code: a module of a package built from the model folder
    from .configuration_depth import Qwen2_5_VLDepthConfig, Qwen2_5_VLDepthEncoderConfig
except ImportError:  # imported from a checkout, where the three remote-code files are top-level modules
    from configuration_depth import Qwen2_5_VLDepthConfig, Qwen2_5_VLDepthEncoderConfig


logger = logging.get_logger(__name__)

# `mm_token_type_ids` value of `<|depth_pad|>` tokens. transformers uses 0 text, 1 image, 2 video, 3 audio.
DEPTH_TOKEN_TYPE = 4
# Parameter names of the modules a base Qwen2.5-VL checkpoint does not have.
DEPTH_MODULE_PREFIXES = ("model.depth_encoder.", "model.depth_gate.")


@dataclass
class Qwen2_5_VLDepthModelOutputWithPast(MultimodalBaseModelOutputWithPast):
    r"""
    depth_outputs (`BaseModelOutputWithPooling`, *optional*):
        The depth encoder's outputs: `pooler_output` holds one tensor of merged depth tokens per image.
    """

    depth_outputs: BaseModelOutputWithPooling | None = None

    def to_tuple(self) -> tuple:
        return tuple(getattr(self, k).to_tuple() if k.endswith("_outputs") else self[k] for k in self.keys())


@dataclass
class Qwen2_5_VLDepthCausalLMOutputWithPast(MultimodalCausalLMOutputWithPast):
    r"""
    depth_outputs (`BaseModelOutputWithPooling`, *optional*):
        The depth encoder's outputs: `pooler_output` holds one tensor of merged depth tokens per image.
    """

    depth_outputs: BaseModelOutputWithPooling | None = None

    def to_tuple(self) -> tuple:
        return tuple(getattr(self, k).to_tuple() if k.endswith("_outputs") else self[k] for k in self.keys())


@functools.lru_cache(maxsize=256)
def _grid_position_ids(t: int, h: int, w: int, merge: int) -> torch.Tensor:
    return get_vision_position_ids(torch.tensor([[t, h, w]]), merge)


@functools.lru_cache(maxsize=256)
def _grid_window_index(
    t: int, h: int, w: int, merge: int, window: int, patch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    window_index, cu_window_seqlens = get_vision_window_index(torch.tensor([[t, h, w]]), merge, window, patch)
    return window_index, cu_window_seqlens.diff()  # the image's window lengths (empty windows already dropped)


def vision_position_ids(grid_thw: torch.Tensor, merge: int) -> torch.Tensor:
    """`transformers.vision_utils.get_vision_position_ids`, from a per-grid cache.

    The stock function builds each image's ids with a dozen small tensor ops on the grid's device; for a batch of
    128 images that is ~2,000 kernel launches per tower per step, more than the transformer blocks issue. The ids only
    depend on the grid, so each distinct grid is computed once (by the stock function, on the CPU) and the batch is
    one concatenation and one copy.
    """
    grids = [tuple(grid) for grid in grid_thw.tolist()]
    return torch.cat([_grid_position_ids(*grid, merge) for grid in grids]).to(grid_thw.device)


def vision_window_index(
    grid_thw: torch.Tensor, merge: int, window: int, patch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`transformers.vision_utils.get_vision_window_index`, from a per-grid cache (same values; see
    `vision_position_ids`): each image's window permutation shifted by the merged tokens before it, and the windows'
    cumulative lengths."""
    indices, lengths, offset = [], [], 0
    for t, h, w in grid_thw.tolist():
        window_index, window_lengths = _grid_window_index(t, h, w, merge, window, patch)
        indices.append(window_index + offset)
        lengths.append(window_lengths)
        offset += t * (h // merge) * (w // merge)
    cu_window_seqlens = F.pad(torch.cat(lengths).cumsum(0), (1, 0))
    return torch.cat(indices).to(grid_thw.device), cu_window_seqlens.to(grid_thw.device, torch.int32)


def image_text_rope_index(
    mm_token_type_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    image_grid_thw: torch.Tensor | None,
    spatial_merge_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stock Qwen2.5-VL M-RoPE positions and deltas for text-and-image sequences, computed on the host.

    Same values as `Qwen2_5_VLModel.get_rope_index` (which also handles video): text runs count up by one, an image
    run takes its grid's (t, h, w) positions offset by the position before it and advances by max(h, w). The stock
    loop builds every run with small tensor ops on the model's device, ~55 kernel launches and host syncs per sample,
    ~7,000 for a batch of 128: on a GPU that outweighs a small model's whole forward. Here the token types come to the
    host once, each sample is a few CPU ops, and the positions go back in one copy.
    """
    token_types = mm_token_type_ids.cpu()
    in_sequence = (
        attention_mask.bool().cpu() if attention_mask is not None else torch.ones_like(token_types, dtype=torch.bool)
    )
    grids = iter(image_grid_thw.tolist() if image_grid_thw is not None else [])
    batch_size, length = token_types.shape
    position_ids = torch.zeros(3, batch_size, length, dtype=torch.long)
    deltas = []
    for batch_index in range(batch_size):
        runs, position = [], 0
        for token_type, run in itertools.groupby(token_types[batch_index][in_sequence[batch_index]].tolist()):
            run_length = len(list(run))
            if token_type == 0:
                runs.append(torch.arange(position, position + run_length).expand(3, -1))
                position += run_length
            else:
                t, h, w = next(grids)
                runs.append(_grid_rope_positions(t, h, w, spatial_merge_size) + position)
                position += max(h, w) // spatial_merge_size
        positions = torch.cat(runs, dim=1)
        position_ids[:, batch_index, in_sequence[batch_index]] = positions
        deltas.append(int(positions.max()) + 1 - positions.shape[1])
    device = mm_token_type_ids.device
    return position_ids.to(device), torch.tensor(deltas, device=device).unsqueeze(1)


@functools.lru_cache(maxsize=256)
def _grid_rope_positions(t: int, h: int, w: int, merge: int) -> torch.Tensor:
    """An image's (3, tokens) M-RoPE positions from 0, as `Qwen2_5_VLModel.get_vision_position_ids` lays them out."""
    grid = torch.meshgrid(torch.arange(t), torch.arange(h // merge), torch.arange(w // merge), indexing="ij")
    return torch.stack(grid, dim=0).reshape(3, -1)


class Qwen2_5_VLBatchedVisionAttention(Qwen2_5_VLVisionAttention):
    """Vision attention that runs all equal-length segments (windows or images) through one SDPA call.

    The stock attention loops over `cu_seqlens` segments in Python: one SDPA call per window or image, up to hundreds
    per block, so the tower is bound by kernel launches. When every segment has the same length (all windows of
    images whose sides are multiples of the window, or a batch of same-size images under full attention), the
    segments reshape into SDPA's batch dimension instead: the same arithmetic in one call. Both towers use it: the
    RGB tower (weights and outputs unchanged, so base checkpoints behave as before) and the depth encoder. Ragged
    segments, eager attention (needed for attention weights) and flash attention take the stock path.
    """

    def forward(
        self,
        hidden_states: torch.Tensor,
        cu_seqlens: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        max_seqlen: int | None = None,
        uniform_seq_len: int | None = None,
        **kwargs,
    ) -> torch.Tensor:
        if self.config._attn_implementation != "sdpa":
            return super().forward(hidden_states, cu_seqlens, position_embeddings, max_seqlen=max_seqlen, **kwargs)
        if uniform_seq_len is None:
            # One host sync per call, as the stock path's `lengths.tolist()` has.
            lengths = set((cu_seqlens[1:] - cu_seqlens[:-1]).tolist())
            if len(lengths) != 1:
                return super().forward(hidden_states, cu_seqlens, position_embeddings, max_seqlen=max_seqlen, **kwargs)
            uniform_seq_len = lengths.pop()

        seq_length = hidden_states.shape[0]
        query, key, value = (
            self.qkv(hidden_states).reshape(seq_length, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        )
        cos, sin = position_embeddings
        query, key = apply_rotary_pos_emb_vision(query, key, cos, sin)
        num_segments = seq_length // uniform_seq_len
        query, key, value = (
            tensor.reshape(num_segments, uniform_seq_len, self.num_heads, -1).transpose(1, 2)
            for tensor in (query, key, value)
        )
        attn_output = F.scaled_dot_product_attention(
            query,
            key,
            value,
            dropout_p=self.attention_dropout if self.training else 0.0,
            scale=self.scaling,
        )
        attn_output = attn_output.transpose(1, 2).reshape(seq_length, -1)
        return self.proj(attn_output)


class Qwen2_5_VLDepthBlock(Qwen2_5_VLVisionBlock):
    """A Qwen2.5-VL vision block whose attention batches equal-length images (weights are key-compatible)."""

    def __init__(self, config: Qwen2_5_VLDepthEncoderConfig) -> None:
        super().__init__(config)
        self.attn = Qwen2_5_VLBatchedVisionAttention(config=config)


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


class Qwen2_5_VLDepthPreTrainedModel(Qwen2_5_VLPreTrainedModel):
    config: Qwen2_5_VLDepthConfig
    input_modalities = ("image", "video", "text")
    _no_split_modules = ["Qwen2_5_VLDecoderLayer", "Qwen2_5_VLVisionBlock", "Qwen2_5_VLDepthBlock"]

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, Qwen2_5_VLDepthGate):
            init.zeros_(module.gate)


class Qwen2_5_VLDepthEncoder(Qwen2_5_VLDepthPreTrainedModel):
    """Qwen2.5-VL vision blocks over a 1-channel depth map, full attention, merged 2x2 and projected to the LLM width.

    Its input is laid out exactly like the RGB tower's `pixel_values`: one row per 14x14 patch, patches of each 2x2
    merge group contiguous, so its output token `i` covers the same image region as RGB token `i`.
    """

    config: Qwen2_5_VLDepthEncoderConfig
    _no_split_modules = ["Qwen2_5_VLDepthBlock"]
    _input_embed_layer = "patch_embed"

    def __init__(self, config: Qwen2_5_VLDepthEncoderConfig) -> None:
        super().__init__(config)
        self.spatial_merge_size = config.spatial_merge_size
        self.patch_embed = Qwen2_5_VisionPatchEmbed(
            patch_size=config.patch_size,
            temporal_patch_size=config.temporal_patch_size,
            in_channels=config.in_channels,
            embed_dim=config.hidden_size,
        )
        self.rotary_pos_emb = Qwen2_5_VLVisionRotaryEmbedding(config)
        self.blocks = nn.ModuleList([Qwen2_5_VLDepthBlock(config) for _ in range(config.depth)])
        self.merger = Qwen2_5_VLPatchMerger(
            dim=config.out_hidden_size,
            context_dim=config.hidden_size,
            spatial_merge_size=config.spatial_merge_size,
        )
        self.gradient_checkpointing = False
        self.post_init()

    def forward(self, hidden_states: torch.Tensor, grid_thw: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        """
        Args:
            hidden_states (`torch.Tensor` of shape `(num_patches, patch_size * patch_size)`):
                Encoded depth (see `Qwen2_5_VLDepthModel.encode_depth`), one row per patch.
            grid_thw (`torch.LongTensor` of shape `(num_images, 3)`):
                The RGB images' patch grids, which the depth maps share.
        """
        position_ids = vision_position_ids(grid_thw, self.spatial_merge_size)
        cu_seqlens = get_vision_cu_seqlens(grid_thw)
        seq_lens = (grid_thw[:, 0] * grid_thw[:, 1] * grid_thw[:, 2]).tolist()
        uniform_seq_len = seq_lens[0] if len(set(seq_lens)) == 1 else None

        hidden_states = self.patch_embed(hidden_states)
        position_embeddings = self.rotary_pos_emb(hidden_states, position_ids)
        for block in self.blocks:
            hidden_states = block(
                hidden_states,
                cu_seqlens=cu_seqlens,
                position_embeddings=position_embeddings,
                max_seqlen=max(seq_lens),
                uniform_seq_len=uniform_seq_len,
            )
        return BaseModelOutputWithPooling(last_hidden_state=hidden_states, pooler_output=self.merger(hidden_states))

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
        rgb_kernel = rgb_tower.patch_embed.proj.weight
        self.patch_embed.proj.weight.copy_(rgb_kernel.sum(dim=(1, 2), keepdim=True))
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


class Qwen2_5_VLDepthModel(Qwen2_5_VLDepthPreTrainedModel, Qwen2_5_VLModel):
    config: Qwen2_5_VLDepthConfig

    def __init__(self, config: Qwen2_5_VLDepthConfig):
        super().__init__(config)
        # The RGB tower keeps its classes and weights; only its attention's per-window loop becomes one batched call.
        for block in self.visual.blocks:
            block.attn = Qwen2_5_VLBatchedVisionAttention(config=config.vision_config)
        if config.has_depth:
            self.depth_encoder = Qwen2_5_VLDepthEncoder._from_config(config.depth_config)
        if config.depth_fusion == "add":
            self.depth_gate = Qwen2_5_VLDepthGate(config.depth_config.out_hidden_size)
        # The parent's post_init ran before the depth modules existed; this one initialises only those.
        self.post_init()

    def get_image_features(self, pixel_values: torch.Tensor, image_grid_thw: torch.LongTensor | None = None, **kwargs):
        """The stock RGB features, with the tower's index bookkeeping (rotary position ids, window permutation and
        window lengths) taken from a per-grid cache instead of being rebuilt image by image: same values, a few ops
        instead of thousands per batch (see `vision_position_ids`). Precomputed `image_*` kwargs still win."""
        if image_grid_thw is not None:
            vision = self.config.vision_config
            if "image_position_ids" not in kwargs:
                kwargs["image_position_ids"] = vision_position_ids(image_grid_thw, vision.spatial_merge_size)
            if "image_window_index" not in kwargs and "image_cu_window_seqlens" not in kwargs:
                window_index, cu_window_seqlens = vision_window_index(
                    image_grid_thw, vision.spatial_merge_size, vision.window_size, vision.patch_size
                )
                kwargs["image_window_index"] = window_index
                kwargs["image_cu_window_seqlens"] = cu_window_seqlens
        return super().get_image_features(pixel_values, image_grid_thw, **kwargs)

    def encode_depth(self, depth_meters: torch.Tensor) -> torch.Tensor:
        """Metric depth (metres) to depth-encoder input; see `encode_metric_depth`."""
        return encode_metric_depth(depth_meters, self.config)

    @can_return_tuple
    def get_depth_features(
        self, depth_values: torch.Tensor, image_grid_thw: torch.LongTensor, **kwargs
    ) -> BaseModelOutputWithPooling:
        """Encode depth maps into merged tokens, one tensor per image (`pooler_output`), like `get_image_features`.

        Args:
            depth_values (`torch.Tensor` of shape `(num_patches, patch_size * patch_size)`):
                Metric depth in metres, patchified on the RGB grid by `Qwen2_5_VLDepthProcessor`.
            image_grid_thw (`torch.LongTensor` of shape `(num_images, 3)`):
                The RGB images' patch grids: depth maps share them by construction.
        """
        if not self.config.has_depth:
            raise ValueError("This model has depth_fusion='none' (RGB only): it takes no depth_values.")
        if image_grid_thw is None:
            raise ValueError("depth_values were given without an image: depth needs image_grid_thw of its images.")
        encoder_config = self.depth_encoder.config
        patch_dim = encoder_config.in_channels * encoder_config.temporal_patch_size * encoder_config.patch_size**2
        num_patches = int(image_grid_thw.prod(-1).sum())
        if depth_values.ndim != 2 or tuple(depth_values.shape) != (num_patches, patch_dim):
            raise ValueError(
                f"depth_values has shape {tuple(depth_values.shape)} but the images' grids "
                f"{image_grid_thw.tolist()} need ({num_patches}, {patch_dim}): one row of {patch_dim} depth values per "
                "patch. Depth must be patchified on its image's grid (use Qwen2_5_VLDepthProcessor)."
            )
        encoder_input = self.encode_depth(depth_values).to(self.depth_encoder.dtype)
        depth_outputs = self.depth_encoder(encoder_input, grid_thw=image_grid_thw)
        split_sizes = (image_grid_thw.prod(-1) // self.depth_encoder.spatial_merge_size**2).tolist()
        depth_outputs.pooler_output = torch.split(depth_outputs.pooler_output, split_sizes)
        return depth_outputs

    def get_depth_placeholder_mask(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor, depth_features: torch.Tensor
    ) -> torch.Tensor:
        """Mask of `<|depth_pad|>` positions; a ValueError when their count differs from the depth features'."""
        if input_ids is None:
            raise ValueError("depth_fusion='concat' needs input_ids to find the <|depth_pad|> placeholder tokens.")
        depth_mask = input_ids == self.config.depth_token_id
        num_depth_tokens = int(depth_mask.sum())
        if num_depth_tokens != depth_features.shape[0]:
            raise ValueError(
                f"Depth features and depth tokens do not match, tokens: {num_depth_tokens}, features: "
                f"{depth_features.shape[0]}. With depth_fusion='concat' the prompt needs one <|depth_pad|> "
                f"(id {self.config.depth_token_id}) per depth token: build inputs with Qwen2_5_VLDepthProcessor "
                "configured for 'concat'."
            )
        return depth_mask.unsqueeze(-1).expand_as(inputs_embeds).to(inputs_embeds.device)

    def rgb_rope_index(
        self,
        input_ids: torch.LongTensor,
        mm_token_type_ids: torch.IntTensor,
        image_grid_thw: torch.LongTensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        second_per_grid_ts: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The stock positions of a sequence without depth tokens: on the host for text and images
        (`image_text_rope_index`, same values), through the stock method when there is video."""
        if video_grid_thw is None and bool((mm_token_type_ids <= 1).all()):
            return image_text_rope_index(
                mm_token_type_ids, attention_mask, image_grid_thw, self.config.vision_config.spatial_merge_size
            )
        return super().get_rope_index(
            input_ids, mm_token_type_ids, image_grid_thw, video_grid_thw, second_per_grid_ts, attention_mask
        )

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
        """M-RoPE positions where each depth token takes the (t, h, w) position of the RGB patch it covers.

        Depth tokens are placed as if they were absent: text and images are positioned by the stock rule over the
        sequence without them, and each depth run then copies the positions of the image run before it. So the text
        after a depth block continues where it would have without depth, and the rope delta (used when decoding)
        counts the depth tokens as sequence length that adds no position.
        """
        is_depth = mm_token_type_ids == DEPTH_TOKEN_TYPE
        if not bool(is_depth.any()):
            return self.rgb_rope_index(
                input_ids, mm_token_type_ids, image_grid_thw, video_grid_thw, second_per_grid_ts, attention_mask
            )
        in_sequence = attention_mask.bool() if attention_mask is not None else torch.ones_like(is_depth)
        position_ids, rope_deltas = self.rgb_rope_index(
            input_ids,
            mm_token_type_ids.masked_fill(is_depth, 0),
            image_grid_thw,
            video_grid_thw,
            second_per_grid_ts,
            attention_mask=in_sequence & ~is_depth,
        )
        for batch_index in range(input_ids.shape[0]):
            token_types = mm_token_type_ids[batch_index][in_sequence[batch_index]].tolist()
            sequence_positions = torch.nonzero(in_sequence[batch_index]).squeeze(-1)
            image_run = None
            start = 0
            for token_type, run in itertools.groupby(token_types):
                length = len(list(run))
                if token_type == 1:
                    image_run = sequence_positions[start : start + length]
                elif token_type == DEPTH_TOKEN_TYPE:
                    if image_run is None or len(image_run) != length:
                        raise ValueError(
                            f"A run of {length} depth tokens must follow its image's run of as many image tokens "
                            f"(found {0 if image_run is None else len(image_run)}) in sample {batch_index}."
                        )
                    depth_run = sequence_positions[start : start + length]
                    position_ids[:, batch_index, depth_run] = position_ids[:, batch_index, image_run]
                start += length
        num_depth_tokens = (is_depth & in_sequence).sum(dim=-1, keepdim=True)
        return position_ids, rope_deltas - num_depth_tokens.to(rope_deltas.device)

    @can_return_tuple
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
        **kwargs,
    ) -> Qwen2_5_VLDepthModelOutputWithPast:
        r"""
        depth_values (`torch.Tensor` of shape `(num_patches, patch_size * patch_size)`, *optional*):
            Metric depth in metres for every image, patchified on the images' grids by `Qwen2_5_VLDepthProcessor`.
            Invalid pixels (holes, sky) are 0 or NaN. Without it the model is exactly the base Qwen2.5-VL.
        """
        mm_encoder_outputs = dict(mm_encoder_outputs or {})
        if depth_values is not None:
            if mm_encoder_outputs.get("depth") is not None:
                raise ValueError("Pass either depth_values or mm_encoder_outputs['depth'], not both.")
            if pixel_values is None and mm_encoder_outputs.get("image") is None:
                raise ValueError("depth_values were given without an image: every depth map needs its RGB image.")
            mm_encoder_outputs["depth"] = self.get_depth_features(depth_values, image_grid_thw, return_dict=True)
        depth_outputs = mm_encoder_outputs.pop("depth", None)
        if depth_outputs is not None and input_ids is not None and self.config.depth_fusion == "add":
            if bool((input_ids == self.config.depth_token_id).any()):
                raise ValueError(
                    "The prompt has <|depth_pad|> tokens but depth_fusion='add' adds depth onto the image tokens: "
                    "build inputs with a processor configured for 'add'."
                )

        if depth_outputs is not None:
            inputs_embeds = self._fuse_depth(
                input_ids, inputs_embeds, pixel_values, image_grid_thw, mm_encoder_outputs, depth_outputs, **kwargs
            )
            # The images are in `inputs_embeds` now; the stock forward must not scatter them again.
            pixel_values = None
        image_outputs = mm_encoder_outputs.get("image")
        if depth_outputs is not None:
            mm_encoder_outputs.pop("image")

        outputs = super().forward(
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
            mm_encoder_outputs=mm_encoder_outputs or None,
            **kwargs,
        )
        fields = dict(outputs)
        if image_outputs is not None:
            fields["image_outputs"] = image_outputs
        return Qwen2_5_VLDepthModelOutputWithPast(**fields, depth_outputs=depth_outputs)

    def _fuse_depth(
        self, input_ids, inputs_embeds, pixel_values, image_grid_thw, mm_encoder_outputs, depth_outputs, **kwargs
    ) -> torch.Tensor:
        """Embed the prompt with its images and their depth tokens in place, per `config.depth_fusion`."""
        if inputs_embeds is None:
            # `<|depth_pad|>` may lie past the embedding table of a base checkpoint; its rows are overwritten anyway.
            token_ids = input_ids.masked_fill(input_ids == self.config.depth_token_id, self.config.image_token_id)
            inputs_embeds = self.get_input_embeddings()(token_ids)
        if mm_encoder_outputs.get("image") is None:
            mm_encoder_outputs["image"] = self.get_image_features(
                pixel_values, image_grid_thw, return_dict=True, **kwargs
            )
        image_embeds = torch.cat(mm_encoder_outputs["image"].pooler_output, dim=0).to(
            inputs_embeds.device, inputs_embeds.dtype
        )
        depth_embeds = torch.cat(depth_outputs.pooler_output, dim=0).to(inputs_embeds.device, inputs_embeds.dtype)
        if depth_embeds.shape != image_embeds.shape:
            raise ValueError(
                f"Depth gives {depth_embeds.shape[0]} tokens but the images give {image_embeds.shape[0]}: every image "
                "needs exactly one depth map on its own grid."
            )
        image_mask, _ = self.get_placeholder_mask(input_ids, inputs_embeds=inputs_embeds, image_features=image_embeds)
        if self.config.depth_fusion == "add":
            return inputs_embeds.masked_scatter(image_mask, image_embeds + self.depth_gate(depth_embeds))
        inputs_embeds = inputs_embeds.masked_scatter(image_mask, image_embeds)
        depth_mask = self.get_depth_placeholder_mask(input_ids, inputs_embeds, depth_embeds)
        return inputs_embeds.masked_scatter(depth_mask, depth_embeds)


class Qwen2_5_VLDepthForConditionalGeneration(Qwen2_5_VLDepthPreTrainedModel, Qwen2_5_VLForConditionalGeneration):
    config: Qwen2_5_VLDepthConfig

    def __init__(self, config: Qwen2_5_VLDepthConfig):
        # Skip Qwen2_5_VLForConditionalGeneration.__init__: it would build (and allocate) a plain Qwen2_5_VLModel.
        super(Qwen2_5_VLForConditionalGeneration, self).__init__(config)
        self.model = Qwen2_5_VLDepthModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_depth_features(self, depth_values: torch.Tensor, image_grid_thw: torch.LongTensor, **kwargs):
        return self.model.get_depth_features(depth_values, image_grid_thw, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """Load a depth checkpoint, or build a depth model from a plain Qwen2.5-VL checkpoint.

        From a base checkpoint every base weight loads (legacy pre-4.52 key names included) and only the depth modules
        are new: the gate at zero, and the depth encoder copied from the RGB tower when `depth_init_from_rgb`.
        """
        output_loading_info = kwargs.pop("output_loading_info", False)
        model, loading_info = super().from_pretrained(
            pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
        )
        missing = set(loading_info["missing_keys"])
        if model.config.has_depth and model.config.depth_init_from_rgb:
            depth_encoder = model.model.depth_encoder
            if {f"model.depth_encoder.{name}" for name in depth_encoder.state_dict()} <= missing:
                depth_encoder.init_from_rgb(model.model.visual)
                logger.info("New depth encoder initialised from the RGB tower of %s.", pretrained_model_name_or_path)
        missing_base = sorted(key for key in missing if not key.startswith(DEPTH_MODULE_PREFIXES))
        if missing_base:
            logger.warning("Base weights missing from %s: %s", pretrained_model_name_or_path, missing_base[:10])
        return (model, loading_info) if output_loading_info else model

    @can_return_tuple
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
        **kwargs,
    ) -> Qwen2_5_VLDepthCausalLMOutputWithPast:
        r"""
        depth_values (`torch.Tensor` of shape `(num_patches, patch_size * patch_size)`, *optional*):
            Metric depth in metres for every image, from `Qwen2_5_VLDepthProcessor`. See `Qwen2_5_VLDepthModel`.
        """
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            pixel_values_videos=pixel_values_videos,
            image_grid_thw=image_grid_thw,
            video_grid_thw=video_grid_thw,
            second_per_grid_ts=second_per_grid_ts,
            mm_token_type_ids=mm_token_type_ids,
            position_ids=position_ids,
            attention_mask=attention_mask,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            mm_encoder_outputs=mm_encoder_outputs,
            depth_values=depth_values,
            **kwargs,
        )
        hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        return Qwen2_5_VLDepthCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=outputs.image_outputs,
            video_outputs=outputs.video_outputs,
            depth_outputs=outputs.depth_outputs,
        )

    def _prepare_multimodal_encoder_kwargs_for_generation(self, model_kwargs):
        # Encode depth once before prefill, next to the images: `mm_encoder_outputs` is dropped after prefill, so depth
        # never reaches a decode step, and it is expanded per sample with the images for beams/num_return_sequences.
        depth_values = model_kwargs.pop("depth_values", None)
        image_grid_thw = model_kwargs.get("image_grid_thw")
        model_kwargs = super()._prepare_multimodal_encoder_kwargs_for_generation(model_kwargs)
        if depth_values is not None:
            if model_kwargs["mm_encoder_outputs"].get("image") is None:
                raise ValueError("depth_values were given without an image: every depth map needs its RGB image.")
            model_kwargs["mm_encoder_outputs"]["depth"] = self.model.get_depth_features(
                depth_values, image_grid_thw, return_dict=True
            )
        return model_kwargs

    def _expand_multimodal_outputs(self, input_ids, mm_encoder_output, expand_size=1, inputs_embeds=None):
        depth_outputs = mm_encoder_output.pop("depth", None)
        if depth_outputs is not None:
            # A depth map has exactly its image's token count, so image placeholders split depth per sample too.
            super()._expand_multimodal_outputs(input_ids, {"image": depth_outputs}, expand_size, inputs_embeds)
        mm_encoder_output = super()._expand_multimodal_outputs(
            input_ids, mm_encoder_output, expand_size, inputs_embeds
        )
        if depth_outputs is not None:
            mm_encoder_output["depth"] = depth_outputs
        return mm_encoder_output


# Checkpoints saved before transformers 4.52 (the published Qwen2.5-VL ones) name the text model `model.*` and the
# tower `visual.*`. transformers maps them for its own Qwen2.5-VL class only, so the same renaming is registered for
# this class, leaving the depth modules alone.
register_checkpoint_conversion_mapping(
    "Qwen2_5_VLDepthForConditionalGeneration",
    [
        WeightRenaming(source_patterns=r"^visual", target_patterns="model.visual"),
        WeightRenaming(
            source_patterns=r"^model(?!\.(language_model|visual|depth_encoder|depth_gate))",
            target_patterns="model.language_model",
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
