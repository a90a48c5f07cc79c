"""Retrieval evaluation: how often a depth map finds its own RGB image among the held-out pairs (R@1, R@5)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from training.align.loss import symmetric_infonce
from training.align.model import DepthAlignmentModel


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
