"""Stage 2 SFT throughput: `training.sft`'s samples/s against a plain PyTorch loop on the same model and batches.

    python -m bench.bench_sft_throughput --steps 30 --out bench/results/sft_throughput_cpu.json   # CPU, minutes
    python -m bench.bench_sft_throughput --tiny                                                  # CI smoke, seconds

The experiment's CPU stand-in (`training.experiment` preset `tiny`: the `mini` base at 112 px, LoRA r 32, batch 16,
lr 2e-3 (constant), one thread) on a world rendered into a temporary folder (`training.make_world`, 64 scenes = 384
rows). One model per row, each built from the same base exactly as `training.sft.build_trainer` builds it. The rows run
one at a time, with the same thread count, taking turns over `--rounds` rounds (`--steps` split evenly between them):
load that drifts on a shared machine then hits every row alike. The first `--warmup` steps of every round are not
timed.

* plain loop: the batches the trainer's DataLoader yields, collated beforehand and held in memory, then
  `model(**batch).loss.backward(); optimizer.step(); optimizer.zero_grad()` with the trainer's optimizer class.
  The ceiling: no data work at all in the loop.
* plain loop, TRL's loss: the same, with the loss `SFTTrainer.compute_loss` computes (TRL's chunked log-probabilities
  plus its entropy and token-accuracy metrics). Not a fix, a reading aid: what of the gap is TRL's loss, not data.
* training.sft, raw rows: `SFTTrainer` as `training.sft` builds it (`DepthVLMCollator`), logging and saving off. Each
  step renders the chat template, decodes the PNGs and runs the image processor for its rows.
* training.sft, processed rows: the same trainer on `training.processed_cache.process_rows(rows)`, whose one pass over
  the rows is timed apart (`setup_s`). Its batches are compared with the raw-row collator's, bit for bit.

Trainer steps are timed between the trainer's own step-end callbacks, so everything the trainer does per step counts
(fetching and collating rows, TRL's loss and token metrics, gradient clipping, the scheduler). Two clocks: wall time
(`samples_per_s`) and this process's CPU time (`samples_per_cpu_s`). On a machine shared with other jobs the wall time
also counts the time other processes hold the cores, which drifts between rows; the CPU time counts only the work
(with no DataLoader workers, all of it is in this process), so its ratio is the one to read there.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

import torch
from transformers import PrinterCallback, Trainer, TrainerCallback
from transformers.utils import logging as transformers_logging

from bench.common import report
from configuration_depth import DEFAULT_DEPTH_FUSION
from training import make_world
from training.collator import DepthVLMCollator
from training.data_files import load_rows
from training.processed_cache import process_rows
from training.sft import build_trainer, parse_args
from training.tiny import save_tiny_base


PLAIN_LOOP = "plain loop (pre-collated batches)"
PLAIN_LOOP_TRL_LOSS = "plain loop, TRL's loss (SFTTrainer.compute_loss)"
SFT_RAW_ROWS = "training.sft, raw rows (collator processes each step)"
SFT_PROCESSED_ROWS = "training.sft, processed rows (training.processed_cache)"
COLUMNS = [
    "path", "batch", "steps", "step_ms", "samples_per_s", "vs_plain_loop", "cpu_step_ms", "samples_per_cpu_s",
    "cpu_vs_plain_loop", "setup_s",
]  # fmt: skip
# (base size, image side, scenes, batch, LoRA rank, timed steps, rounds, warm-up steps per round): the experiment's
# `tiny` preset, and a smoke mode.
SETTINGS = {"full": ("mini", 112, 64, 16, 32, 30, 5, 1), "tiny": ("tiny", 112, 2, 4, 8, 2, 2, 1)}


def clocks() -> tuple[float, float]:
    """(wall time, this process's CPU time) in seconds."""
    return time.perf_counter(), time.process_time()


class StepClock(TrainerCallback):
    """`clocks()` at the end of every optimizer step (after the step, the scheduler and zero_grad)."""

    def __init__(self):
        self.step_ends: list[tuple[float, float]] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.step_ends.append(clocks())


def make_data(folder: Path, size: str, side: int, scenes: int) -> tuple[Path, Path]:
    base = save_tiny_base(folder / "base", size=size, max_pixels=side * side)
    config = make_world.WorldConfig(
        split="train", num_scenes=scenes, seed=0, size=side, questions_per_scene=6, shard_size=scenes
    )
    make_world.write_dataset(config, folder / "world", progress=False)
    return base, folder / "world"


def make_trainer(base: Path, world: Path, output_dir: Path, rows, batch: int, lora_r: int, lr: float, steps: int):
    """`training.sft`'s trainer on `rows` (raw or processed), built from its own command-line arguments."""
    script_args, training_args, model_args = parse_args(
        [
            "--model_name_or_path", str(base), "--depth_fusion", DEFAULT_DEPTH_FUSION, "--dataset_path", str(world),
            "--output_dir", str(output_dir), "--max_steps", str(steps), "--learning_rate", str(lr),
            "--per_device_train_batch_size", str(batch), "--lora_r", str(lora_r), "--lora_alpha", str(2 * lora_r),
            "--lr_scheduler_type", "constant", "--dataloader_drop_last", "true", "--seed", "0",
            "--logging_strategy", "no", "--save_strategy", "no", "--eval_strategy", "no", "--report_to", "none",
            "--disable_tqdm", "true",
        ]
    )  # fmt: skip
    trainer = build_trainer(script_args, training_args, model_args, train_dataset=rows)
    trainer.remove_callback(PrinterCallback)  # the end-of-training metrics line
    return trainer


def timed_row(path: str, batch: int, spans: list[tuple], warmup: int, setup_s: float | None = None) -> dict:
    """A table row from each round's `clocks()` readings before its first and after its last timed step."""
    steps = sum(num_steps for num_steps, _, _ in spans)
    wall_s = sum(end[0] - start[0] for _, start, end in spans)
    cpu_s = sum(end[1] - start[1] for _, start, end in spans)
    return {
        "path": path,
        "batch": batch,
        "steps": steps,
        "step_ms": wall_s / steps * 1000,
        "samples_per_s": batch * steps / wall_s,
        "cpu_step_ms": cpu_s / steps * 1000,
        "samples_per_cpu_s": batch * steps / cpu_s,
        "setup_s": setup_s,
        "rounds_samples_per_s": [batch * n / (end[0] - start[0]) for n, start, end in spans],
        "warmup_steps_per_round": warmup,
        "threads": torch.get_num_threads(),
    }


class PlainLoop:
    """The ceiling: the trainer's first batches, collated once and held in memory, and nothing but the model's own
    loss, backward and the trainer's optimizer class (same parameters, lr and settings) in the loop. With `trl_loss`,
    the loss is the trainer's (`SFTTrainer.compute_loss`: TRL's chunked log-probabilities, entropy and token accuracy)
    instead of the model's: what TRL's loss costs, apart from the data and the rest of the trainer's step."""

    def __init__(self, trainer, num_batches: int, trl_loss: bool = False):
        self.trainer = trainer
        self.trl_loss = trl_loss
        self.batches = []
        for collated in trainer.get_train_dataloader():
            self.batches.append(collated)
            if len(self.batches) == num_batches:
                break
        self.model = trainer.model
        optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(trainer.args, self.model)
        self.optimizer = optimizer_cls([p for p in self.model.parameters() if p.requires_grad], **optimizer_kwargs)

    def step(self, inputs) -> None:
        loss = self.trainer.compute_loss(self.model, dict(inputs)) if self.trl_loss else self.model(**inputs).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def run(self, warmup: int, steps: int) -> tuple:
        self.model.train()
        for inputs in self.batches[:warmup]:
            self.step(inputs)
        start = clocks()
        for inputs in self.batches[warmup : warmup + steps]:
            self.step(inputs)
        return steps, start, clocks()


class TrainerRun:
    """`trainer.train()` for warm-up + timed steps (its `max_steps`), timed between its own step-end callbacks."""

    def __init__(self, trainer):
        self.trainer = trainer

    def run(self, warmup: int, steps: int) -> tuple:
        if self.trainer.args.max_steps != warmup + steps:
            raise ValueError(f"The trainer runs {self.trainer.args.max_steps} steps, not {warmup} + {steps}.")
        clock = StepClock()
        self.trainer.add_callback(clock)
        self.trainer.train()
        self.trainer.remove_callback(clock)
        return steps, clock.step_ends[warmup - 1], clock.step_ends[-1]


def identical_batches(collator: DepthVLMCollator, rows, processed, batch: int, num_batches: int = 3) -> bool:
    """Whether the processed rows batch to exactly what the raw rows do (keys, dtypes, shapes, values)."""
    for start in range(0, batch * num_batches, batch):
        indices = list(range(start, min(start + batch, len(rows))))
        raw = collator([rows[i] for i in indices])
        cached = collator(processed.__getitems__(indices))
        same = list(raw) == list(cached) and all(
            raw[key].dtype == cached[key].dtype and torch.equal(raw[key], cached[key]) for key in raw
        )
        if not same:
            return False
    return True


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="smoke mode: the tiny model, 12 rows, 2 steps")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per row, over all rounds")
    parser.add_argument("--rounds", type=int, default=None, help="the rows take turns, this many times each")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps at the start of every round")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, the same for every row")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    size, side, scenes, batch, lora_r, steps, rounds, warmup = SETTINGS["tiny" if args.tiny else "full"]
    steps = args.steps or steps
    args.rounds = args.rounds or rounds
    warmup = args.warmup if args.warmup is not None else warmup
    if warmup < 1:
        raise ValueError("--warmup must be at least 1: a round's first step starts its data loader.")
    if steps % args.rounds:
        raise ValueError(f"--steps {steps} must be a multiple of --rounds {args.rounds}.")
    steps_per_round = steps // args.rounds
    torch.set_num_threads(args.threads)
    transformers_logging.set_verbosity_error()  # the new depth weights' load report, once per model
    transformers_logging.disable_progress_bar()

    with tempfile.TemporaryDirectory(prefix="bench_sft_") as folder:
        folder = Path(folder)
        base, world = make_data(folder, size, side, scenes)
        rows = load_rows(world)

        def trainer_on(train_rows, name: str):
            return make_trainer(
                base, world, folder / name, train_rows, batch, lora_r, args.lr, warmup + steps_per_round
            )

        raw_trainer = trainer_on(rows, "raw")
        collator = raw_trainer.data_collator
        start = time.perf_counter()
        processed = process_rows(rows, collator, cache_dir=folder / "processed")
        setup_s = time.perf_counter() - start
        batches_identical = identical_batches(collator, rows, processed, batch)
        paths = {
            PLAIN_LOOP: PlainLoop(trainer_on(rows, "plain"), warmup + steps_per_round),
            PLAIN_LOOP_TRL_LOSS: PlainLoop(trainer_on(rows, "plain_trl"), warmup + steps_per_round, trl_loss=True),
            SFT_RAW_ROWS: TrainerRun(raw_trainer),
            SFT_PROCESSED_ROWS: TrainerRun(trainer_on(processed, "processed_run")),
        }
        spans = {path: [] for path in paths}
        for _ in range(args.rounds):
            for path, runner in paths.items():
                gc.collect()  # not inside a timed span
                spans[path].append(runner.run(warmup, steps_per_round))
        processed_mib = processed.data.nbytes / 2**20
        setups = {SFT_PROCESSED_ROWS: setup_s}
        results = [timed_row(path, batch, spans[path], warmup, setups.get(path)) for path in paths]
        del paths, raw_trainer, processed
        gc.collect()

    for row in results:
        row["vs_plain_loop"] = row["samples_per_s"] / results[0]["samples_per_s"]
        row["cpu_vs_plain_loop"] = row["samples_per_cpu_s"] / results[0]["samples_per_cpu_s"]
    return report(
        "sft_throughput",
        results,
        COLUMNS,
        args.out,
        model=f"{size} (training.tiny), depth_fusion {DEFAULT_DEPTH_FUSION}, LoRA r {lora_r}",
        image=f"{side}x{side}",
        dataset_rows=len(rows),
        learning_rate=args.lr,
        rounds=args.rounds,
        processed_rows_mib=processed_mib,
        batches_identical=batches_identical,
    )


if __name__ == "__main__":
    main()
