"""The depth-vs-RGB experiment: does a depth encoder make Qwen2.5-VL better at space, and by how much?

    python -m training.experiment --preset tiny  --out runs/experiment_tiny      # CPU, tens of minutes
    python -m training.experiment --preset cpu   --out runs/experiment_cpu       # CPU, about 100 minutes
    python -m training.experiment --preset cpu-full --out runs/experiment_cpu_full  # the same, stage 2 full FT
    python -m training.experiment --preset small --out runs/experiment_small     # GPU: each stage < 10 minutes

A small Qwen2.5-VL-architecture model, trained from scratch here, stands in for the pretrained base:

0. **Stage 0** trains it (every weight, vision tower included) on the rendered world's RGB-only questions (colour,
   shape, count, left/right, above/below) and one description per scene (its objects' colours and shapes, left to
   right), so it has RGB priors to preserve. It is shared by all arms, like a pretrained checkpoint would be. With
   `vision_pretrain_steps`, **stage 0a** first trains its RGB tower alone to tell, token by token, the colour and
   shape of the object it shows (`training.pretrain_vision`): on questions alone a from-scratch base of this size
   keeps answering from the answer prior, i.e. never learns to look.
1. **Stage 1** aligns a depth encoder to its frozen RGB tower (`training.align`): `dense` (default), `global`, or
   none (the encoder starts as a copy of the RGB tower), on a small or a 10x larger set of RGB-D pairs.
2. **Stage 2** fine-tunes each arm with LoRA (or, with `sft_full_finetune`, the whole language model) on all 12
   question types (`training.sft`), same rows, same steps, same seeds; arms differ in one switch:
   - `none`: RGB only;
   - `concat` / `add`: the depth encoder's tokens appended / added (aligned encoder);
   - `image`: depth drawn as a second picture through the RGB tower, no separate encoder (SpatialBot's approach).
3. **Evaluation** on the fixed rendered test set (`training.make_world --preset test`: 1,200 questions, 100 per type),
   greedy, with the question text exactly as trained (no extra instruction): δ₁, AbsRel and within-2x on metric
   answers, accuracy on the others, per question type (`training.evaluate`). The stage-0 base is evaluated too
   (`stage0` in the report): where the RGB questions start, and the answer priors of the metric ones.

Every stage is the project's own CLI, run as a subprocess (`--launcher "accelerate launch"` runs them under
accelerate). Finished stages are skipped on a rerun (each writes its result last), so an interrupted experiment
resumes. Outputs in `--out`: per-run folders, `results.json` (every arm x seed, and mean ± std over seeds),
`results.md` and `results.png`.
"""

from training.experiment.presets import METRIC_QUESTION_TYPES, PRESETS, RGB_ONLY_QUESTION_TYPES, Preset
from training.experiment.report import (
    DEPTH_BAR_QUESTION_TYPES,
    DEPTH_BAR_RATIO,
    STAGE0_ARM,
    against_rgb_only,
    aggregate,
    log_correlations,
    summary_of,
    write_report,
    write_sft_loss_curves,
)
from training.experiment.runner import Experiment
from training.experiment.stage0 import save_as_plain_qwen2_5_vl, scene_descriptions


__all__ = [
    "DEPTH_BAR_QUESTION_TYPES",
    "DEPTH_BAR_RATIO",
    "METRIC_QUESTION_TYPES",
    "PRESETS",
    "RGB_ONLY_QUESTION_TYPES",
    "STAGE0_ARM",
    "Experiment",
    "Preset",
    "against_rgb_only",
    "aggregate",
    "log_correlations",
    "save_as_plain_qwen2_5_vl",
    "scene_descriptions",
    "summary_of",
    "write_report",
    "write_sft_loss_curves",
]
