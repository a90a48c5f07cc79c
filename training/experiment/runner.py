"""Runs the experiment's stages, each the project's own CLI in a subprocess, skipping those already done."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

from configuration_depth import DEFAULT_DEPTH_FUSION, DEPTH_ENCODER_MERGER, DEPTH_FUSIONS, RGB_ONLY_FUSION
from training.experiment.presets import RGB_ONLY_QUESTION_TYPES, Preset
from training.experiment.report import STAGE0_ARM, aggregate, summary_of, write_report, write_sft_loss_curves
from training.experiment.stage0 import save_as_plain_qwen2_5_vl, scene_descriptions
from training.tiny import save_tiny_base


def has_depth_encoder(arm: str) -> bool:
    """Whether a training arm's model has a depth encoder (the fusion table's row; the "image" arm has none): its
    arms start from the aligned encoder and take the depth-path flags."""
    return arm in DEPTH_FUSIONS and DEPTH_FUSIONS[arm].has_depth_encoder


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
            "--model_name_or_path", str(raw_base), "--depth_fusion", RGB_ONLY_FUSION, "--use_peft", "false",
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
        warm = self.preset.depth_warmup_steps > 0 and has_depth_encoder(arm)
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
        if not has_depth_encoder(arm):
            return args
        fusion = DEPTH_FUSIONS[arm]
        if preset.depth_merger_zero_init and initialise and DEPTH_ENCODER_MERGER in fusion.trained_in_sft:
            args += ["--depth_merger_zero_init", "true"]
        if preset.depth_gate_init is not None and fusion.has_gate and initialise:
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

    def evaluate(self, model: Path, test: Path, label: str) -> Path:
        """Evaluate `model` on `test` into `eval_folder/label` (the report reads every such folder)."""
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
        return folder

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
        arm_seeds = [(arm, seed) for seed in preset.seeds for arm in preset.arms]
        arm_seeds += [(arm, seed) for arm in preset.single_seed_arms for seed in preset.ablation_seeds]
        plan = [  # (run name, fusion arm, start: aligned folder, None, or an ablation's (level, pair multiplier), seed)
            (arm, arm, aligned if has_depth_encoder(arm) else None, seed) for arm, seed in arm_seeds
        ]
        plan += [
            (name, DEFAULT_DEPTH_FUSION, (level, multiplier), seed)
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
