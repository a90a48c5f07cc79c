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

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from training.spatialbot import TRAINING_ARMS
from training.tiny import save_tiny_base


RGB_ONLY_QUESTION_TYPES = ("color", "shape", "count", "left_right", "above_below")
# The report's name for the stage-0 base, evaluated before any spatial fine-tuning.
STAGE0_ARM = "stage0"
METRIC_QUESTION_TYPES = ("distance_to_camera", "distance_between", "object_height", "object_width", "point_depth")


@dataclass(frozen=True)
class Preset:
    """Every size, step count and rate of one experiment; arms share all of it."""

    base_size: str  # training.tiny.BASE_SIZES
    image_size: int  # rendered side in pixels (the processor then caps images at `max_pixels`)
    train_scenes: int  # stage 0 and stage 2 rows come from these scenes (6 questions each)
    val_scenes: int
    pair_scenes: int  # stage 1 RGB-D pairs (the "10x" ablation uses ten times as many)
    test_questions: int | None  # None: the whole fixed test set (1,200)
    stage0_steps: int
    stage0_lr: float
    align_steps: int
    align_lr: float
    align_batch: int
    sft_steps: int
    sft_lr: float
    batch: int
    lora_r: int
    seeds: tuple[int, ...] = (0, 1, 2)
    arms: tuple[str, ...] = ("none", "concat", "add", "image")
    # (name, alignment level or None, pair multiplier) of the alignment ablation, run on the `add` arm.
    alignment_ablations: tuple[tuple[str, str | None, int], ...] = (
        ("add-unaligned", None, 1),
        ("add-global", "global", 1),
        ("add-dense-10x", "dense", 10),
    )
    ablation_seeds: tuple[int, ...] = (0,)  # the ablations are read against the main comparison's seed spread
    # None: the fixed test set (`training.make_world --preset test`: 200 scenes, 100 questions per type). A number: that
    # many test scenes, rendered like the fixed set (its 200 scenes are the first of them), for a measurement whose
    # spread over seeds is less the luck of 100 questions.
    test_scenes: int | None = None
    # Arms run only on `ablation_seeds`, beside the main comparison's `arms` (the baselines reported on one seed).
    single_seed_arms: tuple[str, ...] = ()
    threads: int | None = None  # torch threads per stage; None: the machine's cores shared by the parallel runs
    eval_batch: int = 32
    # SFT+evaluation runs that go at once after stage 0 and alignment. A small model leaves a GPU mostly idle, so
    # several runs share it; each gets an equal share of the CPU cores for its threads and DataLoader workers.
    parallel_runs: int = 1
    dataloader_workers: int = 0  # per training stage; >0 moves decoding and processing off the training loop
    extra_train_args: tuple[str, ...] = field(default=())
    # Stage 0a: steps of dense object pre-training of the from-scratch RGB tower before stage 0 (0: none). Without it
    # a base trained on questions alone at these scales answers from the prior (see training.pretrain_vision).
    vision_pretrain_steps: int = 0
    # Stage 2 trains the whole language model (plus the depth merger and gate; the RGB tower and depth encoder blocks
    # stay frozen) instead of a LoRA adapter on it. LoRA preserves a pretrained base; the from-scratch stand-in bases
    # here have no such skills to preserve, and LoRA on them stays at the answer priors (results/experiment_cpu_long).
    sft_full_finetune: bool = False
    # Stage 2 trains (every arm, same rows) and evaluation reads only these question types; None: all twelve. A
    # 1 M-parameter stand-in spreads one pass over twelve types too thin to learn any one metric type from depth.
    sft_question_types: tuple[str, ...] | None = None
    # Question types of the test set that are evaluated; None: `sft_question_types` plus the RGB-only types when
    # stage 2 trains on a subset (those check that depth does not hurt), else all.
    eval_question_types: tuple[str, ...] | None = None
    # How the depth path starts in stage 2 (training.sft's flags; the defaults are its own):
    # `depth_merger_zero_init` zeroes the depth projector's last layer, so a fresh model still equals the base while
    # the projector gets the full gradient; `depth_gate_init` opens the 'add' gate (tanh(1.0) = 0.76) instead of
    # the zero gate through which the projector's gradient is ~0; `depth_lr` is the depth modules' own rate;
    # `train_depth_encoder` trains the depth encoder's blocks too (full fine-tuning only).
    depth_merger_zero_init: bool = False
    depth_gate_init: float | None = None
    depth_lr: float | None = None
    train_depth_encoder: bool = False
    # Issue 14's H2, LLaVA's stage 1: steps of a projector warm-up before stage 2 (0: none), in which only the depth
    # modules train (language model frozen) on stage 2's rows; stage 2 then starts from the warmed-up model.
    depth_warmup_steps: int = 0
    # Stage 1 for the main arms: "dense" (token-matched InfoNCE), "global", or None (no alignment: the depth encoder
    # stays the copy of the RGB tower it is initialised as, which keeps the most metric information, see
    # shared/FACTS.md "Where depth's information goes").
    main_alignment: str | None = "dense"


