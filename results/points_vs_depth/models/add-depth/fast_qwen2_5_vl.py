"""A faster Qwen2.5-VL vision path: the stock computations with fewer kernel launches and host syncs, same values.

- `FastQwen2_5_VisionTransformer`: the stock vision tower (same weights, same keys, same outputs) whose index
  bookkeeping comes from per-grid caches (`vision_position_ids`, `vision_window_index`) and whose equal-length
  attention segments go through one SDPA call (`Qwen2_5_VLBatchedVisionAttention`);
- `image_text_rope_index`: stock M-RoPE positions of text-and-image sequences, computed on the host.

Nothing here knows about depth: `modeling_qwen2_5_vl_depth.py` builds on these classes. This file is remote code: it
imports only `torch` and `transformers`.
"""

import functools
import itertools

import torch
import torch.nn.functional as F
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
    Qwen2_5_VisionTransformerPretrainedModel,
    Qwen2_5_VLVisionAttention,
    apply_rotary_pos_emb_vision,
)
from transformers.vision_utils import get_vision_position_ids, get_vision_window_index


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
    copies_per_image: tuple[int, ...] = (1,),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stock Qwen2.5-VL M-RoPE positions and deltas for text-and-image sequences, computed on the host.

    Same values as `Qwen2_5_VLModel.get_rope_index` (which also handles video): text runs count up by one, an image
    run takes its grid's (t, h, w) positions offset by the position before it and advances by max(h, w). The stock
    loop builds every run with small tensor ops on the model's device, ~55 kernel launches and host syncs per sample,
    ~7,000 for a batch of 128: on a GPU that outweighs a small model's whole forward. Here the token types come to the
    host once, each sample is a few CPU ops, and the positions go back in one copy.

    `copies_per_image` lists the lengths an image run may have, in multiples of its grid's tokens (stock: `(1,)`): a
    run of `k` copies repeats the grid's positions `k` times and advances the position as one image does.
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
                continue
            t, h, w = next(grids)
            image_positions = _grid_rope_positions(t, h, w, spatial_merge_size) + position
            image_tokens = image_positions.shape[1]
            copies, remainder = divmod(run_length, image_tokens)
            if remainder or copies not in copies_per_image:
                expected = " or ".join(str(image_tokens * allowed) for allowed in copies_per_image)
                raise ValueError(
                    f"Sample {batch_index} has a run of {run_length} image tokens for an image of {image_tokens} "
                    f"tokens (grid {[t, h, w]}): expected {expected}. Build inputs with the model's processor."
                )
            runs.append(image_positions.repeat(1, copies))
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
    segments reshape into SDPA's batch dimension instead: the same arithmetic in one call (weights unchanged). Ragged
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


class FastQwen2_5_VisionTransformer(Qwen2_5_VisionTransformerPretrainedModel):
    """The stock Qwen2.5-VL vision tower (same weights, same keys, same outputs), faster: its attention batches
    equal-length segments (`Qwen2_5_VLBatchedVisionAttention`), and its rotary position ids, window permutation and
    window lengths come from per-grid caches instead of being rebuilt image by image (`vision_position_ids`: a few
    ops instead of thousands per batch). Precomputed `position_ids`/`window_index`/`cu_window_seqlens` still win.
    """

    def __init__(self, config, *inputs, **kwargs) -> None:
        super().__init__(config, *inputs, **kwargs)
        for block in self.blocks:  # same parameters as the stock attention
            block.attn = Qwen2_5_VLBatchedVisionAttention(config=config)

    def with_cached_grid_indices(self, grid_thw: torch.Tensor, kwargs: dict) -> dict:
        """`kwargs` plus the tower's position ids and window index from the per-grid caches, unless precomputed (the
        names `transformers.vision_utils` pops)."""
        kwargs = dict(kwargs)
        if kwargs.get("position_ids") is None:
            kwargs["position_ids"] = vision_position_ids(grid_thw, self.spatial_merge_size)
        if kwargs.get("window_index") is None and kwargs.get("cu_window_seqlens") is None:
            kwargs["window_index"], kwargs["cu_window_seqlens"] = vision_window_index(
                grid_thw, self.spatial_merge_size, self.window_size, self.patch_size
            )
        return kwargs

    def forward(self, hidden_states: torch.Tensor, grid_thw: torch.Tensor, **kwargs):
        return super().forward(hidden_states, grid_thw, **self.with_cached_grid_indices(grid_thw, kwargs))


__all__ = ["FastQwen2_5_VisionTransformer", "Qwen2_5_VLBatchedVisionAttention", "image_text_rope_index"]
