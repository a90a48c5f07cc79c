"""Summarise the shipped seed-0 models on five freshly rendered test worlds (seeds 2-6) against the committed test."""

import json
import statistics
from pathlib import Path


TYPES = ("distance_to_camera", "point_depth")
WORLDS = (2, 3, 4, 5, 6)
COMMITTED = {  # seed-0 models on the committed test world (seed 1): results/fair_final/results.md
    "constant": {"distance_to_camera": 0.416, "point_depth": 0.332},
    "none": {"distance_to_camera": 0.376, "point_depth": 0.252},
    "add": {"distance_to_camera": 0.376, "point_depth": 0.398},
}
root = Path("runs/fresh-eval-multi")
summary = {"test_worlds": list(WORLDS), "scenes_per_world": 1000, "arms": {}}
for arm in ("constant", "none", "add"):
    per_world = {t: [] for t in TYPES}
    readable = {t: [] for t in TYPES}
    for world in WORLDS:
        metrics = json.loads((root / f"{arm}-seed{world}" / "results.json").read_text())["metrics"]["per_type"]
        for t in TYPES:
            per_world[t].append(metrics[t]["delta1"])
            readable[t].append(metrics[t]["num_parseable"] / metrics[t]["num_samples"])
    summary["arms"][arm] = {
        t: {
            "delta1_per_world": per_world[t],
            "mean": statistics.mean(per_world[t]),
            "std": statistics.stdev(per_world[t]),
            "readable_min": min(readable[t]),
            "committed_test": COMMITTED[arm][t],
        }
        for t in TYPES
    }
for t in TYPES:
    gains = [
        a - n
        for a, n in zip(summary["arms"]["add"][t]["delta1_per_world"], summary["arms"]["none"][t]["delta1_per_world"])
    ]
    summary.setdefault("add_minus_none", {})[t] = {
        "per_world": gains,
        "mean": statistics.mean(gains),
        "std": statistics.stdev(gains),
    }
Path("results/fair_final/fresh_test/worlds.json").write_text(json.dumps(summary, indent=2) + "\n")
for arm, by_type in summary["arms"].items():
    print(
        arm,
        {
            t: f"{v['mean']:.3f}±{v['std']:.3f} (committed {v['committed_test']:.3f}, readable ≥{v['readable_min']:.0%})"
            for t, v in by_type.items()
        },
    )
print("add - none", {t: f"{v['mean']:+.3f}±{v['std']:.3f}" for t, v in summary["add_minus_none"].items()})
