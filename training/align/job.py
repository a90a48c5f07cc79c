"""The Stage 1 job: load the depth model, hold out pairs, measure retrieval, train, measure again, and export."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import TrainingArguments, set_seed
from transformers.utils import logging

from training.align.data import RGBDPairCollator, select_pair_rows
from training.align.model import ALIGNMENT_LEVELS, DepthAlignmentModel
from training.align.probe import metric_depth_probe
from training.align.trainer import DepthAlignmentTrainer
from training.checkpoints import resume_checkpoint
from training.data_files import load_rows
from training.make_rgbd_pairs import RGBDPairs
from training.model_loading import load_depth_model


logger = logging.get_logger(__name__)

HEADS_FILE = "alignment_heads.safetensors"
HEADS_CONFIG_FILE = "alignment_heads.json"
METRICS_FILE = "alignment_metrics.json"


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
        if name.startswith(("depth_head.", "rgb_head.", "loss_fn.", "reconstruction_head."))
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
    reconstruction_weight: float = field(
        default=0.0,
        metadata={
            "help": "weight of a term that reconstructs each depth token's own encoder input, pooled to 7 x 7 cells, "
            "from the token (linear head; 0 = contrastive only): keeps what the RGB tower has no use for"
        },
    )
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
    depth_input: str | None = field(
        default=None,
        metadata={
            "help": "what the depth encoder of a depth model built from a plain base sees: depth (default) or points "
            "(camera-frame x, y, z from depth and each pair's intrinsics; configuration_depth.DEPTH_INPUTS)",
            "choices": ["depth", "points"],
        },
    )
    init_from_rgb: bool = field(default=True, metadata={"help": "start a new depth encoder from the RGB tower"})
    depth_probe: bool = field(
        default=True,
        metadata={
            "help": "measure how much metric depth the depth tokens carry (a ridge probe on the held-out pairs, "
            "training.align.probe) before and after alignment"
        },
    )
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
    if script_args.depth_input is not None:
        load_kwargs["depth_input"] = script_args.depth_input
    depth_model, processor = load_depth_model(script_args.base, **load_kwargs)
    model = DepthAlignmentModel.from_depth_model(
        depth_model,
        alignment=script_args.alignment,
        projection_dim=script_args.projection_dim,
        dense_tokens_per_image=script_args.dense_tokens_per_image,
        sampling_seed=training_args.seed,
        reconstruction_weight=script_args.reconstruction_weight,
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
    probe = script_args.depth_probe and eval_dataset is not None
    if eval_dataset is not None:
        metrics["before"] = strip_prefix(trainer.evaluate(metric_key_prefix="before"), "before_")
    if probe:
        metrics["probe_before"] = metric_depth_probe(model, eval_dataset, trainer.data_collator)
    train_output = trainer.train(resume_from_checkpoint=resume_checkpoint(training_args))
    metrics["train"] = train_output.metrics
    if eval_dataset is not None:
        metrics["after"] = strip_prefix(trainer.evaluate(metric_key_prefix="after"), "after_")
    if probe:
        metrics["probe_after"] = metric_depth_probe(model, eval_dataset, trainer.data_collator)

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
            "reconstruction_weight": script_args.reconstruction_weight,
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
    if "probe_before" in metrics:
        lines.append("Metric-depth probe (ridge from each merged token to its region's log-depth, held-out images):")
        lines.append(f"  {'':24}{'R²':>8}{'δ₁':>8}")
        for name in ("probe_before", "probe_after"):
            for tokens, values in metrics.get(name, {}).items():
                label = f"{tokens} tokens, {name.removeprefix('probe_')}"
                lines.append(f"  {label:24}{values['r2']:8.3f}{values['delta1']:8.3f}")
    train = metrics.get("train", {})
    if "train_steps_per_second" in train:
        lines.append(f"Training: {train['train_steps_per_second']:.2f} steps/s, {train['train_runtime']:.1f} s.")
    return "\n".join(lines)
