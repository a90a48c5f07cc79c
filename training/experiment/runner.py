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

from configuration_depth import (
    DEFAULT_DEPTH_FUSION,
    DEFAULT_DEPTH_INPUT,
    DEPTH_ENCODER_MERGER,
    DEPTH_FUSIONS,
    RGB_ONLY_FUSION,
)
from training import world
from training.controls import with_uninformative_depth
from training.experiment.conversations import scene_conversations
from training.experiment.presets import PRESET_FIELDS_BESIDE_THE_RUNS, RGB_ONLY_QUESTION_TYPES, Preset
from training.experiment.protocol import check_rendered_alike, check_test_world_unexplored
from training.experiment.report import (
    CAPACITY_CONTROL_SUFFIX,
    CONSTANT_ARM,
    DEPTH_REMOVED_SUFFIX,
    DEPTH_SHUFFLED_SUFFIX,
    STAGE0_ARM,
    aggregate,
    card_summary,
    own_evaluation_labels,
    summary_of,
    write_report,
    write_sft_loss_curves,
)
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
        """Where the test evaluations go: one folder per test set, so a larger test set never mixes with the fixed
        one's."""
        if self.preset.test_world_seed is not None:
            return self.out / "eval-test"
        return self.out / ("eval" if self.preset.test_scenes is None else f"eval-test{self.preset.test_scenes}")

    def eval_folders(self) -> dict[str, Path]:
        """{evaluation set: its folder}: the validation set (recipes are chosen on it), then the test set."""
        folders = {"val": self.out / "eval-val"} if self.preset.evaluate_val else {}
        if self.preset.evaluate_test:
            folders["test"] = self.eval_folder
        return folders

    def seed_folder(self, stage: str, seed: int) -> Path:
        """A shared stage's folder: one per pipeline seed (`whole_pipeline_seeds`), else one for all seeds."""
        return self.out / stage / f"seed{seed}" if self.preset.whole_pipeline_seeds else self.out / stage

    def pipeline_seed(self, seed: int) -> int:
        """The seed of the shared stages (stage 0, alignment) that an SFT seed builds on."""
        return seed if self.preset.whole_pipeline_seeds else 0

    def link_shared_stages(self) -> None:
        """Use the data, stage 0 and (where it has one) alignment of another experiment folder of the same preset (a
        stage-2 variant then costs only its SFT runs and evaluations): links in `out` to them, where `out` has none
        of its own."""
        for relative in ("data", "stage0", "align"):
            source, link = (self.shared_stages / relative).resolve(), self.out / relative
            if relative == "align" and not source.exists():
                continue  # aligned here, then
            if not source.exists():
                raise FileNotFoundError(
                    f"--shared-stages {self.shared_stages} has no {relative}: run its stages first."
                )
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(source, target_is_directory=True)

    def link_shared_runs(self) -> list[str]:
        """Link in the shared folder's finished stage-2 runs of this preset's main `arms` (their models and every
        evaluation of them), so that the extras of a final run (`cpu-fair-final-extras`) are read against the very
        `none` and `add` runs of the main comparison instead of retrained copies. Only when the two presets agree on
        every field that decides those runs (`PRESET_FIELDS_BESIDE_THE_RUNS` may differ); returns the runs linked."""
        shared_preset = json.loads((self.shared_stages / "preset.json").read_text())
        own = asdict(self.preset)
        if any(
            key not in PRESET_FIELDS_BESIDE_THE_RUNS and json.loads(json.dumps(value)) != shared_preset.get(key)
            for key, value in own.items()
        ):
            return []  # another recipe: its runs are not this one's
        linked = []
        for arm in self.preset.arms:
            for seed in self.preset.seeds:
                run = f"{arm}-seed{seed}"
                if not (self.shared_stages / "sft" / run / "trainer" / "sft_summary.json").exists():
                    continue
                sources = [self.shared_stages / "sft" / run] + [
                    self.shared_stages / folder.name / label
                    for folder in self.eval_folders().values()
                    for label in own_evaluation_labels(arm, seed)
                ]
                for source in sources:
                    link = self.out / source.relative_to(self.shared_stages)
                    if source.exists() and not link.exists():
                        link.parent.mkdir(parents=True, exist_ok=True)
                        link.symlink_to(source.resolve(), target_is_directory=True)
                linked.append(run)
        return linked

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
        """The test split of `test_world_seed` rendered like training (`test_scenes` scenes); for the earlier presets
        the fixed test set, or `test_scenes` scenes rendered like it (same seed and size, more scenes)."""
        preset = self.preset
        if preset.test_world_seed is not None:
            if preset.evaluate_test:
                check_test_world_unexplored("test", preset.test_world_seed)
            return self.world("test", "test", preset.test_scenes, seed=preset.test_world_seed)
        if preset.test_scenes is None:
            return self.world("test", "test", None, preset="test")
        return self.world(f"test-{preset.test_scenes}", "test", preset.test_scenes, preset="test")

    def world(
        self, name: str, split: str, scenes: int | None, preset: str | None = None, seed: int | None = None
    ) -> Path:
        folder = self.out / "data" / name
        args = ["--out", str(folder), "--no-progress", "--workers", str(os.cpu_count() or 1)]
        if preset:
            args += ["--preset", preset]
            if scenes is not None:  # explicit flags override the named preset's
                args += ["--num-scenes", str(scenes)]
        else:
            world_seed = self.world_seed if seed is None else seed
            args += ["--split", split, "--num-scenes", str(scenes), "--seed", str(world_seed)]
            args += ["--size", str(self.preset.image_size)]
        self.run(f"data-{name}", "training.make_world", args, done=None)
        return folder

    def derived_rows(self, source: Path, name: str, transform) -> Path:
        """`transform` of `source`'s rows, written once to `out/data/<name>/rows.parquet` (atomically: an interrupted
        run leaves no partial file) and reused after."""
        target = self.out / "data" / name
        done = target / "rows.parquet"
        if not done.exists():
            from training.data_files import load_rows

            target.mkdir(parents=True, exist_ok=True)
            transform(load_rows(source)).to_parquet(str(target / "rows.tmp.parquet"))
            os.replace(target / "rows.tmp.parquet", done)
        return target

    def stage0_rows(self, source: Path, name: str) -> Path:
        """Stage 0's data: the questions of `source` of `stage0_question_types` ("rgb": `RGB_ONLY_QUESTION_TYPES`;
        "all": every type, answered from RGB since stage 0 has no depth path), plus one scene description per scene
        ("Describe the scene: ..." -> its objects left to right, see `describe_objects`)."""
        every_type = self.preset.stage0_question_types == "all"
        if every_type:
            name = f"{name}-all"

        def questions_and_descriptions(rows):
            from datasets import concatenate_datasets

            unmarked = rows.filter(lambda marker: not marker, input_columns="marker")  # descriptions: plain views
            if not every_type:
                # Reading only the type column: a row-wise filter would decode every image.
                rows = rows.filter(
                    lambda question_type: question_type in RGB_ONLY_QUESTION_TYPES, input_columns="question_type"
                )
                unmarked = rows
            return concatenate_datasets([rows, scene_descriptions(unmarked)])

        return self.derived_rows(source, name, questions_and_descriptions)

    def conversation_rows(self, source: Path, name: str) -> Path:
        """`source`'s rows with each scene's unmarked questions as one conversation (`scene_conversations`)."""
        return self.derived_rows(source, name, scene_conversations)

    # ---- stages ---------------------------------------------------------------------------------------------------
    def stage0(
        self, train: Path, val: Path, train_world: Path, val_world: Path, seed: int = 0, shared: bool = False
    ) -> Path:
        """The base: every weight trained from scratch on RGB-only questions (`train`, `val`), the RGB tower first on
        the objects each of its tokens shows (`training.pretrain_vision`, on the scenes of `train_world`); `seed`
        sets its initialisation and data order."""
        folder = self.seed_folder("stage0", seed)
        raw_base = folder / "init"
        if not (raw_base / "config.json").exists():
            if self.preset.tokenizer_digits not in ("merged", "single"):
                raise ValueError(
                    f"tokenizer_digits must be 'merged' or 'single'; got {self.preset.tokenizer_digits!r}."
                )
            corpus = world.question_corpus() if self.preset.tokenizer_corpus == "world" else None
            save_tiny_base(
                raw_base,
                seed=seed,
                size=self.preset.base_size,
                max_pixels=self.preset.image_size**2,
                tokenizer_corpus=corpus,
                single_digits=self.preset.tokenizer_digits == "single",
            )
        if self.preset.vision_pretrain_steps:
            raw_base = self.pretrain_vision(raw_base, train_world, val_world, folder, seed, shared)
        args = [
            "--model_name_or_path", str(raw_base), "--depth_fusion", RGB_ONLY_FUSION, "--use_peft", "false",
            "--train_vision_tower", "true", "--dataset_path", str(train), "--eval_dataset_path", str(val),
            "--output_dir", str(folder / "trainer"), "--export_dir", str(folder / "model"),
            "--loss_curve", str(folder / "loss_curve.png"), "--eval_strategy", "no",
            *self.training_args(self.preset.stage0_steps, self.preset.stage0_lr, seed=seed, shared=shared),
        ]  # fmt: skip
        name = f"stage0-seed{seed}" if self.preset.whole_pipeline_seeds else "stage0"
        self.run(name, "training.sft", args, folder / "trainer" / "sft_summary.json", launch=True, shared=shared)
        base = folder / "base"
        if not (base / "config.json").exists():
            save_as_plain_qwen2_5_vl(folder / "model", base)
        return base

    def pretrain_vision(
        self, raw_base: Path, train_world: Path, val_world: Path, stage0: Path, seed: int, shared: bool
    ) -> Path:
        """Stage 0a: the from-scratch RGB tower learns each token's object colour and shape (`training.pretrain_vision`)."""
        folder = stage0 / "vision"
        steps = self.preset.vision_pretrain_steps
        args = [
            "--base", str(raw_base), "--data", str(train_world), "--eval_data", str(val_world), "--out", str(folder),
            "--output_dir", str(stage0 / "vision-trainer"), "--max_steps", str(steps),
            "--learning_rate", str(self.preset.stage0_lr), "--lr_scheduler_type", "cosine",
            "--warmup_steps", str(max(1, steps // 20)), "--per_device_train_batch_size", str(self.preset.batch),
            "--logging_steps", str(max(1, steps // 10)), "--save_strategy", "no", "--report_to", "none",
            "--seed", str(seed), "--dataloader_num_workers", str(self.dataloader_workers(shared)),
            *self.preset.extra_train_args,
        ]  # fmt: skip
        name = f"stage0-vision-seed{seed}" if self.preset.whole_pipeline_seeds else "stage0-vision"
        self.run(name, "training.pretrain_vision", args, folder / "config.json", launch=True, shared=shared)
        return folder

    def align(
        self, base: Path, pairs: Path, val: Path, level: str, name: str, shared: bool = False, seed: int = 0
    ) -> Path:
        reconstruction_weight = self.preset.align_reconstruction_weight
        if reconstruction_weight:
            name = f"{name}-recon{reconstruction_weight:g}"
        if self.preset.depth_input != DEFAULT_DEPTH_INPUT:
            name = f"{name}-{self.preset.depth_input}"
        if self.preset.whole_pipeline_seeds:
            name = f"{name}-seed{seed}"
        folder = self.out / "align" / name
        args = [
            "--base", str(base), "--data", str(pairs), "--eval_data", str(val), "--out", str(folder),
            "--alignment", level, "--image_size", str(self.preset.image_size), "--output_dir", str(folder / "trainer"),
            "--per_device_train_batch_size", str(self.preset.align_batch), "--learning_rate", str(self.preset.align_lr),
            "--max_steps", str(self.preset.align_steps), "--warmup_steps", str(max(1, self.preset.align_steps // 20)),
            "--lr_scheduler_type", "cosine", "--logging_steps", str(max(1, self.preset.align_steps // 10)),
            "--save_strategy", "no", "--report_to", "none", "--seed", str(seed),
            "--dataloader_num_workers", str(self.dataloader_workers(shared)), "--depth_input", self.preset.depth_input,
            *(["--reconstruction_weight", str(reconstruction_weight)] if reconstruction_weight else []),
            *self.preset.extra_train_args,
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
        if not aligned and self.reads_depth(arm):  # a depth path built here from the base
            args += ["--depth_input", self.preset.depth_input]
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

    def evaluate(self, model: Path, data: Path, label: str, folder: Path | None = None, extra: list[str] = ()) -> Path:
        """Evaluate `model` on `data` into `folder/label` (default: the test folder; the report reads every such
        folder); `extra`: evaluate flags (a depth control)."""
        folder = (folder or self.eval_folder) / label
        args = [
            "run", "--model", str(model), "--data", str(data), "--out", str(folder), "--instruction", "",
            "--batch-size", str(self.preset.eval_batch), "--max-new-tokens", "16", "--label", label, "--no-progress",
            *self.evaluation_filters(), *extra,
        ]  # fmt: skip
        self.run(f"{folder.parent.name}-{label}", "training.evaluate", args, folder / "results.json", shared=True)
        return folder

    def evaluation_filters(self) -> list[str]:
        args = ["--limit", str(self.preset.test_questions)] if self.preset.test_questions else []
        if self.eval_question_types():
            args += ["--question-types", *self.eval_question_types()]
        return args

    def evaluate_constant(self, train: Path, data: Path, folder: Path) -> Path:
        """The constant baseline (fitted on `train`'s answers) on `data`, as the report's `constant` arm."""
        label = f"{CONSTANT_ARM}-seed0"
        args = ["constant", "--train", str(train), "--data", str(data), "--out", str(folder / label), "--label", label]
        self.run(f"{folder.name}-{label}", "training.evaluate", [*args, *self.evaluation_filters()],
                 folder / label / "results.json")  # fmt: skip
        return folder / label

    def uninformative_rows(self, train: Path) -> Path:
        """The capacity-matched control's training rows: `train` with every depth map one constant map."""
        return self.derived_rows(train, f"{train.name}{CAPACITY_CONTROL_SUFFIX}", with_uninformative_depth)

    @staticmethod
    def reads_depth(arm: str) -> bool:
        """Whether `arm`'s model reads depth through its own depth path (the arms whose depth is controlled): a fusion
        of the table with depth (the "image" arm's model is RGB-only)."""
        return arm in DEPTH_FUSIONS and DEPTH_FUSIONS[arm].has_depth

    # ---- the whole experiment ------------------------------------------------------------------------------------
    def __call__(self) -> dict:
        preset = self.preset
        started = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        if self.shared_stages:
            self.link_shared_stages()
            for run in self.link_shared_runs():
                print(f"[experiment] {run}: linked from {self.shared_stages} (the same recipe)", flush=True)
        (self.out / "preset.json").write_text(json.dumps(asdict(preset), indent=2))
        train = self.world("train", "train", preset.train_scenes)
        val = self.world("val", "val", preset.val_scenes)
        test = self.test_world()
        if preset.test_world_seed is not None:  # the protocol: validation and test rendered exactly like training
            check_rendered_alike(train, {"validation": val, "test": test})
        eval_sets = {"val": val, "test": test}
        eval_folders = self.eval_folders()
        pairs = {1: self.world("pairs", "train", preset.pair_scenes)}
        if any(multiplier == 10 for _, _, multiplier in preset.alignment_ablations):
            pairs[10] = self.world("pairs-10x", "train", 10 * preset.pair_scenes)
        rgb_train = self.stage0_rows(train, "train-stage0")
        rgb_val = self.stage0_rows(val, "val-stage0")
        sft_train = train  # stage 2's rows; the constant baseline is always fitted on the world's own rows
        if preset.scene_conversations:
            rgb_train = self.conversation_rows(rgb_train, "train-stage0-conversations")
            sft_train = self.conversation_rows(train, "train-conversations")
        for set_name, folder in eval_folders.items():
            self.evaluate_constant(train, eval_sets[set_name], folder)

        # The shared stages, once per pipeline seed (one seed, 0, unless `whole_pipeline_seeds`).
        pipeline_seeds = sorted({self.pipeline_seed(seed) for seed in (*preset.seeds, *preset.ablation_seeds)})
        bases, alignments = {}, {}

        def shared_stages(seed: int) -> None:
            # Several seeds' stages go side by side, each on its share of the cores; a single seed's get them all.
            shared = len(pipeline_seeds) > 1
            bases[seed] = self.stage0(rgb_train, rgb_val, train, val, seed=seed, shared=shared)
            alignments[seed] = (
                self.align(bases[seed], pairs[1], val, preset.main_alignment, preset.main_alignment, shared, seed)
                if preset.main_alignment
                else None  # the depth arms build their encoder from the base (a copy of its RGB tower)
            )

        def evaluate_base(seed: int) -> None:
            # The base before any spatial SFT: what the RGB questions start from, and the answer priors.
            for set_name, folder in eval_folders.items():
                self.evaluate(bases[seed].parent / "model", eval_sets[set_name], f"{STAGE0_ARM}-seed{seed}", folder)

        # Seed-major, so every arm has a result before any arm has three: an interrupted run still compares arms.
        arm_seeds = [(arm, seed) for seed in preset.seeds for arm in preset.arms]
        arm_seeds += [(arm, seed) for arm in preset.single_seed_arms for seed in preset.ablation_seeds]
        plan = [  # (run name, fusion arm, start: "main", None, or an ablation's (level, pair multiplier), seed, rows)
            (arm, arm, "main" if has_depth_encoder(arm) else None, seed, "real") for arm, seed in arm_seeds
        ]
        plan += [
            (f"{arm}{CAPACITY_CONTROL_SUFFIX}", arm, "main" if has_depth_encoder(arm) else None, seed, "uninformative")
            for arm in preset.capacity_controls
            for seed in preset.ablation_seeds
        ]
        plan += [
            (name, DEFAULT_DEPTH_FUSION, (level, multiplier), seed, "real")
            for name, level, multiplier in preset.alignment_ablations
            for seed in preset.ablation_seeds
        ]
        results = {"preset": asdict(preset), "runs": [], "alignment": {}}
        report_lock = threading.Lock()

        def run_arm(name: str, arm: str, start, seed: int, rows: str) -> None:
            shared_jobs[self.pipeline_seed(seed)].result()  # its seed's stage 0 and alignment (re-raises a failure)
            base = bases[self.pipeline_seed(seed)]
            if start == "main":
                start = alignments[self.pipeline_seed(seed)]
            elif isinstance(start, tuple):  # an ablation's own alignment, or none
                level, multiplier = start
                start = (
                    self.align(base, pairs[multiplier], val, level, name.removeprefix("add-"), True, seed)
                    if level
                    else None
                )
            rows_path = self.uninformative_rows(sft_train) if rows == "uninformative" else sft_train
            model = self.sft(arm, seed, base, start, rows_path, val, name)
            for set_name, folder in (eval_folders or {"test": self.eval_folder}).items():
                data = eval_sets[set_name]
                if rows == "uninformative":  # the control is read as it was trained: every depth map the constant
                    self.evaluate(model, data, f"{name}-seed{seed}", folder, ["--depth-override", "constant"])
                    continue
                self.evaluate(model, data, f"{name}-seed{seed}", folder)
                if preset.depth_controls and self.reads_depth(arm):
                    self.evaluate(model, data, f"{name}{DEPTH_REMOVED_SUFFIX}-seed{seed}", folder, ["--no-depth"])
                    self.evaluate(
                        model,
                        data,
                        f"{name}{DEPTH_SHUFFLED_SUFFIX}-seed{seed}",
                        folder,
                        ["--depth-override", "shuffled"],
                    )
            with report_lock:
                # Written after every run, so an interrupted experiment still leaves what it has measured.
                self.report(results, wall_s=time.perf_counter() - started)

        # One queue, `parallel_runs` at a time: each seed's shared stages, then the arms (each waits for its seed's
        # stages, which were queued before it, so a core never idles while another seed's stage 0 could run), then
        # the bases' evaluations.
        with ThreadPoolExecutor(max_workers=preset.parallel_runs) as pool:
            shared_jobs = {seed: pool.submit(shared_stages, seed) for seed in pipeline_seeds}
            jobs = [*shared_jobs.values(), *(pool.submit(run_arm, *step) for step in plan)]
            jobs += [pool.submit(evaluate_base, seed) for seed in pipeline_seeds]
            try:
                for job in jobs:
                    job.result()
            except BaseException:
                pool.shutdown(cancel_futures=True)  # jobs not yet started never start; those running finish
                raise
        # Only the arms this invocation trains: a run of `--arms add` has no `none` model to ship.
        shipped = [arm for arm in preset.shipped_arms if arm in preset.arms and 0 in preset.seeds]
        card_runs = self.evaluated_runs(self.card_folder()) if shipped else []
        for arm in shipped:
            self.ship(arm, runs=card_runs)
        self.report(results, wall_s=time.perf_counter() - started)
        return results

    def ship(self, arm: str, seed: int = 0, runs: list[dict] | None = None) -> Path:
        """`arm`'s seed-`seed` model as a Hub-ready folder (safetensors, config with auto_map, code files,
        processor, card) in `out/models/<arm>`; `runs`: the evaluations of `card_folder`, if already read."""
        folder = self.out / "models" / arm
        args = ["--model", str(self.out / "sft" / f"{arm}-seed{seed}" / "model"), "--out", str(folder)]
        args += ["--model-name", f"{arm} ({self.out.name}, seed {seed})"]
        # The card carries the model's own evaluations (and its depth controls') and the experiment's table.
        eval_folder = self.card_folder()
        result_files = [eval_folder / label / "results.json" for label in own_evaluation_labels(arm, seed)]
        args += ["--results", *(str(path) for path in result_files if path.exists())]
        runs = self.evaluated_runs(eval_folder) if runs is None else runs
        if any(run["arm"] == arm for run in runs):
            summary = card_summary(aggregate(runs), arm, eval_folder.name.removeprefix("eval-"), self.out.name)
            args += ["--training-summary", summary]
        self.run(f"ship-{arm}", "training.export", args, folder / "config.json")
        return folder

    def card_folder(self) -> Path:
        """The evaluations a shipped model's card reports: the test set's where it was read, else validation's."""
        folders = self.eval_folders()
        return folders.get("test") or next(iter(folders.values()), self.eval_folder)

    def report_existing(self) -> dict:
        """Rebuild the report from the evaluations already on disk: for an interrupted experiment (`partial`), or a
        finished one with runs added since. A finished report's stage timings and wall time are kept: this call
        trains nothing, so they are still the run's."""
        results = {"preset": asdict(self.preset), "runs": [], "alignment": {}, "partial": True}
        previous = self.out / "results.json"
        wall_s = None
        if previous.exists():
            earlier = json.loads(previous.read_text())
            if earlier.get("wall_s") is not None:  # the run finished
                results["partial"] = False
                wall_s = earlier["wall_s"]
                self.timings = {**earlier.get("timings_s", {}), **self.timings}
        self.report(results, wall_s=wall_s)
        return results

    def evaluated_runs(self, folder: Path | None = None) -> list[dict]:
        """Every evaluation in `folder` (default: the test folder), whichever invocation ran it (`--seeds 2` after
        `--seeds 0 1` adds to them), in the preset's arm order, then by name and seed."""
        runs = []
        for result_file in sorted((folder or self.eval_folder).glob("*/results.json")):
            arm, _, seed = result_file.parent.name.rpartition("-seed")
            result = json.loads(result_file.read_text())
            runs.append({"arm": arm, "seed": int(seed), "model": result.get("model"), **summary_of(result)})
        order = {
            arm: index
            for index, arm in enumerate((CONSTANT_ARM, STAGE0_ARM, *self.preset.arms, *self.preset.single_seed_arms))
        }
        return sorted(runs, key=lambda run: (order.get(run["arm"], len(order)), run["arm"], run["seed"]))

    def report(self, results: dict, wall_s: float | None = None) -> None:
        """results.json/.md/.png of the test set in `out`; with validation, the same of it in `out/eval-val`."""
        for metrics_file in sorted((self.out / "align").glob("*/alignment_metrics.json")):
            results["alignment"][metrics_file.parent.name] = json.loads(metrics_file.read_text())
        results["timings_s"] = self.timings
        if wall_s is not None:
            results["wall_s"] = wall_s
        folders = self.eval_folders() or {"test": self.eval_folder}
        for set_name, folder in folders.items():
            results["evaluation_set"] = set_name
            results["runs"] = self.evaluated_runs(folder)
            if not results["runs"]:
                continue
            results["aggregate"] = aggregate(results["runs"])
            # The test report sits in `out` (the committed results); the validation report beside its runs.
            write_report(results, self.out if set_name == "test" or len(folders) == 1 else folder)
        write_sft_loss_curves(self.out)
