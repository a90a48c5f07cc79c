"""One stage-2 arm against the shared base in runs/base_cpu (see prepare_base.py): SFT, then evaluation on the test
set (optionally only some question types), one thread. Skips what is done.

    python results/explore_issue14/arm.py NAME FUSION [--start aligned|unaligned|base|PATH] [--steps N] [--lr X]
        [--types t1 t2 ...] [--seed S] [-- extra training.sft flags]
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


BASE = Path(os.environ.get("BASE_DIR", "runs/base_cpu"))
parser = argparse.ArgumentParser()
parser.add_argument("name")
parser.add_argument("fusion")
parser.add_argument("--start", default="aligned")
parser.add_argument("--steps", type=int, default=900)
parser.add_argument("--lr", type=float, default=1e-3)
parser.add_argument("--batch", type=int, default=32)
parser.add_argument("--types", nargs="+", default=None)
parser.add_argument("--eval-types", nargs="+", default=None)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--val", default="val", help="folder under BASE/data for the eval loss")
parser.add_argument("--eval-steps", type=int, default=0, help="eval loss every N steps (0: none)")
parser.add_argument("--threads", type=int, default=1)
parser.add_argument("--out", type=Path, default=Path("runs/explore"))
argv = sys.argv[1:]
extra = argv[argv.index("--") + 1 :] if "--" in argv else []
a = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
folder = a.out / f"{a.name}-seed{a.seed}"
folder.mkdir(parents=True, exist_ok=True)
env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
if a.start == "init":  # a random base (no stage 0a, no stage 0)
    start = ["--model_name_or_path", str(BASE / "stage0" / "init")]
elif a.start == "vision":  # stage 0a's output: the pre-trained RGB tower, a random language model (no stage 0)
    start = ["--model_name_or_path", os.environ.get("VISION_BASE", str(BASE / "stage0" / "vision"))]
elif a.fusion == "none" or a.start == "base":
    start = ["--model_name_or_path", str(BASE / "stage0" / "base")]
elif a.start == "aligned":
    start = ["--aligned_depth_model", str(BASE / "align" / "dense")]
elif a.start == "unaligned":
    start = ["--model_name_or_path", str(BASE / "stage0" / "base")]
else:
    start = ["--aligned_depth_model", a.start]
types = ["--question_types", *a.types] if a.types else []
steps = a.steps
sft = [
    sys.executable,
    "-m",
    "training.sft",
    *start,
    "--depth_fusion",
    a.fusion,
    "--dataset_path",
    str(BASE / "data" / "train"),
    "--eval_dataset_path",
    str(BASE / "data" / a.val),
    *types,
    "--output_dir",
    str(folder / "trainer"),
    "--export_dir",
    str(folder / "model"),
    "--loss_curve",
    str(folder / "loss_curve.png"),
    "--use_peft",
    "false",
    *(["--eval_strategy", "steps", "--eval_steps", str(a.eval_steps)] if a.eval_steps else ["--eval_strategy", "no"]),
    "--max_steps",
    str(steps),
    "--learning_rate",
    str(a.lr),
    "--seed",
    str(a.seed),
    "--data_seed",
    str(a.seed),
    "--lr_scheduler_type",
    "cosine",
    "--warmup_steps",
    str(max(1, steps // 20)),
    "--per_device_train_batch_size",
    str(a.batch),
    "--per_device_eval_batch_size",
    str(a.batch),
    "--logging_steps",
    str(max(1, steps // 20)),
    "--save_strategy",
    "no",
    "--report_to",
    "none",
    "--dataloader_num_workers",
    "0",
    "--disable_tqdm",
    "true",
    *extra,
]
timings = {}
(folder / "command.json").write_text(json.dumps({"argv": sys.argv, "sft": sft}, indent=1))
if not (folder / "trainer" / "sft_summary.json").exists():
    t = time.time()
    with open(folder / "sft.log", "w") as log:
        subprocess.run(sft, stdout=log, stderr=subprocess.STDOUT, env=env, check=True)
    timings["sft_s"] = time.time() - t
eval_types = a.eval_types or a.types
ev = [
    sys.executable,
    "-m",
    "training.evaluate",
    "run",
    "--model",
    str(folder / "model"),
    "--data",
    str(BASE / "data" / "test"),
    "--out",
    str(folder / "eval"),
    "--instruction",
    "",
    "--batch-size",
    "32",
    "--max-new-tokens",
    "16",
    "--label",
    a.name,
    "--no-progress",
    *(["--question-types", *eval_types] if eval_types else []),
]
if not (folder / "eval" / "results.json").exists():
    t = time.time()
    with open(folder / "eval.log", "w") as log:
        subprocess.run(ev, stdout=log, stderr=subprocess.STDOUT, env=env, check=True)
    timings["eval_s"] = time.time() - t
if timings:
    (folder / "timings.json").write_text(json.dumps(timings))
print(folder, timings)
