"""Build the shared, reusable part of the cpu-full experiment (data, stage 0a, stage 0, dense alignment) into
runs/base_cpu, so stage-2 arms can be run against it without redoing it."""

import sys
from pathlib import Path

from training.experiment import PRESETS, Experiment


out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/base_cpu")
e = Experiment(PRESETS["cpu-full"], out)
out.mkdir(parents=True, exist_ok=True)
p = e.preset
train = e.world("train", "train", p.train_scenes)
val = e.world("val", "val", p.val_scenes)
test = e.world("test", "test", None, preset="test")
pairs = e.world("pairs", "train", p.pair_scenes)
rgb_train = e.stage0_rows(train, "train-stage0")
rgb_val = e.stage0_rows(val, "val-stage0")
base = e.stage0(rgb_train, rgb_val, train, val)
aligned = e.align(base, pairs, val, "dense", "dense")
print("timings", e.timings)