PRESETS = {
    # CPU minutes. Small images (112 px: 4x4 merged tokens) keep a mini model fast on 2 cores.
    "tiny": Preset(
        base_size="mini",
        image_size=112,
        train_scenes=600,
        val_scenes=40,
        pair_scenes=300,
        test_questions=None,
        vision_pretrain_steps=300,
        stage0_steps=600,
        stage0_lr=2e-3,
        align_steps=200,
        align_lr=2e-3,
        align_batch=32,
        sft_steps=600,
        sft_lr=2e-3,
        batch=16,
        lora_r=32,
        threads=1,
    ),
    # CPU, about 100 minutes on 2 cores without the ablations (stages 0a and 0 about 25 minutes, then six rounds of
    # two SFT runs and their evaluations): `tiny`'s model on 8x the scenes, with its RGB tower pre-trained on object
    # tokens first (stage 0a; on questions alone the base never learns to look at the image), 5x `tiny`'s stage-0
    # samples and the same SFT samples. Two runs at a time, one core each.
    "cpu": Preset(
        base_size="mini",
        image_size=112,
        train_scenes=5000,
        val_scenes=40,
        pair_scenes=1000,
        test_questions=None,
        vision_pretrain_steps=600,
        stage0_steps=1500,
        stage0_lr=1e-3,
        align_steps=300,
        align_lr=2e-3,
        align_batch=32,
        sft_steps=300,
        sft_lr=2e-3,
        batch=32,
        lora_r=32,
        parallel_runs=2,
    ),
    # GPU (one H100, one 10-minute command): the calibration model of shared/FACTS.md (~13 M parameters) at 224 px
    # (64 image tokens). Six runs share the GPU at a time (a model this small leaves it mostly idle; the CPU cores
    # that decode and process the batches are the limit). The main comparison (`--no-ablations`: 3 seeds x 4 arms)
    # and the ablations (`--arms add --seeds 0`) are one 10-minute command each.
    "small": Preset(
        base_size="small",
        image_size=224,
        train_scenes=6000,
        val_scenes=100,
        pair_scenes=3000,
        test_questions=None,
        vision_pretrain_steps=300,
        stage0_steps=600,
        stage0_lr=1e-3,
        align_steps=200,
        align_lr=5e-4,
        align_batch=128,
        sft_steps=500,
        sft_lr=1e-3,
        batch=128,
        lora_r=64,
        eval_batch=300,
        parallel_runs=6,
        dataloader_workers=2,
        extra_train_args=("--bf16", "true"),
    ),
}
# `cpu` with stage 2 as full fine-tuning of the language model, at stage 0's rate, for every arm alike.
# 900 steps at batch 32 is one pass over the 30,000 training rows.
PRESETS["cpu-full"] = replace(PRESETS["cpu"], sft_full_finetune=True, sft_lr=1e-3, sft_steps=900)
# Issue 14's candidate (not yet run at full scale, see results/explore_issue14/NOTES.md): `cpu-full` with stage 2 on
# the three depth-readable question types only (4x the samples per type in the same 900 steps, same rows for both
# arms; the RGB-only types are still evaluated), the depth encoder unaligned (the copy of the RGB tower keeps the most
# metric information), and the depth path opened: the projector's last layer zero (the fresh model is still exactly the
# base) with the gate at tanh(1) = 0.76, so the projector gets the full gradient from the first step. RGB-only vs
# `add`, 3 seeds, about 60 minutes on 2 free cores (no alignment; six SFT runs two at a time).
PRESETS["cpu-depth"] = replace(
    PRESETS["cpu-full"],
    sft_question_types=("distance_to_camera", "point_depth", "closer"),
    depth_merger_zero_init=True,
    depth_gate_init=1.0,
    main_alignment=None,
    arms=("none", "add"),
    # On seed 0 only: the other fusions under the same recipe (concat vs add is the seed's ablation), SpatialBot's
    # depth-as-image and direct RGB-D input (the seed's baselines), and the seed's alignment stage put back, on the
    # preset's pairs and on 10x as many (how much stage 1 helps or hurts this recipe).
    single_seed_arms=("rgbd", "concat", "image"),
    test_scenes=1000,  # 500 questions per type: 100 let one seed's δ₁ move by ±0.05 with the luck of the draw
    alignment_ablations=(("add-dense", "dense", 1), ("add-dense-10x", "dense", 10)),
)
# The README's demo: `tiny` at smoke scale, one seed, RGB-only against depth `add`, no ablations (part of a 10-minute
# CPU job). The sequential stages get every core; the two SFT runs and their evaluations go side by side, one core each.
PRESETS["demo"] = replace(
    PRESETS["tiny"],
    threads=None,
    parallel_runs=2,
    train_scenes=250,
    val_scenes=20,
    pair_scenes=150,
    test_questions=240,
    vision_pretrain_steps=100,
    stage0_steps=250,
    align_steps=80,
    sft_steps=250,
    seeds=(0,),
    arms=("none", "add"),
    alignment_ablations=(),
)
# `small` at smoke scale: checks the GPU pipeline (bf16, DataLoader workers, parallel runs) in about a minute.
PRESETS["small-smoke"] = replace(
    PRESETS["small"],
    train_scenes=300,
    val_scenes=20,
    pair_scenes=150,
    test_questions=200,
    vision_pretrain_steps=10,
    stage0_steps=20,
    align_steps=10,
    sft_steps=20,
    seeds=(0,),
)


