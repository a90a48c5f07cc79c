"""Stage 1: align the depth encoder to the frozen RGB tower with a CLIP-style contrastive loss.

    python -m training.align --base Qwen/Qwen2.5-VL-3B-Instruct --data data/world_train --eval_data data/world_val \\
        --out runs/align --alignment dense --bf16 --per_device_train_batch_size 64 --learning_rate 1e-4 \\
        --max_steps 5000 --warmup_steps 250 --lr_scheduler_type cosine --weight_decay 0.05 \\
        --eval_strategy steps --eval_steps 500 --save_steps 500 --logging_steps 20 --dataloader_num_workers 8

    accelerate launch --config_file training/accelerate_configs/ddp.yaml -m training.align ...   # same flags

Each depth map and its RGB image go through their towers: the RGB tower (`model.model.visual`) is frozen and always in
eval mode, the depth encoder (`model.model.depth_encoder`) trains, and their merged tokens are pulled together by a
symmetric InfoNCE loss (open_clip's `ClipLoss`: learnable temperature starting at 0.07, logit scale capped at 100,
negatives gathered from every rank with gradient, so the negatives are the global batch):

* `--alignment global`: each image's tokens are mean-pooled, projected (`Linear`, L2-normalised, `--projection_dim`)
  by one head per side, and matched across images.
* `--alignment dense` (default): depth token *i* is matched with RGB token *i* of the same image (they cover the same
  patch), against every other sampled token of the global batch; at most `--dense_tokens_per_image` tokens per image
  are sampled (seeded, resumable) to bound the cost. This is the alignment the VLM uses: `"add"` fusion adds depth
  token *i* onto RGB token *i*.

Only the depth encoder, the two projection heads and the logit scale train; the RGB tower and the language model are
bit-identical afterwards (the language model is not even kept in memory while aligning).

`--base` is a plain Qwen2.5-VL (folder or hub id; the depth encoder is then created as `build_depth_model` does,
initialised from the RGB tower) or a Qwen2.5-VL-Depth folder (`training.load.load_depth_model`). `--data` /
`--eval_data` are parquet files or folders, `save_to_disk` folders or hub datasets (`training.load.load_rows`) with an
`image` (or `images`: a list, the first is used) column and a `depth` column (16-bit PNG bytes, millimetres): what
`training.make_world` and `training.make_rgbd_pairs` write, read as `RGBDPairs`. Rows sharing a `scene_id` are one
pair (the world writes one row per question). Without `--eval_data`, `--eval_pairs` pairs are held out of `--data`.
Every image is centre-cropped to a square and resized to `--image_size` (the rendered world is square already), so a
batch is equal-length images that the depth encoder runs in one SDPA call per block.

Outputs in `--out`: the full depth-model folder with the aligned depth encoder (model, processor, remote code), which
Stage 2 loads with `Qwen2_5_VLDepthForConditionalGeneration.from_pretrained(out)` or as its `--base`;
`alignment_heads.safetensors` + `alignment_heads.json` (the projection heads and logit scale, not part of the VLM);
`alignment_metrics.json` (depth->RGB retrieval R@1/R@5 on the held-out pairs before and after, next to chance, and
the training speed); Trainer checkpoints in `--output_dir` (default `OUT/checkpoints`).

Every `transformers.TrainingArguments` flag works (`--max_steps`, `--save_steps`, `--resume_from_checkpoint PATH`
(or `latest`: the newest complete checkpoint, skipping one whose save was killed; `auto`: the same, or a fresh start
when there is none), `--eval_strategy steps`, `--report_to`, ...). Retrieval is the Trainer's evaluation (`eval_loss` is the
InfoNCE loss over all held-out pairs at once, `eval_depth_to_rgb_r1`/`_r5` the recalls of the per-image
embeddings, and for dense alignment `eval_token_matched_r1`/`_r5` those of co-located-token matching, which keeps the
layout that mean pooling averages away), so `--metric_for_best_model depth_to_rgb_r1` works too.

CPU (fp32, no `--bf16`), what the tests and the smoke run use; with the tiny base (`training.tiny`) on 2 cores this
runs at ~7 steps/s (batch 32, 16 tokens per image) and lifts held-out token-matched R@1 from chance to ~0.4:
    python -m training.align --base TINY --data data/world_train --eval_data data/world_val --out runs/align_cpu \
        --per_device_train_batch_size 32 --learning_rate 2e-3 --max_steps 300 --logging_steps 50 --save_steps 150 \
        --dataloader_pin_memory false
  Two CPU processes (gloo DDP): `accelerate launch --config_file training/accelerate_configs/ddp_cpu.yaml -m
  training.align ...`. accelerate starts several CPU processes only through torchrun (its MULTI_CPU type needs
  mpirun), so when this script finds itself in a multi-process launch without a GPU it sets `ACCELERATE_USE_CPU`,
  which makes the Trainer use CPU DDP over gloo.
GPU defaults: `--bf16` (autocast; the depth encoder and heads keep fp32 master weights, the frozen RGB tower stays in
the checkpoint's dtype, the loss runs in fp32), `--tf32 True`, large per-device batches (contrastive learning wants
many negatives; the gather makes them global), `--dataloader_num_workers 8`, and `--activation_checkpointing` for
the full-size encoder if memory is short.
`training/accelerate_configs/` has `ddp.yaml`, `fsdp.yaml` (FSDP2) and `deepspeed_zero2.yaml`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import (
    HfArgumentParser,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.modeling_outputs import ModelOutput
from transformers.utils import logging

from configuration_depth import Qwen2_5_VLDepthConfig
from modeling_qwen2_5_vl_depth import Qwen2_5_VLDepthForConditionalGeneration, encode_metric_depth
from processing_depth import Qwen2_5_VLDepthProcessor
from training.depth_png import decode_depth_cell
from training.load import keep_in_float32, load_depth_model, load_rows, resume_checkpoint
from training.make_rgbd_pairs import RGBDPair, RGBDPairs, decode_first_image


logger = logging.get_logger(__name__)

ALIGNMENT_LEVELS = ("global", "dense")
# open_clip's values: CLIP starts at temperature 0.07 and caps the logit scale at 100 so training cannot blow it up.
INIT_TEMPERATURE = 0.07
MAX_LOGIT_SCALE = 100.0
# Prefix of the frozen RGB tower's entries in DepthAlignmentModel's state dict: never checkpointed (never changes).
RGB_TOWER_PREFIX = "rgb_tower."
HEADS_FILE = "alignment_heads.safetensors"
HEADS_CONFIG_FILE = "alignment_heads.json"
METRICS_FILE = "alignment_metrics.json"


# --------------------------------------------------------------------------------------------------------------
# Contrastive loss
# --------------------------------------------------------------------------------------------------------------
def distributed_rank_and_world_size() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(features: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All ranks' features concatenated in rank order, differentiable, and where this rank's rows start.

    Like open_clip's `gather_with_grad=True`: `torch.distributed.nn.functional.all_gather` sends the gradient of every
    rank's loss back to the rank that produced the features. Ranks may hold different numbers of rows (a short last
    batch): rows are padded to the largest count for the collective and the padding is cut off again.
    """
    rank, world_size = distributed_rank_and_world_size()
    if world_size == 1:
        return features, 0
    local_count = torch.tensor([features.shape[0]], device=features.device)
    counts = [torch.zeros_like(local_count) for _ in range(world_size)]
    dist.all_gather(counts, local_count)
    counts = [int(count) for count in counts]
    padded = F.pad(features, (0, 0, 0, max(counts) - features.shape[0]))
    with warnings.catch_warnings():
        # torch 2.13 deprecates it for a function of the private `_functional_collectives`; it still works (and is
        # open_clip's), so the warning is kept out of every training step's output.
        warnings.filterwarnings("ignore", message=".*all_gather is deprecated", category=FutureWarning)
        gathered = torch.distributed.nn.functional.all_gather(padded)
    return torch.cat([rows[:count] for rows, count in zip(gathered, counts)]), sum(counts[:rank])


