"""Committed models on several freshly rendered test worlds, beside the numbers their experiment committed.

    python -m training.fresh_worlds --experiment results/fair_final/results.json --evaluations runs/fresh-eval-multi \\
        --worlds 2 3 4 5 6 --out results/fair_final/fresh_test/worlds.json

Issue 21 asks that the shipped seed-0 models, evaluated on a freshly rendered test set (another world seed, the
training resolution), give numbers within seed noise of the committed ones. One fresh world has the sampling error of
its own 500 questions per type; several give the spread of the test world itself. `--evaluations` holds one
`training.evaluate` folder per arm and world, `ARM-seedWORLD/results.json` (`constant-seedWORLD` from `training.evaluate
constant`). The committed numbers are the experiment's own (`--experiment`'s `runs`, at `--seed`); the seed std is its
`aggregate` over seeds. Written: per arm and question type the δ₁ per world, their mean and std, the lowest readable
rate, the committed number and the seed std; and per depth arm its difference to `--rgb-only` per world.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from training.dataset_files import write_atomically


DEFAULT_TYPES = ("distance_to_camera", "point_depth")


def committed_delta1(experiment: dict, arm: str, seed: int, question_type: str) -> float:
    """The experiment's δ₁ of `arm` at `seed` on `question_type` (the constant has one run, seed 0)."""
    for run in experiment["runs"]:
        if run["arm"] == arm and run["seed"] == (0 if arm == "constant" else seed):
            return run["per_type"][question_type]["delta1"]
    raise SystemExit(f"The experiment has no run of arm {arm!r} at seed {seed}.")


def seed_std(experiment: dict, arm: str, question_type: str) -> float | None:
    """The experiment's std over seeds of `arm` on `question_type` (None for an arm of one run)."""
    delta1 = experiment.get("aggregate", {}).get(arm, {}).get(question_type, {}).get("delta1")
    return delta1["std"] if delta1 and delta1["n"] > 1 else None


def summarise(
    experiment: dict,
    evaluations: Path,
    worlds: list[int],
    arms: list[str],
    rgb_only: str = "none",
    seed: int = 0,
    question_types: tuple[str, ...] = DEFAULT_TYPES,
) -> dict:
    summary = {"worlds": worlds, "seed": seed, "arms": {}, "against_rgb_only": {}}
    for arm in arms:
        by_type = {}
        for question_type in question_types:
            values, readable = [], []
            for world in worlds:
                results_file = evaluations / f"{arm}-seed{world}" / "results.json"
                if not results_file.exists():
                    raise SystemExit(f"No evaluation of {arm!r} on world {world}: {results_file} is missing.")
                metrics = json.loads(results_file.read_text())["metrics"]["per_type"][question_type]
                values.append(metrics["delta1"])
                readable.append(metrics["num_parseable"] / metrics["num_samples"])
            by_type[question_type] = {
                "delta1_per_world": values,
                "mean": statistics.mean(values),
                "std": statistics.stdev(values) if len(values) > 1 else None,
                "readable_min": min(readable),
                "committed": committed_delta1(experiment, arm, seed, question_type),
                "seed_std": seed_std(experiment, arm, question_type),
            }
        summary["arms"][arm] = by_type
    for arm in arms:
        if arm in (rgb_only, "constant") or rgb_only not in summary["arms"]:
            continue
        summary["against_rgb_only"][arm] = {}
        for question_type in question_types:
            ours = summary["arms"][arm][question_type]["delta1_per_world"]
            theirs = summary["arms"][rgb_only][question_type]["delta1_per_world"]
            differences = [a - b for a, b in zip(ours, theirs)]
            summary["against_rgb_only"][arm][question_type] = {
                "per_world": differences,
                "mean": statistics.mean(differences),
                "std": statistics.stdev(differences) if len(differences) > 1 else None,
            }
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", required=True, type=Path, help="the experiment's results.json")
    parser.add_argument("--evaluations", required=True, type=Path, help="folder of ARM-seedWORLD evaluations")
    parser.add_argument("--worlds", required=True, type=int, nargs="+", help="the fresh test worlds' seeds")
    parser.add_argument("--arms", nargs="+", default=["constant", "none", "add"])
    parser.add_argument("--rgb-only", default="none", help="the arm every depth arm is compared with")
    parser.add_argument("--seed", type=int, default=0, help="the experiment seed the committed models are of")
    parser.add_argument("--question-types", nargs="+", default=list(DEFAULT_TYPES))
    parser.add_argument("--out", required=True, type=Path, help="the summary's JSON file")
    args = parser.parse_args(argv)
    summary = summarise(
        json.loads(args.experiment.read_text()),
        args.evaluations,
        args.worlds,
        args.arms,
        rgb_only=args.rgb_only,
        seed=args.seed,
        question_types=tuple(args.question_types),
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(args.out, json.dumps(summary, indent=2) + "\n")
    for arm, by_type in summary["arms"].items():
        cells = []
        for question_type, row in by_type.items():
            std = "" if row["std"] is None else f" ± {row['std']:.3f}"
            seed_spread = "" if row["seed_std"] is None else f", seed std {row['seed_std']:.3f}"
            cells.append(f"{question_type} {row['mean']:.3f}{std} (committed {row['committed']:.3f}{seed_spread})")
        print(f"{arm}: " + "; ".join(cells))
    for arm, by_type in summary["against_rgb_only"].items():
        cells = [f"{question_type} {row['mean']:+.3f}" for question_type, row in by_type.items()]
        print(f"{arm} minus {args.rgb_only}: " + "; ".join(cells))
    print(f"wrote {args.out}")
    return summary


if __name__ == "__main__":
    main()