class Experiment:
    """Runs the stages of one preset into `out`, skipping those whose result file already exists."""

    def __init__(
        self, preset: Preset, out: Path, launcher: str = "", world_seed: int = 0, shared_stages: Path | None = None
    ):
        self.preset = preset
        self.out = out
        self.launcher = shlex.split(launcher)
        self.world_seed = world_seed
        self.shared_stages = shared_stages
        self.timings: dict[str, float] = {}

    @property
    def eval_folder(self) -> Path:
        """Where the evaluations go: one folder per test set, so a larger test set never mixes with the fixed one's."""
        return self.out / ("eval" if self.preset.test_scenes is None else f"eval-test{self.preset.test_scenes}")

    def link_shared_stages(self) -> None:
        """Use the data and stage 0 of another experiment folder of the same preset (a stage-2 variant then costs
        only its SFT runs and evaluations): links in `out` to them, where `out` has none of its own."""
        for relative in ("data", "stage0"):
            source, link = (self.shared_stages / relative).resolve(), self.out / relative
            if not source.exists():
                raise FileNotFoundError(
                    f"--shared-stages {self.shared_stages} has no {relative}: run its stages first."
                )
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(source, target_is_directory=True)

    # ---- plumbing -----------------------------------------------------------------------------------------------
    def run(
        self, name: str, module: str, args: list[str], done: Path | None, launch: bool = False, shared: bool = False
    ) -> None:
        """`python -m module args` (under the launcher for training stages) unless `done` exists.

        `done=None`: the stage resumes by itself (data generation skips its finished shards), so it always runs.
        `shared`: the stage runs beside `parallel_runs - 1` others and gets that share of the CPU cores.
        """
        if done is not None and done.exists():
            print(f"[experiment] {name}: done already ({done})")
            return
        interpreter = self.launcher if launch and self.launcher else [sys.executable]
        command = [*interpreter, "-m", module, *args]
        environment = dict(os.environ)
        environment["OMP_NUM_THREADS"] = str(self.threads(shared))
        print(f"[experiment] {name}: {shlex.join(command)}", flush=True)
        start = time.perf_counter()
        log = self.out / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as handle:
            result = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=environment, check=False)
        self.timings[name] = time.perf_counter() - start
        if result.returncode != 0:
            tail = log.read_text()[-3000:]
            raise RuntimeError(f"Stage {name} failed (exit {result.returncode}); log {log}:\n{tail}")
        if done is not None and not done.exists():
            raise RuntimeError(f"Stage {name} finished without writing {done}; log {log}.")
        print(f"[experiment] {name}: {self.timings[name]:.0f} s", flush=True)

    def threads(self, shared: bool) -> int:
        if self.preset.threads:
            return self.preset.threads
        return max(1, (os.cpu_count() or 1) // (self.preset.parallel_runs if shared else 1))

    def dataloader_workers(self, shared: bool) -> int:
        """Workers of one training stage: the preset's per-run number, times the runs it does not share with."""
        return self.preset.dataloader_workers * (1 if shared else self.preset.parallel_runs)

    def training_args(self, steps: int, lr: float, seed: int, shared: bool = False) -> list[str]:
        return [
            "--max_steps", str(steps), "--learning_rate", str(lr), "--seed", str(seed), "--data_seed", str(seed),
            "--lr_scheduler_type", "cosine", "--warmup_steps", str(max(1, steps // 20)),
            "--per_device_train_batch_size", str(self.preset.batch), "--per_device_eval_batch_size", str(self.preset.batch),
            "--logging_steps", str(max(1, steps // 20)), "--save_strategy", "no", "--report_to", "none",
            "--dataloader_num_workers", str(self.dataloader_workers(shared)),
            # Workers live across epochs: a small train set is many epochs, and each restart costs seconds.
            "--dataloader_persistent_workers", str(self.preset.dataloader_workers > 0).lower(),
            *self.preset.extra_train_args,
        ]  # fmt: skip

    # ---- data ---------------------------------------------------------------------------------------------------
    def test_world(self) -> Path:
        """The fixed test set, or `test_scenes` scenes rendered the same way (same seed and size, more scenes)."""
        if self.preset.test_scenes is None:
            return self.world("test", "test", None, preset="test")
        return self.world(f"test-{self.preset.test_scenes}", "test", self.preset.test_scenes, preset="test")

    def world(self, name: str, split: str, scenes: int | None, preset: str | None = None) -> Path:
        folder = self.out / "data" / name
        args = ["--out", str(folder), "--no-progress", "--workers", str(os.cpu_count() or 1)]
        if preset:
            args += ["--preset", preset]
            if scenes is not None:  # explicit flags override the named preset's
                args += ["--num-scenes", str(scenes)]
        else:
            args += ["--split", split, "--num-scenes", str(scenes), "--seed", str(self.world_seed)]
            args += ["--size", str(self.preset.image_size)]
        self.run(f"data-{name}", "training.make_world", args, done=None)
        return folder

    def stage0_rows(self, source: Path, name: str) -> Path:
        """Stage 0's data: the RGB-only questions of `source` (`RGB_ONLY_QUESTION_TYPES`), plus one scene description
        per scene ("Describe the scene: ..." -> its objects left to right, see `describe_objects`)."""
        target = self.out / "data" / name
        done = target / "rows.parquet"
        if not done.exists():
            from datasets import concatenate_datasets

            from training.load import load_rows

            rows = load_rows(source)
            # Reading only the type column: a row-wise filter would decode every image.
            rows = rows.filter(
                lambda question_type: question_type in RGB_ONLY_QUESTION_TYPES, input_columns="question_type"
            )
            rows = concatenate_datasets([rows, scene_descriptions(rows)])
            target.mkdir(parents=True, exist_ok=True)
            rows.to_parquet(str(target / "rows.tmp.parquet"))
            os.replace(target / "rows.tmp.parquet", done)
        return target

    # ---- stages ---------------------------------------------------------------------------------------------------
    def stage0(self, train: Path, val: Path, train_world: Path, val_world: Path) -> Path:
        """The base: every weight trained from scratch on RGB-only questions (`train`, `val`), the RGB tower first on
        the objects each of its tokens shows (`training.pretrain_vision`, on the scenes of `train_world`)."""
        raw_base = self.out / "stage0" / "init"
        if not (raw_base / "config.json").exists():
            save_tiny_base(raw_base, seed=0, size=self.preset.base_size, max_pixels=self.preset.image_size**2)
        folder = self.out / "stage0"
        if self.preset.vision_pretrain_steps:
            raw_base = self.pretrain_vision(raw_base, train_world, val_world)
        args = [
            "--model_name_or_path", str(raw_base), "--depth_fusion", "none", "--use_peft", "false",
            "--train_vision_tower", "true", "--dataset_path", str(train), "--eval_dataset_path", str(val),
            "--output_dir", str(folder / "trainer"), "--export_dir", str(folder / "model"),
            "--loss_curve", str(folder / "loss_curve.png"), "--eval_strategy", "no",
            *self.training_args(self.preset.stage0_steps, self.preset.stage0_lr, seed=0),
        ]  # fmt: skip
        self.run("stage0", "training.sft", args, folder / "trainer" / "sft_summary.json", launch=True)
        base = folder / "base"
        if not (base / "config.json").exists():
            save_as_plain_qwen2_5_vl(folder / "model", base)
        return base

    def pretrain_vision(self, raw_base: Path, train_world: Path, val_world: Path) -> Path:
        """Stage 0a: the from-scratch RGB tower learns each token's object colour and shape (`training.pretrain_vision`)."""
        folder = self.out / "stage0" / "vision"
        steps = self.preset.vision_pretrain_steps
        args = [
            "--base", str(raw_base), "--data", str(train_world), "--eval_data", str(val_world), "--out", str(folder),
            "--output_dir", str(self.out / "stage0" / "vision-trainer"), "--max_steps", str(steps),
            "--learning_rate", str(self.preset.stage0_lr), "--lr_scheduler_type", "cosine",
            "--warmup_steps", str(max(1, steps // 20)), "--per_device_train_batch_size", str(self.preset.batch),
            "--logging_steps", str(max(1, steps // 10)), "--save_strategy", "no", "--report_to", "none", "--seed", "0",
            "--dataloader_num_workers", str(self.dataloader_workers(shared=False)), *self.preset.extra_train_args,
        ]  # fmt: skip
        self.run("stage0-vision", "training.pretrain_vision", args, folder / "config.json", launch=True)
        return folder

    def align(self, base: Path, pairs: Path, val: Path, level: str, name: str, shared: bool = False) -> Path:
        folder = self.out / "align" / name
        args = [
            "--base", str(base), "--data", str(pairs), "--eval_data", str(val), "--out", str(folder),
            "--alignment", level, "--image_size", str(self.preset.image_size), "--output_dir", str(folder / "trainer"),
            "--per_device_train_batch_size", str(self.preset.align_batch), "--learning_rate", str(self.preset.align_lr),
            "--max_steps", str(self.preset.align_steps), "--warmup_steps", str(max(1, self.preset.align_steps // 20)),
            "--lr_scheduler_type", "cosine", "--logging_steps", str(max(1, self.preset.align_steps // 10)),
            "--save_strategy", "no", "--report_to", "none", "--seed", "0",
            "--dataloader_num_workers", str(self.dataloader_workers(shared)), *self.preset.extra_train_args,
        ]  # fmt: skip
        self.run(
            f"align-{name}", "training.align", args, folder / "alignment_metrics.json", launch=True, shared=shared
        )
        return folder

    def sft(self, arm: str, seed: int, base: Path, aligned: Path | None, train: Path, val: Path, name: str) -> Path:
        folder = self.out / "sft" / f"{name}-seed{seed}"
        warm = self.preset.depth_warmup_steps > 0 and arm in ("add", "concat")
        if warm:
            aligned = self.sft_stage(
                f"sft-{name}-seed{seed}-warmup", folder / "warmup", arm, seed, base, aligned, train, val,
                steps=self.preset.depth_warmup_steps, extra=["--train_only_depth", "true"],
            )  # fmt: skip
        return self.sft_stage(f"sft-{name}-seed{seed}", folder, arm, seed, base, aligned, train, val, warm_start=warm)

    def sft_stage(
        self,
        name: str,
        folder: Path,
        arm: str,
        seed: int,
        base: Path,
        aligned: Path | None,
        train: Path,
        val: Path,
        steps: int | None = None,
        extra: tuple[str, ...] | list[str] = (),
        warm_start: bool = False,
    ) -> Path:
        """One `training.sft` run into `folder` (its model in `folder/model`); `warm_start`: the depth path of
        `aligned` was already trained (a warm-up), so it is not re-initialised."""
        start = ["--aligned_depth_model", str(aligned)] if aligned else ["--model_name_or_path", str(base)]
        args = [
            *start, "--depth_fusion", arm, "--dataset_path", str(train), "--eval_dataset_path", str(val),
            "--output_dir", str(folder / "trainer"), "--export_dir", str(folder / "model"),
            "--loss_curve", str(folder / "loss_curve.png"), "--eval_strategy", "no",
            *self.training_args(steps or self.preset.sft_steps, self.preset.sft_lr, seed, shared=True),
        ]  # fmt: skip
        if self.preset.sft_full_finetune:
            args += ["--use_peft", "false"]
        else:
            args += ["--lora_r", str(self.preset.lora_r), "--lora_alpha", str(2 * self.preset.lora_r)]
        if self.preset.sft_question_types:
            args += ["--question_types", *self.preset.sft_question_types]
        args += [*self.depth_path_args(arm, initialise=not warm_start), *extra]
        summary = folder / "trainer" / "sft_summary.json"
        self.run(name, "training.sft", args, summary, launch=True, shared=True)
        return folder / "model"

    def depth_path_args(self, arm: str, initialise: bool = True) -> list[str]:
        """training.sft flags that set how the depth path of `arm` starts (`initialise`) and trains (none for RGB-only
        arms)."""
        preset, args = self.preset, []
        if arm not in ("add", "concat"):
            return args
        if preset.depth_merger_zero_init and initialise:
            args += ["--depth_merger_zero_init", "true"]
        if preset.depth_gate_init is not None and arm == "add" and initialise:
            args += ["--depth_gate_init", str(preset.depth_gate_init)]
        if preset.depth_lr is not None:
            args += ["--depth_lr", str(preset.depth_lr)]
        if preset.train_depth_encoder:
            args += ["--train_depth_encoder", "true"]
        return args

    def eval_question_types(self) -> tuple[str, ...] | None:
        if self.preset.eval_question_types:
            return self.preset.eval_question_types
        if self.preset.sft_question_types:
            extra = [t for t in RGB_ONLY_QUESTION_TYPES if t not in self.preset.sft_question_types]
            return (*self.preset.sft_question_types, *extra)
        return None

    def evaluate(self, model: Path, test: Path, label: str) -> dict:
        folder = self.eval_folder / label
        args = [
            "run", "--model", str(model), "--data", str(test), "--out", str(folder), "--instruction", "",
            "--batch-size", str(self.preset.eval_batch), "--max-new-tokens", "16", "--label", label, "--no-progress",
        ]  # fmt: skip
        if self.preset.test_questions:
            args += ["--limit", str(self.preset.test_questions)]
        if self.eval_question_types():
            args += ["--question-types", *self.eval_question_types()]
        self.run(f"eval-{label}", "training.evaluate", args, folder / "results.json", shared=True)
        return json.loads((folder / "results.json").read_text())

    # ---- the whole experiment ------------------------------------------------------------------------------------
    def __call__(self) -> dict:
        preset = self.preset
        self.out.mkdir(parents=True, exist_ok=True)
        if self.shared_stages:
            self.link_shared_stages()
        (self.out / "preset.json").write_text(json.dumps(asdict(preset), indent=2))
        train = self.world("train", "train", preset.train_scenes)
        val = self.world("val", "val", preset.val_scenes)
        test = self.test_world()
        pairs = {1: self.world("pairs", "train", preset.pair_scenes)}
        if any(multiplier == 10 for _, _, multiplier in preset.alignment_ablations):
            pairs[10] = self.world("pairs-10x", "train", 10 * preset.pair_scenes)
        rgb_train = self.stage0_rows(train, "train-stage0")
        rgb_val = self.stage0_rows(val, "val-stage0")

        base = self.stage0(rgb_train, rgb_val, train, val)
        aligned = (
            self.align(base, pairs[1], val, preset.main_alignment, preset.main_alignment)
            if preset.main_alignment
            else None  # the depth arms build their encoder from the base (a copy of its RGB tower)
        )
        # Seed-major, so every arm has a result before any arm has three: an interrupted run still compares arms.
        plan = [  # (run name, fusion arm, start: aligned folder, None, or an ablation's (level, pair multiplier), seed)
            (arm, arm, aligned if arm in ("add", "concat") else None, seed)
            for seed in preset.seeds
            for arm in preset.arms
        ]
        plan += [
            (arm, arm, aligned if arm in ("add", "concat") else None, seed)
            for arm in preset.single_seed_arms
            for seed in preset.ablation_seeds
        ]
        plan += [
            (name, "add", (level, multiplier), seed)
            for name, level, multiplier in preset.alignment_ablations
            for seed in preset.ablation_seeds
        ]
        results = {"preset": asdict(preset), "runs": [], "alignment": {}}
        # The stage-0 base before any spatial SFT: what the RGB questions start from, and the answer priors.
        self.evaluate(self.out / "stage0" / "model", test, f"{STAGE0_ARM}-seed0")
        report_lock = threading.Lock()

        def run_arm(name: str, arm: str, start, seed: int) -> None:
            if isinstance(start, tuple):  # an ablation's own alignment, or none
                level, multiplier = start
                start = (
                    self.align(base, pairs[multiplier], val, level, name.removeprefix("add-"), shared=True)
                    if level
                    else None
                )
            model = self.sft(arm, seed, base, start, train, val, name)
            self.evaluate(model, test, f"{name}-seed{seed}")
            with report_lock:
                # Written after every run, so an interrupted experiment still leaves what it has measured.
                self.report(results)

        # Runs are independent once stage 0 and alignment are done; in plan order, `parallel_runs` at a time.
        with ThreadPoolExecutor(max_workers=preset.parallel_runs) as pool:
            futures = [pool.submit(run_arm, *step) for step in plan]
            try:
                for future in futures:
                    future.result()
            except BaseException:
                pool.shutdown(cancel_futures=True)  # runs not yet started never start; those running finish
                raise
        return results

    def report_existing(self) -> dict:
        """Rebuild the report from the evaluations already on disk (for an interrupted experiment)."""
        results = {"preset": asdict(self.preset), "runs": [], "alignment": {}, "partial": True}
        self.report(results)
        return results

    def evaluated_runs(self) -> list[dict]:
        """Every evaluation in `out`, whichever invocation ran it (`--seeds 2` after `--seeds 0 1` adds to them), in
        the preset's arm order, then by name and seed."""
        runs = []
        for result_file in sorted(self.eval_folder.glob("*/results.json")):
            arm, _, seed = result_file.parent.name.rpartition("-seed")
            result = json.loads(result_file.read_text())
            runs.append({"arm": arm, "seed": int(seed), "model": result.get("model"), **summary_of(result)})
        order = {
            arm: index for index, arm in enumerate((STAGE0_ARM, *self.preset.arms, *self.preset.single_seed_arms))
        }
        return sorted(runs, key=lambda run: (order.get(run["arm"], len(order)), run["arm"], run["seed"]))

    def report(self, results: dict) -> None:
        results["runs"] = self.evaluated_runs()
        for metrics_file in sorted((self.out / "align").glob("*/alignment_metrics.json")):
            results["alignment"][metrics_file.parent.name] = json.loads(metrics_file.read_text())
        results["aggregate"] = aggregate(results["runs"])
        results["timings_s"] = self.timings
        write_report(results, self.out)
        write_sft_loss_curves(self.out)


def scene_descriptions(rows):
    """One description row per scene of `rows` (a `datasets.Dataset` of world rows without point markers), on the
    image of that scene's first row: the question `DESCRIBE_QUESTION`, the answer `describe_objects`."""
    from training.world import DESCRIBE_QUESTION, describe_objects

    first_of_scene: dict[str, int] = {}
    for index, (scene_id, marker) in enumerate(zip(rows["scene_id"], rows["marker"])):
        if marker:
            raise ValueError(
                f"Row {index} ({scene_id}) has a point marker drawn on its image: not a plain scene view."
            )
        first_of_scene.setdefault(scene_id, index)

    def describe(row: dict) -> dict:
        answer = describe_objects(json.loads(row["scene"])["objects"])
        messages = [
            {
                "role": "user",
                "content": [{"type": "image", "text": None}, {"type": "text", "text": DESCRIBE_QUESTION}],
            },
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ]
        return {
            "messages": messages, "question_type": "describe", "question": DESCRIBE_QUESTION, "answer": answer,
            "answer_value": None, "choices": [], "unit": "", "object_ids": [],
        }  # fmt: skip

    return rows.select(sorted(first_of_scene.values())).map(describe)


def save_as_plain_qwen2_5_vl(depth_folder: Path, out: Path) -> None:
    """Re-save a `depth_fusion="none"` model as a plain Qwen2.5-VL folder (transformers' own classes, no remote code),
    so the later stages start from exactly what they would get from a published checkpoint."""
    from transformers import AutoImageProcessor, AutoTokenizer, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from configuration_depth import Qwen2_5_VLDepthConfig

    depth_config = Qwen2_5_VLDepthConfig.from_pretrained(depth_folder)
    config = Qwen2_5_VLConfig(
        text_config=depth_config.text_config.to_dict(),
        vision_config=depth_config.vision_config.to_dict(),
        image_token_id=depth_config.image_token_id,
        video_token_id=depth_config.video_token_id,
        vision_start_token_id=depth_config.vision_start_token_id,
        vision_end_token_id=depth_config.vision_end_token_id,
        tie_word_embeddings=depth_config.tie_word_embeddings,
    )
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(depth_folder, config=config)
    staging = out.with_name(out.name + ".tmp")
    model.save_pretrained(staging)
    AutoTokenizer.from_pretrained(depth_folder, trust_remote_code=False).save_pretrained(staging)
    AutoImageProcessor.from_pretrained(depth_folder).save_pretrained(staging)
    os.replace(staging, out)


def summary_of(result: dict) -> dict:
    """Per question type: δ₁, AbsRel, within-2x (metric types) or accuracy (the others), and the counts behind them."""
    keep = ("num_samples", "num_parseable", "num_unparseable", "delta1", "abs_rel", "within_2x", "accuracy")
    metrics = result["metrics"]
    per_type = {name: {key: values.get(key) for key in keep} for name, values in metrics["per_type"].items()}
    # How many different answers the model gave per type: 1 means it answers from the prior, not from the image.
    for question_type, answers in _answers_by_type(result.get("predictions", [])).items():
        per_type[question_type]["distinct_answers"] = len(set(answers))
    # Whether metric answers follow the truth at all (δ₁ alone also rewards a well-chosen constant).
    for question_type, correlation in log_correlations(result.get("predictions", [])).items():
        per_type[question_type]["log_correlation"] = correlation
    overall = {key: metrics["overall"].get(key) for key in keep}
    return {"per_type": per_type, "overall": overall, "depth_source": result.get("depth_source")}


def _answers_by_type(predictions: list[dict]) -> dict[str, list[str]]:
    answers: dict[str, list[str]] = {}
    for prediction in predictions:
        answers.setdefault(prediction["question_type"], []).append(str(prediction.get("prediction", "")).strip())
    return answers


def log_correlations(predictions: list[dict]) -> dict[str, float]:
    """Per metric question type: the Pearson correlation of log predicted and log true values over the answers that
    parsed to a positive number (NaN when fewer than 3 did, or when either side is constant)."""
    pairs: dict[str, list[tuple[float, float]]] = {}
    for prediction in predictions:
        parsed, truth = prediction.get("parsed"), prediction.get("answer_value")
        if prediction.get("kind") != "metric" or not prediction.get("parse_ok") or truth is None:
            continue
        if isinstance(parsed, (int, float)) and parsed > 0 and truth > 0:
            pairs.setdefault(prediction["question_type"], []).append((math.log(parsed), math.log(truth)))
    correlations = {}
    for question_type, values in pairs.items():
        predicted, true = np.array(values).T
        constant = len(values) < 3 or predicted.std() == 0 or true.std() == 0
        correlations[question_type] = float("nan") if constant else float(np.corrcoef(predicted, true)[0, 1])
    return correlations


def aggregate(runs: list[dict]) -> dict:
    """Mean and sample standard deviation (ddof 1; 0 for a single seed) over seeds of each arm's per-type metrics."""
    arms: dict[str, list[dict]] = {}
    for run in runs:
        arms.setdefault(run["arm"], []).append(run)
    summary = {}
    for arm, arm_runs in arms.items():
        per_type = {}
        for question_type in arm_runs[0]["per_type"]:
            values = {}
            for key in ("delta1", "abs_rel", "within_2x", "accuracy", "log_correlation"):
                samples = [r["per_type"][question_type].get(key) for r in arm_runs]
                samples = [v for v in samples if v is not None and not math.isnan(v)]
                if samples:
                    std = float(np.std(samples, ddof=1)) if len(samples) > 1 else 0.0
                    values[key] = {"mean": float(np.mean(samples)), "std": std, "n": len(samples)}
            per_type[question_type] = values
        summary[arm] = per_type
    return summary


# Issue 14's bar: on both of these, a depth arm's mean δ₁ is at least this many times RGB-only's, and the difference
# of the means exceeds twice the larger of the two seed standard deviations.
DEPTH_BAR_QUESTION_TYPES = ("distance_to_camera", "point_depth")
DEPTH_BAR_RATIO = 1.2


def against_rgb_only(aggregate_: dict, baseline: str = "none") -> list[dict]:
    """Each depth arm measured on 2+ seeds against `baseline` on `DEPTH_BAR_QUESTION_TYPES`: the ratio of the mean
    δ₁, the difference of the means, twice the larger seed std, and whether the bar is met on that type."""
    rows = []
    for arm, per_type in aggregate_.items():
        if arm in (baseline, STAGE0_ARM) or baseline not in aggregate_:
            continue
        for question_type in DEPTH_BAR_QUESTION_TYPES:
            depth, rgb = per_type.get(question_type, {}).get("delta1"), aggregate_[baseline].get(question_type, {})
            rgb = rgb.get("delta1")
            if depth is None or rgb is None or min(depth["n"], rgb["n"]) < 2:
                continue
            difference, noise = depth["mean"] - rgb["mean"], 2 * max(depth["std"], rgb["std"])
            ratio = depth["mean"] / rgb["mean"] if rgb["mean"] > 0 else float("inf")
            rows.append({
                "arm": arm, "question_type": question_type, "ratio": ratio, "difference": difference,
                "twice_larger_std": noise, "seeds": min(depth["n"], rgb["n"]),
                "meets_bar": ratio >= DEPTH_BAR_RATIO and difference > noise,
            })  # fmt: skip
    return rows


def write_report(results: dict, out: Path) -> None:
    """results.json, a markdown table (mean ± std over seeds) and a grouped bar chart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    aggregate_ = results["aggregate"]
    results["against_rgb_only"] = against_rgb_only(aggregate_)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    arms = list(aggregate_)
    types = list(next(iter(aggregate_.values())))
    lines = ["| question type | metric | " + " | ".join(arms) + " |", "|---|---|" + "---|" * len(arms)]
    for question_type in types:
        keys = ("delta1", "abs_rel") if question_type in METRIC_QUESTION_TYPES else ("accuracy",)
        for key in keys:
            cells = []
            for arm in arms:
                value = aggregate_[arm][question_type].get(key)
                cells.append("-" if value is None else f"{value['mean']:.3f} ± {value['std']:.3f}")
            lines.append(f"| {question_type} | {key} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Distinct answers per question type and run (1 = the same answer to every question of the type):")
    lines.append("")
    lines.append("| run | " + " | ".join(types) + " |")
    lines.append("|---|" + "---|" * len(types))
    for run in results["runs"]:
        counts = [str(run["per_type"].get(t, {}).get("distinct_answers", "-")) for t in types]
        lines.append(f"| {run['arm']}-seed{run['seed']} | " + " | ".join(counts) + " |")
    metric_types = [t for t in types if t in METRIC_QUESTION_TYPES]
    lines += ["", "Correlation of log answer and log truth per metric type and run (0: no relation to the truth):", ""]
    lines += ["| run | " + " | ".join(metric_types) + " |", "|---|" + "---|" * len(metric_types)]
    for run in results["runs"]:
        cells = [run["per_type"].get(t, {}).get("log_correlation") for t in metric_types]
        cells = ["-" if value is None or math.isnan(value) else f"{value:.2f}" for value in cells]
        lines.append(f"| {run['arm']}-seed{run['seed']} | " + " | ".join(cells) + " |")
    if results["against_rgb_only"]:
        lines += [
            "",
            f"Depth arms against RGB-only (`none`), δ₁ (bar: ≥ {DEPTH_BAR_RATIO}x on "
            f"{' and '.join(DEPTH_BAR_QUESTION_TYPES)}, difference of the means > 2x the larger seed std):",
            "",
            "| arm | question type | seeds | ratio | difference | 2x larger std | bar met |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in results["against_rgb_only"]:
            lines.append(
                f"| {row['arm']} | {row['question_type']} | {row['seeds']} | {row['ratio']:.2f} | "
                f"{row['difference']:+.3f} | {row['twice_larger_std']:.3f} | {'yes' if row['meets_bar'] else 'no'} |"
            )
    seeds = sorted({run["seed"] for run in results["runs"]})
    lines.append("")
    lines.append(
        f"Mean ± sample standard deviation over seeds {seeds} (SFT seed; stage 0 and alignment are shared). "
        f"`{STAGE0_ARM}`: the shared base before spatial fine-tuning (one model)."
    )
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    figure, axis = plt.subplots(figsize=(max(8, 1.1 * len(types)), 4.5), dpi=120)
    width = 0.8 / len(arms)
    for index, arm in enumerate(arms):
        means, errors = [], []
        for question_type in types:
            key = "delta1" if question_type in METRIC_QUESTION_TYPES else "accuracy"
            value = aggregate_[arm][question_type].get(key) or {"mean": np.nan, "std": 0}
            means.append(value["mean"])
            errors.append(value["std"])
        axis.bar(np.arange(len(types)) + index * width, means, width, yerr=errors, capsize=2, label=arm)
    axis.set_xticks(np.arange(len(types)) + width * (len(arms) - 1) / 2, types, rotation=35, ha="right")
    axis.set_ylabel("δ₁ (metric types) / accuracy (others)")
    axis.set_ylim(0, 1)
    axis.set_title("Depth vs RGB-only on the rendered test set (mean ± std over seeds)")
    axis.legend(ncols=min(len(arms), 4), fontsize=8)
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(out / "results.png")
    plt.close(figure)


def write_sft_loss_curves(out: Path) -> Path | None:
    """Every stage-2 run's training loss in one picture (`sft_loss_curves.png`, one colour per arm, one line per seed)
    and the curves behind it (`sft_loss_curves.json`); None before any run has finished."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {}
    for history_file in sorted((out / "sft").glob("*-seed*/loss_curve.json")):
        history = json.loads(history_file.read_text())
        curves[history_file.parent.name] = [[entry["step"], entry["loss"]] for entry in history if "loss" in entry]
    if not curves:
        return None
    (out / "sft_loss_curves.json").write_text(json.dumps(curves, indent=1) + "\n")
    arms = sorted({name.rpartition("-seed")[0] for name in curves})
    figure, axis = plt.subplots(figsize=(7, 4), dpi=120)
    for index, arm in enumerate(arms):
        seeds = [points for name, points in curves.items() if name.rpartition("-seed")[0] == arm]
        for seed_index, points in enumerate(seeds):  # one legend entry per arm, whatever its number of seeds
            label = arm if seed_index == 0 else None
            axis.plot(*zip(*points), color=f"C{index % 10}", alpha=0.8, linewidth=1.2, label=label)
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("train loss (nats per answer token)")
    axis.set_title("Stage 2 spatial SFT, every arm and seed")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(out / "sft_loss_curves.png")
    plt.close(figure)
    return out / "sft_loss_curves.png"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="override the preset's seeds")
    parser.add_argument("--arms", nargs="+", default=None, choices=TRAINING_ARMS)
    parser.add_argument(
        "--no-ablations", action="store_true", help="only the main comparison (no single-seed arms, no ablations)"
    )
    parser.add_argument("--parallel-runs", type=int, default=None, help="override the preset's parallel_runs")
    parser.add_argument("--sft-steps", type=int, default=None, help="override the preset's sft_steps")
    parser.add_argument(
        "--train-depth-encoder", action="store_true", help="stage 2 also trains the depth encoder's blocks (H3)"
    )
    parser.add_argument("--depth-lr", type=float, default=None, help="override the preset's depth_lr")
    parser.add_argument(
        "--depth-warmup-steps", type=int, default=None, help="override the preset's depth_warmup_steps (H2)"
    )
    parser.add_argument(
        "--shared-stages", type=Path, default=None, help="reuse the data and stage 0 of this experiment folder"
    )
    parser.add_argument("--launcher", default="", help='e.g. "accelerate launch --num_processes 8"')
    parser.add_argument("--report-only", action="store_true", help="rebuild the report from finished evaluations")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    overrides = {}
    if args.seeds:
        overrides["seeds"] = tuple(args.seeds)
    if args.arms:
        overrides["arms"] = tuple(args.arms)
    if args.no_ablations:
        overrides["alignment_ablations"] = ()
        overrides["single_seed_arms"] = ()
    if args.parallel_runs:
        overrides["parallel_runs"] = args.parallel_runs
    if args.sft_steps:
        overrides["sft_steps"] = args.sft_steps
    if args.train_depth_encoder:
        overrides["train_depth_encoder"] = True
    if args.depth_lr:
        overrides["depth_lr"] = args.depth_lr
    if args.depth_warmup_steps is not None:
        overrides["depth_warmup_steps"] = args.depth_warmup_steps
    preset = replace(preset, **overrides)
    out = args.out or Path("runs") / f"experiment_{args.preset}"
    experiment = Experiment(preset, out, args.launcher, shared_stages=args.shared_stages)
    return experiment.report_existing() if args.report_only else experiment()


if __name__ == "__main__":
    main()
