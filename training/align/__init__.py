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
* `--reconstruction_weight W` (default 0: contrastive only) adds `W` times a self-supervised term: a linear head
  reconstructs each depth token's own encoder input, average-pooled to 7 x 7 cells of 4 px per channel, as a
  fraction of the batch's variance left unexplained (1 for predicting the mean). The RGB tower has no camera, so
  InfoNCE alone lets a `points` encoder drop the x and y that carry the focal length; this term keeps them. It is
  off by default because it cost depth reading end to end (`results/reconstruction_alignment/`). The head is saved
  with the projection heads.

Only the depth encoder, the heads and the logit scale train; the RGB tower and the language model are
bit-identical afterwards (the language model is not even kept in memory while aligning).

`--base` is a plain Qwen2.5-VL (folder or hub id; the depth encoder is then created as `build_depth_model` does,
initialised from the RGB tower) or a Qwen2.5-VL-Depth folder (`training.model_loading.load_depth_model`). `--data` /
`--eval_data` are parquet files or folders, `save_to_disk` folders or hub datasets (`training.data_files.load_rows`)
with an `images` column (the first is used) and depth in its image block (16-bit PNG bytes, millimetres;
`training.trl_layout`): what `training.make_world` and `training.make_rgbd_pairs` write, read as `RGBDPairs`. Rows
sharing a `scene_id` are one
pair (the world writes one row per question). Without `--eval_data`, `--eval_pairs` pairs are held out of `--data`.
Every image is centre-cropped to a square and resized to `--image_size` (the rendered world is square already), so a
batch is equal-length images that the depth encoder runs in one SDPA call per block.

Outputs in `--out`: the full depth-model folder with the aligned depth encoder (model, processor, remote code), which
Stage 2 loads with `Qwen2_5_VLDepthForConditionalGeneration.from_pretrained(out)` or as its `--base`;
`alignment_heads.safetensors` + `alignment_heads.json` (the projection heads and logit scale, not part of the VLM);
`alignment_metrics.json` (depth->RGB retrieval R@1/R@5 on the held-out pairs before and after, next to chance, the
metric-depth probe of the depth and RGB tokens before and after, and the training speed); Trainer checkpoints in `--output_dir` (default `OUT/checkpoints`).

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

Layout, in pipeline order:

* `data.py`: distinct pairs and their collation (`select_pair_rows`, `RGBDPairCollator`).
* `loss.py`: the contrastive loss (`ClipLoss`).
* `model.py`: the towers, heads and loss together (`DepthAlignmentModel`).
* `retrieval.py`: the retrieval evaluation (`retrieval_metrics`, `recall_at_k`).
* `probe.py`: how much metric depth the tokens carry, before and after (`metric_depth_probe`), and what an object's
  tokens hold of its size (`object_size_probe`, `python -m training.align.probe ... --objects`).
* `trainer.py`: the `Trainer` subclass (`DepthAlignmentTrainer`).
* `job.py`: the whole job, from loading to export (`train_alignment`).
* `cli.py`: the command line (`main`).
"""

from training.align.cli import main, parse_args, use_cpu_for_cpu_only_multiprocess_launch
from training.align.data import RGBDPairCollator, center_square, select_pair_rows
from training.align.job import (
    HEADS_CONFIG_FILE,
    HEADS_FILE,
    METRICS_FILE,
    AlignmentArguments,
    AlignmentResult,
    export_aligned_model,
    format_metrics,
    split_pairs,
    strip_prefix,
    train_alignment,
    trainable_digest,
    write_rank_report,
)
from training.align.loss import (
    INIT_TEMPERATURE,
    MAX_LOGIT_SCALE,
    ClipLoss,
    distributed_rank_and_world_size,
    gather_with_grad,
    symmetric_infonce,
)
from training.align.model import (
    ALIGNMENT_LEVELS,
    RGB_TOWER_PREFIX,
    DepthAlignmentModel,
    DepthAlignmentOutput,
    mean_per_image,
)
from training.align.probe import metric_depth_probe
from training.align.retrieval import embed_pairs, recall_at_k, retrieval_metrics
from training.align.trainer import DepthAlignmentTrainer, SetDatasetEpoch


__all__ = [
    "ALIGNMENT_LEVELS",
    "HEADS_CONFIG_FILE",
    "HEADS_FILE",
    "INIT_TEMPERATURE",
    "MAX_LOGIT_SCALE",
    "METRICS_FILE",
    "RGB_TOWER_PREFIX",
    "AlignmentArguments",
    "AlignmentResult",
    "ClipLoss",
    "DepthAlignmentModel",
    "DepthAlignmentOutput",
    "DepthAlignmentTrainer",
    "RGBDPairCollator",
    "SetDatasetEpoch",
    "center_square",
    "distributed_rank_and_world_size",
    "embed_pairs",
    "export_aligned_model",
    "format_metrics",
    "gather_with_grad",
    "main",
    "mean_per_image",
    "parse_args",
    "recall_at_k",
    "retrieval_metrics",
    "metric_depth_probe",
    "select_pair_rows",
    "split_pairs",
    "strip_prefix",
    "symmetric_infonce",
    "train_alignment",
    "trainable_digest",
    "use_cpu_for_cpu_only_multiprocess_launch",
    "write_rank_report",
]