def symmetric_infonce(logits_per_depth: torch.Tensor, logits_per_rgb: torch.Tensor, labels: torch.Tensor):
    """Cross-entropy in both directions (depth->RGB and RGB->depth), averaged."""
    return (F.cross_entropy(logits_per_depth, labels) + F.cross_entropy(logits_per_rgb, labels)) / 2


class ClipLoss(nn.Module):
    """open_clip's `ClipLoss` for (depth, RGB) pairs: symmetric InfoNCE with a learnable temperature.

    `logit_scale` is the log of the inverse temperature, initialised to log(1 / 0.07), and kept in [0, log(100)]: it
    is clamped in place before each use (open_clip clamps it after each optimizer step), so the scale never exceeds
    100 and the parameter never drifts where its gradient would vanish. Under DDP each rank scores its own rows
    against the features of every rank (gathered with gradient), so the negatives are the global batch:
    `last_logits_shape` is (local rows, global rows). With no process group it is plain single-process InfoNCE.
    """

    def __init__(self, init_temperature: float = INIT_TEMPERATURE, max_logit_scale: float = MAX_LOGIT_SCALE):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / init_temperature)))
        self.max_log_scale = math.log(max_logit_scale)
        self.last_logits_shape: tuple[int, ...] | None = None

    def forward(self, depth_features: torch.Tensor, rgb_features: torch.Tensor) -> torch.Tensor:
        """`depth_features[i]` and `rgb_features[i]` (L2-normalised) are a positive pair; every other row a negative."""
        with torch.no_grad():
            self.logit_scale.clamp_(0, self.max_log_scale)
        # Softmax over thousands of logits is done in fp32 even under bf16 autocast.
        with torch.autocast(device_type=depth_features.device.type, enabled=False):
            depth_features, rgb_features = depth_features.float(), rgb_features.float()
            # One collective for both sides: the rows of a pair travel together.
            gathered, offset = gather_with_grad(torch.cat([depth_features, rgb_features], dim=1))
            all_depth, all_rgb = gathered.split([depth_features.shape[1], rgb_features.shape[1]], dim=1)
            logit_scale = self.logit_scale.float().exp()
            logits_per_depth = logit_scale * depth_features @ all_rgb.T
            logits_per_rgb = logit_scale * rgb_features @ all_depth.T
            self.last_logits_shape = tuple(logits_per_depth.shape)
            labels = torch.arange(depth_features.shape[0], device=depth_features.device) + offset
            return symmetric_infonce(logits_per_depth, logits_per_rgb, labels)


