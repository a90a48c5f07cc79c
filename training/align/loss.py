"""The contrastive loss: open_clip's symmetric InfoNCE with a learnable temperature, negatives from every rank."""

from __future__ import annotations

import math
import warnings

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F


# open_clip's values: CLIP starts at temperature 0.07 and caps the logit scale at 100 so training cannot blow it up.
INIT_TEMPERATURE = 0.07
MAX_LOGIT_SCALE = 100.0


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
