"""The alignment model: the frozen RGB tower and the trainable depth encoder of a depth model, projection heads, loss.

`DepthAlignmentModel` embeds a batch of pairs on both sides, per image (`"global"`) or per co-located token
(`"dense"`), and scores them with `ClipLoss`; only the depth encoder, the heads and the temperature train.

With `reconstruction_weight > 0` a linear head also reconstructs each depth token's own encoder input (its 28 x 28 px,
average-pooled to `RECONSTRUCTION_GRID` cells per side and channel) from the token: a self-supervised term that keeps
in the tokens what the camera-blind RGB tower cannot ask for (where inside the token an object's depth layer ends,
and for `points` the lateral x, y that carry the focal length).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers.modeling_outputs import ModelOutput

from configuration_depth import Qwen2_5_VLDepthConfig
from modeling_qwen2_5_vl_depth import Qwen2_5_VLDepthForConditionalGeneration, encode_depth_input
from training.align.loss import ClipLoss, distributed_rank_and_world_size
from training.model_loading import keep_in_float32


ALIGNMENT_LEVELS = ("global", "dense")
# Cells per side that a token's input is pooled to for the reconstruction term: 7 cells of 4 px over a 28 px token
# resolve objects a few pixels across (the world's median object is 13 px wide), at 49 targets per channel.
RECONSTRUCTION_GRID = 7
# Prefix of the frozen RGB tower's entries in DepthAlignmentModel's state dict: never checkpointed (never changes).
RGB_TOWER_PREFIX = "rgb_tower."


@dataclass
class DepthAlignmentOutput(ModelOutput):
    """`depth_embeds[i]` / `rgb_embeds[i]`: projected, L2-normalised pair `i` (an image, or a sampled token)."""

    loss: torch.Tensor | None = None
    contrastive_loss: torch.Tensor | None = None
    reconstruction_loss: torch.Tensor | None = None
    depth_embeds: torch.Tensor | None = None
    rgb_embeds: torch.Tensor | None = None
    logit_scale: torch.Tensor | None = None


def mean_per_image(tokens: torch.Tensor, tokens_per_image: list[int]) -> torch.Tensor:
    """(sum(tokens_per_image), D) tokens -> (num_images, D) per-image means."""
    if len(set(tokens_per_image)) == 1:
        return tokens.reshape(len(tokens_per_image), tokens_per_image[0], -1).mean(dim=1)
    return torch.stack([chunk.mean(dim=0) for chunk in torch.split(tokens, tokens_per_image)])


class DepthAlignmentModel(nn.Module):
    """Frozen RGB tower + trainable depth encoder + projection heads + `ClipLoss`.

    It holds only the two towers of a depth model (not the language model): its state dict is small, has no tied
    tensors, and the Trainer checkpoints it with safetensors. The RGB tower is left out of checkpoints (it never
    changes); `_keys_to_ignore_on_save` tells the Trainer that those keys are missing on purpose when it resumes.
    """

    # Blocks that FSDP wraps on their own (accelerate reads this when no class list is configured).
    _no_split_modules = ["Qwen2_5_VLVisionBlock"]

    def __init__(
        self,
        rgb_tower: nn.Module,
        depth_encoder: nn.Module,
        depth_model_config: Qwen2_5_VLDepthConfig,
        alignment: str = "dense",
        projection_dim: int = 256,
        dense_tokens_per_image: int = 64,
        sampling_seed: int = 0,
        reconstruction_weight: float = 0.0,
    ):
        super().__init__()
        if alignment not in ALIGNMENT_LEVELS:
            raise ValueError(f"Unknown alignment {alignment!r}: expected one of {ALIGNMENT_LEVELS}.")
        if dense_tokens_per_image < 1:
            raise ValueError(f"dense_tokens_per_image must be at least 1; got {dense_tokens_per_image}.")
        if not reconstruction_weight >= 0:
            raise ValueError(f"reconstruction_weight must be a non-negative number; got {reconstruction_weight}.")
        self.alignment = alignment
        self.dense_tokens_per_image = dense_tokens_per_image
        self.sampling_seed = sampling_seed
        self.rgb_tower = rgb_tower.eval().requires_grad_(False)
        # Trainable weights are kept in fp32 (a bf16 checkpoint would otherwise train in bf16); autocast does bf16.
        self.depth_encoder = depth_encoder.requires_grad_(True)
        keep_in_float32(self.depth_encoder.parameters())
        rgb_width = rgb_tower.merger.mlp[-1].out_features
        depth_width = depth_encoder.merger.mlp[-1].out_features
        if rgb_width != depth_width:
            raise ValueError(f"RGB tokens have width {rgb_width} but depth tokens {depth_width}: they must match.")
        self.rgb_head = nn.Linear(rgb_width, projection_dim)
        self.depth_head = nn.Linear(depth_width, projection_dim)
        self.loss_fn = ClipLoss()
        self.reconstruction_weight = reconstruction_weight
        if reconstruction_weight > 0:
            channels = depth_model_config.input.channels
            self.reconstruction_head = nn.Linear(depth_width, channels * RECONSTRUCTION_GRID**2)
        # Counts training forwards: the dense token sample of a step is a function of (seed, step, rank), and being a
        # buffer it is checkpointed, so a resumed run draws exactly the samples an uninterrupted one would.
        self.register_buffer("dense_sampling_step", torch.zeros((), dtype=torch.long))
        # The metric depth encoding (range, invalid value) is the VLM's own, from its config.
        self.depth_model_config = depth_model_config

    @classmethod
    def from_depth_model(cls, depth_model: Qwen2_5_VLDepthForConditionalGeneration, **kwargs) -> DepthAlignmentModel:
        if not depth_model.config.has_depth_encoder:
            raise ValueError(
                f"The model has depth_fusion={depth_model.config.depth_fusion!r}: it has no depth encoder to align."
            )
        inner = depth_model.model
        return cls(inner.visual, inner.depth_encoder, depth_model.config, **kwargs)

    # -- frozen tower handling -------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> DepthAlignmentModel:
        """Set the trainable parts' mode; the frozen RGB tower stays in eval mode always."""
        super().train(mode)
        self.rgb_tower.eval()
        return self

    @property
    def _keys_to_ignore_on_save(self) -> list[str]:
        return [name for name in self.state_dict() if name.startswith(RGB_TOWER_PREFIX)]

    def tie_weights(self) -> None:
        """Nothing is tied. The Trainer calls this after loading a checkpoint whose only missing keys are the
        `_keys_to_ignore_on_save` (the frozen RGB tower, which stays as loaded from the base model)."""

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None, every_n_layers=1, offload=False):
        """Checkpoint the depth encoder's blocks (the RGB tower runs without gradient, so it stores nothing)."""
        self.depth_encoder.activation_checkpointing_enable(
            activation_checkpointing_kwargs=activation_checkpointing_kwargs,
            every_n_layers=every_n_layers,
            offload=offload,
        )

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {name: tensor for name, tensor in self.state_dict().items() if not name.startswith(RGB_TOWER_PREFIX)}

    # -- features ----------------------------------------------------------------------------------------------------
    def tokens_per_image(self, image_grid_thw: torch.Tensor) -> list[int]:
        return (image_grid_thw.prod(-1) // self.depth_encoder.spatial_merge_size**2).tolist()

    def rgb_tokens(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
        """Merged RGB tokens of all images, concatenated (LLM width), exactly what the VLM's images become."""
        with torch.no_grad():
            rgb_dtype = next(self.rgb_tower.parameters()).dtype
            return self.rgb_tower(pixel_values.to(rgb_dtype), grid_thw=image_grid_thw).pooler_output

    def encoder_input(
        self, depth_values: torch.Tensor, image_grid_thw: torch.Tensor, depth_intrinsics: torch.Tensor | None = None
    ) -> torch.Tensor:
        """What the depth encoder sees: `(num_patches, channels * patch_size**2)`, the VLM's own encoding."""
        return encode_depth_input(depth_values, self.depth_model_config, image_grid_thw, depth_intrinsics)

    def depth_tokens(
        self, depth_values: torch.Tensor, image_grid_thw: torch.Tensor, depth_intrinsics: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Merged depth tokens of all images, concatenated: token `i` covers the same patch as RGB token `i`."""
        return self.encode(self.encoder_input(depth_values, image_grid_thw, depth_intrinsics), image_grid_thw)

    def encode(self, encoder_input: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
        """The depth encoder's merged tokens of an `encoder_input` (for a caller that also needs the input itself)."""
        encoder_input = encoder_input.to(next(self.depth_encoder.parameters()).dtype)
        return self.depth_encoder(encoder_input, grid_thw=image_grid_thw).pooler_output

    def reconstruction_targets(self, encoder_input: torch.Tensor) -> torch.Tensor:
        """Each merged token's encoder input, average-pooled: `(num_tokens, channels * RECONSTRUCTION_GRID**2)`.

        A token's rows are its `merge_size**2` patches in the processor's order (row-major inside the merge window),
        each row `channels` planes of `patch_size**2` pixels: they are laid back into the token's square first.
        """
        merge, patch = self.depth_encoder.spatial_merge_size, self.depth_model_config.vision_config.patch_size
        channels = self.depth_model_config.input.channels
        side = merge * patch
        if side % RECONSTRUCTION_GRID:
            raise ValueError(f"A {side} px token does not split into {RECONSTRUCTION_GRID} cells per side.")
        squares = (
            encoder_input.float()
            .reshape(-1, merge, merge, channels, patch, patch)
            .permute(0, 3, 1, 4, 2, 5)  # (tokens, channels, merge row, pixel row, merge column, pixel column)
            .reshape(-1, channels, side, side)
        )
        return F.avg_pool2d(squares, side // RECONSTRUCTION_GRID).flatten(1)

    def reconstruction_loss(self, depth_tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean squared error of the linear reconstruction over the targets' variance in the batch (the fraction of
        variance left unexplained: 1 for predicting the batch mean), so its weight does not depend on the encoding's
        units. In fp32, like the contrastive loss."""
        with torch.autocast(device_type=depth_tokens.device.type, enabled=False):
            predicted = self.reconstruction_head(depth_tokens.float())
            return F.mse_loss(predicted, targets) / targets.var(dim=0, unbiased=False).mean().clamp_min(1e-6)

    def project(self, depth_tokens: torch.Tensor, rgb_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both heads, then L2 normalisation (in fp32: normalising bf16 vectors loses most of their precision)."""
        depth = F.normalize(self.depth_head(depth_tokens).float(), dim=-1)
        rgb = F.normalize(self.rgb_head(rgb_tokens.to(self.rgb_head.weight.dtype)).float(), dim=-1)
        return depth, rgb

    def sample_dense_tokens(self, tokens_per_image: list[int]) -> torch.Tensor:
        """Indices into the concatenated tokens: all of an image's tokens, or `dense_tokens_per_image` of them."""
        rank, _ = distributed_rank_and_world_size()
        rng = np.random.default_rng([self.sampling_seed, int(self.dense_sampling_step), rank])
        chosen, offset = [], 0
        for count in tokens_per_image:
            if count <= self.dense_tokens_per_image:
                chosen.append(np.arange(count) + offset)
            else:
                chosen.append(np.sort(rng.choice(count, self.dense_tokens_per_image, replace=False)) + offset)
            offset += count
        return torch.from_numpy(np.concatenate(chosen))

    def embed_images(
        self,
        pixel_values: torch.Tensor,
        image_grid_thw: torch.Tensor,
        depth_values: torch.Tensor,
        depth_intrinsics: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One L2-normalised (depth, RGB) embedding per image, for retrieval.

        Global alignment: the heads applied to mean-pooled tokens (what it trains). Dense alignment: the per-token
        projections, normalised, mean-pooled over the image and normalised again.
        """
        counts = self.tokens_per_image(image_grid_thw)
        depth_tokens = self.depth_tokens(depth_values, image_grid_thw, depth_intrinsics)
        rgb_tokens = self.rgb_tokens(pixel_values, image_grid_thw)
        if self.alignment == "global":
            return self.project(mean_per_image(depth_tokens, counts), mean_per_image(rgb_tokens, counts))
        depth, rgb = self.project(depth_tokens, rgb_tokens)
        return (
            F.normalize(mean_per_image(depth, counts), dim=-1),
            F.normalize(mean_per_image(rgb, counts), dim=-1),
        )

    def embed_tokens(
        self,
        pixel_values: torch.Tensor,
        image_grid_thw: torch.Tensor,
        depth_values: torch.Tensor,
        depth_intrinsics: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense alignment: the L2-normalised projection of every token, (num_images, tokens per image, D) per side
        (all images must have the same grid, as the collator's fixed size makes them)."""
        counts = self.tokens_per_image(image_grid_thw)
        if len(set(counts)) != 1:
            raise ValueError(
                f"Token-level embeddings need images of one size; got token counts {sorted(set(counts))}."
            )
        depth, rgb = self.project(
            self.depth_tokens(depth_values, image_grid_thw, depth_intrinsics),
            self.rgb_tokens(pixel_values, image_grid_thw),
        )
        return depth.reshape(len(counts), counts[0], -1), rgb.reshape(len(counts), counts[0], -1)

    def forward(
        self,
        pixel_values: torch.Tensor,
        image_grid_thw: torch.Tensor,
        depth_values: torch.Tensor,
        depth_intrinsics: torch.Tensor | None = None,
    ) -> DepthAlignmentOutput:
        counts = self.tokens_per_image(image_grid_thw)
        encoder_input = self.encoder_input(depth_values, image_grid_thw, depth_intrinsics)
        depth_tokens = self.encode(encoder_input, image_grid_thw)
        rgb_tokens = self.rgb_tokens(pixel_values, image_grid_thw)
        if self.alignment == "global":
            depth, rgb = self.project(mean_per_image(depth_tokens, counts), mean_per_image(rgb_tokens, counts))
        else:
            indices = self.sample_dense_tokens(counts).to(depth_tokens.device)
            if self.training:
                self.dense_sampling_step += 1
            depth, rgb = self.project(depth_tokens[indices], rgb_tokens[indices])
        contrastive = self.loss_fn(depth, rgb)
        loss, reconstruction = contrastive, None
        if self.reconstruction_weight > 0:
            # Every token is reconstructed (not only the sampled ones): the term is cheap next to the encoder.
            reconstruction = self.reconstruction_loss(depth_tokens, self.reconstruction_targets(encoder_input))
            loss = contrastive + self.reconstruction_weight * reconstruction
        return DepthAlignmentOutput(
            loss=loss,
            contrastive_loss=contrastive,
            reconstruction_loss=reconstruction,
            depth_embeds=depth,
            rgb_embeds=rgb,
            logit_scale=self.loss_fn.logit_scale.detach().exp(),
        )