# --------------------------------------------------------------------------------------------------------------
# The alignment model
# --------------------------------------------------------------------------------------------------------------
@dataclass
class DepthAlignmentOutput(ModelOutput):
    """`depth_embeds[i]` / `rgb_embeds[i]`: projected, L2-normalised pair `i` (an image, or a sampled token)."""

    loss: torch.Tensor | None = None
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
    _no_split_modules = ["Qwen2_5_VLVisionBlock", "Qwen2_5_VLDepthBlock"]

    def __init__(
        self,
        rgb_tower: nn.Module,
        depth_encoder: nn.Module,
        depth_model_config: Qwen2_5_VLDepthConfig,
        alignment: str = "dense",
        projection_dim: int = 256,
        dense_tokens_per_image: int = 64,
        sampling_seed: int = 0,
    ):
        super().__init__()
        if alignment not in ALIGNMENT_LEVELS:
            raise ValueError(f"Unknown alignment {alignment!r}: expected one of {ALIGNMENT_LEVELS}.")
        if dense_tokens_per_image < 1:
            raise ValueError(f"dense_tokens_per_image must be at least 1; got {dense_tokens_per_image}.")
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

    def depth_tokens(self, depth_values: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
        """Merged depth tokens of all images, concatenated: token `i` covers the same patch as RGB token `i`."""
        encoder_input = encode_metric_depth(depth_values, self.depth_model_config)
        encoder_input = encoder_input.to(next(self.depth_encoder.parameters()).dtype)
        return self.depth_encoder(encoder_input, grid_thw=image_grid_thw).pooler_output

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
        self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor, depth_values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One L2-normalised (depth, RGB) embedding per image, for retrieval.

        Global alignment: the heads applied to mean-pooled tokens (what it trains). Dense alignment: the per-token
        projections, normalised, mean-pooled over the image and normalised again.
        """
        counts = self.tokens_per_image(image_grid_thw)
        depth_tokens = self.depth_tokens(depth_values, image_grid_thw)
        rgb_tokens = self.rgb_tokens(pixel_values, image_grid_thw)
        if self.alignment == "global":
            return self.project(mean_per_image(depth_tokens, counts), mean_per_image(rgb_tokens, counts))
        depth, rgb = self.project(depth_tokens, rgb_tokens)
        return (
            F.normalize(mean_per_image(depth, counts), dim=-1),
            F.normalize(mean_per_image(rgb, counts), dim=-1),
        )

    def embed_tokens(
        self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor, depth_values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense alignment: the L2-normalised projection of every token, (num_images, tokens per image, D) per side
        (all images must have the same grid, as the collator's fixed size makes them)."""
        counts = self.tokens_per_image(image_grid_thw)
        if len(set(counts)) != 1:
            raise ValueError(
                f"Token-level embeddings need images of one size; got token counts {sorted(set(counts))}."
            )
        depth, rgb = self.project(
            self.depth_tokens(depth_values, image_grid_thw), self.rgb_tokens(pixel_values, image_grid_thw)
        )
        return depth.reshape(len(counts), counts[0], -1), rgb.reshape(len(counts), counts[0], -1)

    def forward(
        self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor, depth_values: torch.Tensor
    ) -> DepthAlignmentOutput:
        counts = self.tokens_per_image(image_grid_thw)
        depth_tokens = self.depth_tokens(depth_values, image_grid_thw)
        rgb_tokens = self.rgb_tokens(pixel_values, image_grid_thw)
        if self.alignment == "global":
            depth, rgb = self.project(mean_per_image(depth_tokens, counts), mean_per_image(rgb_tokens, counts))
        else:
            indices = self.sample_dense_tokens(counts).to(depth_tokens.device)
            if self.training:
                self.dense_sampling_step += 1
            depth, rgb = self.project(depth_tokens[indices], rgb_tokens[indices])
        loss = self.loss_fn(depth, rgb)
        return DepthAlignmentOutput(
            loss=loss, depth_embeds=depth, rgb_embeds=rgb, logit_scale=self.loss_fn.logit_scale.detach().exp()
        )


# --------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------
def select_pair_rows(table, metric_depth_only: bool = False) -> list[int]:
    """Row indices that are distinct RGB-D pairs: one per `scene_id` when the column exists.

    The world writes one row per question, so a scene's image repeats; point-depth questions draw a marker on their
    image, so a row without a marker is preferred as the scene's pair.
    """
    if "depth" not in table.column_names:
        raise ValueError(f"The pairs need a 'depth' column; the columns are {table.column_names}.")
    indices = list(range(len(table)))
    if metric_depth_only and "depth_is_metric" in table.column_names:
        is_metric = list(table["depth_is_metric"])
        indices = [i for i in indices if is_metric[i]]
    if "scene_id" not in table.column_names:
        return indices
    scene_ids = list(table["scene_id"])
    markers = list(table["marker"]) if "marker" in table.column_names else [None] * len(table)
    chosen: dict[str, int] = {}
    for index in indices:
        scene = scene_ids[index]
        if scene not in chosen or (markers[chosen[scene]] and not markers[index]):
            chosen[scene] = index
    return sorted(chosen.values())


def center_square(image: Image.Image, depth: np.ndarray) -> tuple[Image.Image, np.ndarray]:
    """The centred square of both (depth may have another resolution of the same aspect ratio)."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    depth_height, depth_width = depth.shape
    depth_side = min(depth_height, depth_width)
    depth_top, depth_left = (depth_height - depth_side) // 2, (depth_width - depth_side) // 2
    return image, depth[depth_top : depth_top + depth_side, depth_left : depth_left + depth_side]


class RGBDPairCollator:
    """Pairs -> `pixel_values`, `image_grid_thw`, `depth_values` through the depth processor (no text).

    Every image becomes a `image_size` square (centre crop, bicubic resize; the image processor's pixel bounds still
    apply), so all images of a batch have the same grid and the depth encoder runs them as one SDPA batch. Depth keeps
    its resolution: the processor resizes it to the image by nearest neighbour (no invented depths at edges) and lays
    it out patch by patch like `pixel_values`.
    """

    def __init__(self, processor: Qwen2_5_VLDepthProcessor, image_size: int | None = 224):
        if processor.depth_fusion == "none":
            raise ValueError("The processor has depth_fusion='none': it drops depth.")
        self.processor = processor
        self.image_size = image_size

    def __call__(self, pairs: Sequence[RGBDPair | dict | tuple]) -> dict[str, torch.Tensor]:
        images, depths = [], []
        for pair in pairs:
            if isinstance(pair, dict):
                image, depth = pair["image"], pair["depth"]
            elif isinstance(pair, RGBDPair):
                image, depth = pair.image, pair.depth
            else:
                image, depth = pair
            image, depth = decode_first_image(image), decode_depth_cell(depth)
            if self.image_size is not None:
                image, depth = center_square(image, depth)
                image = image.resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
            images.append(image)
            depths.append(depth)
        batch = self.processor(images=images, depth=depths, return_tensors="pt")
        return {key: batch[key] for key in ("pixel_values", "image_grid_thw", "depth_values")}


# --------------------------------------------------------------------------------------------------------------
# Retrieval evaluation
# --------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def embed_pairs(
    model: DepthAlignmentModel,
    dataset,
    collator,
    batch_size: int = 32,
    device: torch.device | str | None = None,
    tokens: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Depth and RGB embeddings of every pair of `dataset`, in order: (N, D) each (`embed_images`), or with
    `tokens=True` (N, tokens per image, D) each (`embed_tokens`)."""
    device = device or next(model.parameters()).device
    embed = model.embed_tokens if tokens else model.embed_images
    was_training = model.training
    model.eval()
    depth_embeds, rgb_embeds = [], []
    try:
        for start in range(0, len(dataset), batch_size):
            batch = collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            batch = {key: value.to(device) for key, value in batch.items()}
            depth, rgb = embed(**batch)
            depth_embeds.append(depth.float().cpu())
            rgb_embeds.append(rgb.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(depth_embeds), torch.cat(rgb_embeds)


def recall_at_k(similarity: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Row `i`'s match is column `i`. Its rank counts the other columns scoring at least as high: ties count
    against the match, so constant embeddings score chance or worse, never a perfect recall."""
    matched = similarity.diagonal()[:, None]
    rank = (similarity >= matched).sum(dim=1) - 1
    return {k: float((rank < k).float().mean()) for k in ks}


def retrieval_metrics(
    model: DepthAlignmentModel,
    dataset,
    collator,
    batch_size: int = 32,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Depth->RGB retrieval among the `N` pairs of `dataset`, next to chance (k / N).

    `depth_to_rgb_r1`/`_r5`: cosine similarity of the per-image embeddings (`embed_images`: projected global features,
    or mean-pooled projected dense features). `loss`: InfoNCE over all N pairs at once, at the model's temperature.
    Dense alignment adds `token_matched_r1`/`_r5`: images scored by the mean similarity of their co-located tokens
    (depth token i of one image with RGB token i of the other), which is what dense alignment trains and which keeps
    the layout that mean pooling averages away.
    """
    if model.alignment == "dense":
        depth_tokens, rgb_tokens = embed_pairs(model, dataset, collator, batch_size, device, tokens=True)
        # Exactly `embed_images` for dense alignment, without running the towers twice.
        depth, rgb = (F.normalize(tokens.mean(dim=1), dim=-1) for tokens in (depth_tokens, rgb_tokens))
    else:
        depth, rgb = embed_pairs(model, dataset, collator, batch_size, device)
    similarity = depth @ rgb.T
    recalls = recall_at_k(similarity, (1, 5))
    num_pairs = similarity.shape[0]
    logit_scale = float(model.loss_fn.logit_scale.detach().float().clamp(0, model.loss_fn.max_log_scale).exp())
    labels = torch.arange(num_pairs)
    loss = symmetric_infonce(logit_scale * similarity, logit_scale * similarity.T, labels)
    metrics = {
        "loss": float(loss),
        "depth_to_rgb_r1": recalls[1],
        "depth_to_rgb_r5": recalls[5],
        "chance_r1": 1 / num_pairs,
        "chance_r5": min(5, num_pairs) / num_pairs,
        "num_pairs": num_pairs,
    }
    if model.alignment == "dense":
        token_similarity = torch.einsum("and,bnd->ab", depth_tokens, rgb_tokens) / depth_tokens.shape[1]
        token_recalls = recall_at_k(token_similarity, (1, 5))
        metrics.update({"token_matched_r1": token_recalls[1], "token_matched_r5": token_recalls[5]})
    return metrics


# --------------------------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------------------------
class SetDatasetEpoch(TrainerCallback):
    """Tells the training dataset the epoch, for its per-epoch augmentation (accelerate forwards `set_epoch` to the
    sampler only). `state.epoch` is whole at an epoch's start, and the checkpoint's epoch when resuming mid-epoch."""

    def __init__(self, dataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(int(math.floor(state.epoch + 1e-9)))


class DepthAlignmentTrainer(Trainer):
    """`Trainer` for `DepthAlignmentModel`: contrastive loss, retrieval evaluation, checkpoints without the RGB tower.

    `record_local_losses=True` keeps this rank's loss of every micro-batch in `local_losses` (the logged loss is the
    mean over ranks); it costs a device sync per step, so it is for tests and diagnostics.
    """

    def __init__(self, *args, record_local_losses: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.record_local_losses = record_local_losses
        self.local_losses: list[float] = []
        if self.train_dataset is not None:
            self.add_callback(SetDatasetEpoch(self.train_dataset))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # InfoNCE is a mean over the batch's pairs: `num_items_in_batch` (a token count for LM losses) does not apply,
        # and the Trainer divides it by the gradient accumulation steps itself.
        outputs = model(**inputs)
        if self.record_local_losses and model.training:
            self.local_losses.append(float(outputs.loss.detach()))
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def get_decay_parameter_names(self, model) -> list[str]:
        # Like open_clip: no weight decay on the temperature nor on any gain or bias (parameters of fewer than 2
        # dimensions; the Trainer's own name patterns miss the vision blocks' RMSNorm gains `norm1`/`norm2`).
        low_dimensional = {name for name, parameter in model.named_parameters() if parameter.ndim < 2}
        return [name for name in super().get_decay_parameter_names(model) if name not in low_dimensional]

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        # The frozen RGB tower is reloaded from the base model, never from a checkpoint: leave it out of every save.
        if state_dict is None:
            state_dict = self.accelerator.unwrap_model(self.model).state_dict()
        state_dict = {
            name: tensor.contiguous() for name, tensor in state_dict.items() if not name.startswith(RGB_TOWER_PREFIX)
        }
        super()._save(output_dir, state_dict=state_dict)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            logit_scale = self.accelerator.unwrap_model(self.model).loss_fn.logit_scale
            logs["logit_scale"] = round(float(logit_scale.detach().float().exp()), 4)
        super().log(logs, start_time)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Depth->RGB retrieval on the held-out pairs (see `retrieval_metrics`), as the Trainer's evaluation.

        Every rank embeds all held-out pairs (a retrieval set is small), so the metrics are the same on every rank,
        and sharded models (FSDP) run the same collectives everywhere.
        """
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            raise ValueError("DepthAlignmentTrainer.evaluate needs an eval_dataset of held-out pairs.")
        with self.accelerator.autocast():
            # On the model's own device: before `train()` a DeepSpeed/FSDP model has not been placed by the Trainer.
            metrics = retrieval_metrics(self.model, dataset, self.data_collator, self.args.per_device_eval_batch_size)
        metrics = {f"{metric_key_prefix}_{name}": value for name, value in metrics.items()}
        self.log(dict(metrics))  # a copy: `log` adds the epoch to the dict it is given
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


# --------------------------------------------------------------------------------------------------------------
# Loading, export and the job
# --------------------------------------------------------------------------------------------------------------
def export_aligned_model(
    trainable_state: dict[str, torch.Tensor],
    out: str | Path,
    base: str | Path,
    heads_config: dict,
    **load_kwargs,
) -> Path:
    """Write the depth model with the aligned depth encoder (a full, loadable folder) and the heads beside it."""
    out = Path(out)
    depth_model, processor = load_depth_model(base, **load_kwargs)
    prefix = "depth_encoder."
    encoder_state = {name[len(prefix) :]: t for name, t in trainable_state.items() if name.startswith(prefix)}
    depth_model.model.depth_encoder.load_state_dict(encoder_state, strict=True)
    depth_model.save_pretrained(out)
    processor.save_pretrained(out)
    heads = {
        name: tensor.contiguous()
        for name, tensor in trainable_state.items()
        if name.startswith(("depth_head.", "rgb_head.", "loss_fn."))
    }
    save_file(heads, str(out / HEADS_FILE), metadata={"format": "pt"})
    logit_scale = float(heads["loss_fn.logit_scale"].float().exp())
    heads_config = {**heads_config, "logit_scale": logit_scale, "temperature": 1 / logit_scale}
    (out / HEADS_CONFIG_FILE).write_text(json.dumps(heads_config, indent=2) + "\n")
    return out


@dataclass
class AlignmentArguments:
    """Stage-1 settings; every `TrainingArguments` flag is accepted too."""

    base: str = field(metadata={"help": "plain Qwen2.5-VL folder/hub id, or a Qwen2.5-VL-Depth folder"})
    data: str = field(metadata={"help": "training pairs: parquet file/folder, save_to_disk folder or hub dataset"})
    out: str = field(metadata={"help": "output folder: aligned depth model, heads, metrics"})
    eval_data: str | None = field(default=None, metadata={"help": "held-out pairs (default: --eval_pairs of --data)"})
    eval_pairs: int = field(default=128, metadata={"help": "held-out pairs for retrieval (a cap with --eval_data)"})
    max_train_pairs: int | None = field(default=None, metadata={"help": "use at most this many training pairs"})
    alignment: str = field(default="dense", metadata={"help": "global or dense", "choices": list(ALIGNMENT_LEVELS)})
    projection_dim: int = field(default=256, metadata={"help": "output width of the projection heads"})
    dense_tokens_per_image: int = field(default=64, metadata={"help": "tokens sampled per image (dense)"})
    image_size: int = field(default=224, metadata={"help": "square side images are cropped and resized to"})
    flip_augment: bool = field(default=True, metadata={"help": "random horizontal flip of image and depth"})
    metric_depth_only: bool = field(default=False, metadata={"help": "skip rows whose depth_is_metric is false"})
    depth_fusion: str | None = field(
        default=None,
        metadata={
            "help": "fusion of the depth model: one built from a plain base gets it (default add); a depth-model "
            "--base keeps its own unless given"
        },
    )
    depth_layers: int | None = field(default=None, metadata={"help": "depth encoder blocks (plain base only)"})
    init_from_rgb: bool = field(default=True, metadata={"help": "start a new depth encoder from the RGB tower"})
    rank_report: bool = field(
        default=False, metadata={"help": "write OUT/rank_reports/rank<N>.json (per-rank losses, logits shape, digest)"}
    )


@dataclass
class AlignmentResult:
    model: DepthAlignmentModel
    trainer: DepthAlignmentTrainer
    metrics: dict
    out: Path


def split_pairs(script_args: AlignmentArguments, seed: int):
    """(train table, train rows, eval table, eval rows): distinct pairs, the held-out ones chosen by `seed`."""
    table = load_rows(script_args.data)
    rows = select_pair_rows(table, script_args.metric_depth_only)
    if script_args.eval_data:
        eval_table = load_rows(script_args.eval_data)
        eval_rows = select_pair_rows(eval_table, script_args.metric_depth_only)
        eval_order = np.random.default_rng(seed).permutation(len(eval_rows))
        eval_rows = sorted(eval_rows[i] for i in eval_order[: script_args.eval_pairs])
        train_rows = rows
    else:
        if len(rows) <= script_args.eval_pairs:
            raise ValueError(
                f"{script_args.data} has {len(rows)} distinct pairs, too few to hold out --eval_pairs "
                f"{script_args.eval_pairs}: pass --eval_data or a smaller --eval_pairs."
            )
        eval_table = table
        order = np.random.default_rng(seed).permutation(len(rows))
        eval_rows = sorted(rows[i] for i in order[: script_args.eval_pairs])
        held_out = set(eval_rows)
        train_rows = [row for row in rows if row not in held_out]
    if script_args.max_train_pairs is not None:
        train_rows = train_rows[: script_args.max_train_pairs]
    if not train_rows:
        raise ValueError(f"No training pairs in {script_args.data}.")
    return table, train_rows, eval_table, eval_rows


def trainable_digest(model: DepthAlignmentModel) -> str:
    """SHA-256 of every trainable parameter's bytes, by name: equal digests mean bit-identical weights."""
    digest = hashlib.sha256()
    for name, parameter in sorted(model.named_parameters()):
        if parameter.requires_grad:
            # FSDP2 holds shards (DTensors): compare whole tensors (a collective, so every rank must call this).
            tensor = parameter.full_tensor() if hasattr(parameter, "full_tensor") else parameter
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def train_alignment(
    script_args: AlignmentArguments, training_args: TrainingArguments, callbacks: list | None = None
) -> AlignmentResult:
    """The whole job: load, hold out pairs, measure retrieval, train, measure again, export. Returns the trained
    alignment model and its trainer (tests look inside them)."""
    out = Path(script_args.out)
    set_seed(training_args.seed)
    load_kwargs = {
        "depth_fusion": script_args.depth_fusion,
        "depth_layers": script_args.depth_layers,
        "init_from_rgb": script_args.init_from_rgb,
        "seed": training_args.seed,
    }
    depth_model, processor = load_depth_model(script_args.base, **load_kwargs)
    model = DepthAlignmentModel.from_depth_model(
        depth_model,
        alignment=script_args.alignment,
        projection_dim=script_args.projection_dim,
        dense_tokens_per_image=script_args.dense_tokens_per_image,
        sampling_seed=training_args.seed,
    )
    depth_model_config = depth_model.config
    del depth_model  # the language model is not needed to align: let it be freed

    with training_args.main_process_first(desc="loading RGB-D pairs"):
        table, train_rows, eval_table, eval_rows = split_pairs(script_args, training_args.seed)
    # Flips only: a rotation would fill the corners with invalid depth and black pixels that have to be aligned too.
    train_dataset = RGBDPairs(
        table, train_rows, augment=script_args.flip_augment, seed=training_args.seed, max_rotation_degrees=0
    )
    if script_args.flip_augment and training_args.dataloader_persistent_workers:
        logger.warning("Persistent DataLoader workers keep their copy of the epoch: every epoch gets epoch 0's flips.")
    eval_dataset = RGBDPairs(eval_table, eval_rows) if eval_rows else None
    # The Trainer places plain and DDP models itself, DeepSpeed and FSDP ones only in `train()`: place it now so the
    # retrieval measured before training runs on the accelerator in every case.
    model.to(training_args.device)
    trainer = DepthAlignmentTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=RGBDPairCollator(processor, script_args.image_size),
        processing_class=processor,
        callbacks=callbacks,
        record_local_losses=script_args.rank_report,
    )
    trainer.accelerator.print(
        f"Aligning the depth encoder ({script_args.alignment}) on {len(train_dataset)} pairs, "
        f"{len(eval_rows)} held out; world size {training_args.world_size}."
    )

    metrics: dict[str, Any] = {"alignment": script_args.alignment, "base": str(script_args.base)}
    if eval_dataset is not None:
        metrics["before"] = strip_prefix(trainer.evaluate(metric_key_prefix="before"), "before_")
    train_output = trainer.train(resume_from_checkpoint=resume_checkpoint(training_args))
    metrics["train"] = train_output.metrics
    if eval_dataset is not None:
        metrics["after"] = strip_prefix(trainer.evaluate(metric_key_prefix="after"), "after_")

    # `save_model` gathers sharded (FSDP) or wrapped (DeepSpeed) weights into one file on the main process.
    trainer.save_model(training_args.output_dir)
    if script_args.rank_report:
        write_rank_report(out, trainer, model, training_args)
    if trainer.is_world_process_zero():
        trainable_state = load_file(str(Path(training_args.output_dir) / "model.safetensors"))
        heads_config = {
            "alignment": script_args.alignment,
            "projection_dim": script_args.projection_dim,
            "input_dim": model.depth_head.in_features,
            "dense_tokens_per_image": script_args.dense_tokens_per_image,
            "image_size": script_args.image_size,
            "base": str(script_args.base),
            "depth_fusion": depth_model_config.depth_fusion,
        }
        export_aligned_model(trainable_state, out, script_args.base, heads_config, **load_kwargs)
        (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
        print(format_metrics(metrics))
    trainer.accelerator.wait_for_everyone()
    return AlignmentResult(model=model, trainer=trainer, metrics=metrics, out=out)


def strip_prefix(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    return {name.removeprefix(prefix): value for name, value in metrics.items()}


def write_rank_report(out: Path, trainer: DepthAlignmentTrainer, model: DepthAlignmentModel, args) -> None:
    report = {
        "process_index": args.process_index,
        "world_size": args.world_size,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "logits_shape": list(model.loss_fn.last_logits_shape or ()),
        "local_losses": trainer.local_losses,
        "trainable_digest": trainable_digest(model),
        "logged_losses": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry],
    }
    folder = out / "rank_reports"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"rank{args.process_index}.json").write_text(json.dumps(report, indent=2) + "\n")


def format_metrics(metrics: dict) -> str:
    """The before/after retrieval table next to chance, and the training speed."""
    lines = []
    if "before" in metrics:
        before, after = metrics["before"], metrics.get("after", {})
        rows = [("chance", before["chance_r1"], before["chance_r5"])]
        for name, values in (("before", before), ("after", after)):
            if values:
                rows.append((name, values["depth_to_rgb_r1"], values["depth_to_rgb_r5"]))
        for name, values in (("before", before), ("after", after)):
            if "token_matched_r1" in values:
                rows.append((f"{name} (token-matched)", values["token_matched_r1"], values["token_matched_r5"]))
        lines += [f"Depth->RGB retrieval on {before['num_pairs']} held-out pairs:", f"  {'':24}{'R@1':>8}{'R@5':>8}"]
        lines += [f"  {name:24}{r1:8.3f}{r5:8.3f}" for name, r1, r5 in rows]
    train = metrics.get("train", {})
    if "train_steps_per_second" in train:
        lines.append(f"Training: {train['train_steps_per_second']:.2f} steps/s, {train['train_runtime']:.1f} s.")
    return "\n".join(lines)


def use_cpu_for_cpu_only_multiprocess_launch() -> None:
    """accelerate launches several CPU processes only through torchrun (its MULTI_CPU type needs mpirun), and torchrun
    does not pass `use_cpu` on. Without a GPU, such processes would each train alone: make them CPU DDP (gloo)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")


def parse_args(argv: list[str] | None = None) -> tuple[AlignmentArguments, TrainingArguments]:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser((AlignmentArguments, TrainingArguments), description=__doc__.split("\n\n")[0])
    script_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    if not any(arg == "--output_dir" or arg.startswith("--output_dir=") for arg in argv):
        training_args.output_dir = str(Path(script_args.out) / "checkpoints")
    if training_args.ddp_find_unused_parameters is None:
        # Every trainable parameter gets a gradient each step; searching for unused ones only costs time.
        training_args.ddp_find_unused_parameters = False
    return script_args, training_args


def main(argv: list[str] | None = None) -> dict:
    use_cpu_for_cpu_only_multiprocess_launch()
    script_args, training_args = parse_args(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) != training_args.world_size:
        raise RuntimeError(
            f"Launched as {os.environ['WORLD_SIZE']} processes but the Trainer sees world size "
            f"{training_args.world_size}: each process would train alone."
        )
    return train_alignment(script_args, training_args).metrics


if __name__ == "__main__":
    main()
