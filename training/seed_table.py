"""Per-type mean ± std over seeds of several arms' evaluations, side by side, with each run's readable rate.

    python -m training.seed_table --arm none='runs/rank/test-none-seed*' --arm add='runs/rank/test-add-seed*' \\
        --types closer depth_order --out results/rank_decoding/test

Each `--arm LABEL=GLOB` names the `training.evaluate` result folders of one arm (one per seed; a glob or a folder).
The headline metric of a type is δ₁ for metric types and accuracy otherwise, as in `training.evaluate`'s tables; mean
and spread are the experiment report's (`training.experiment.report.aggregate`: the sample std over the arm's seeds,
none shown for one seed). Writes `OUT.md` (the table) and `OUT.json` (every
value, the folders each mean is over, and the decoding each run used).
"""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

from training.dataset_files import write_atomically
from training.evaluate import METRIC_NAMES, question_type_order
from training.experiment.report import aggregate, summary_of


def arm_summary(label: str, folders: list[Path], types: list[str] | None) -> dict:
    """The experiment report's mean ± std over `folders` (its `summary_of` and `aggregate`), per type of `types`."""
    results = [json.loads((folder / "results.json").read_text(encoding="utf-8")) for folder in folders]
    runs = [{"arm": label, "per_type": summary_of(result)["per_type"]} for result in results]
    shared = set.intersection(*(set(run["per_type"]) for run in runs))
    wanted = types or question_type_order(shared)
    missing = [t for t in wanted if t not in shared]
    if missing:
        raise SystemExit(f"{', '.join(missing)} not in every run of {label} ({[str(f) for f in folders]}).")
    per_type = aggregate(runs)[label]
    return {
        "folders": [str(f) for f in folders],
        "decoding": sorted({result.get("decoding", "greedy") for result in results}),
        "per_type": {t: per_type[t] for t in wanted},
        "readable": {t: [run["per_type"][t]["readable"] for run in runs] for t in wanted},
    }


def headline_metric(values: dict) -> str:
    """δ₁ for metric types, accuracy otherwise (as `training.evaluate`'s tables)."""
    return "delta1" if "delta1" in values else "accuracy"


def markdown(arms: dict[str, dict]) -> str:
    labels = list(arms)
    types = list(arms[labels[0]]["per_type"])
    lines = [
        "| type (metric) | " + " | ".join(f"{label} (n={len(arms[label]['folders'])})" for label in labels) + " |",
        "|---|" + "---:|" * len(labels),
    ]
    for question_type in types:
        metric = headline_metric(arms[labels[0]]["per_type"][question_type])
        cells = []
        for label in labels:
            score = arms[label]["per_type"][question_type][metric]
            spread = f" ± {score['std']:.3f}" if score["n"] > 1 else ""
            readable = arms[label]["readable"][question_type]
            low, high = min(readable), max(readable)
            rate = f"{low:.0%}" if low == high else f"{low:.0%}–{high:.0%}"
            cells.append(f"{score['mean']:.3f}{spread} ({rate} readable)")
        lines.append(f"| {question_type} ({METRIC_NAMES[metric]}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_arm(text: str) -> tuple[str, list[Path]]:
    label, separator, pattern = text.partition("=")
    if not separator or not label or not pattern:
        raise SystemExit(f"--arm {text!r}: write LABEL=GLOB (the arm's result folders, one per seed).")
    folders = sorted(Path(p) for p in glob.glob(pattern) if (Path(p) / "results.json").exists())
    if not folders:
        raise SystemExit(f"--arm {label}: no result folder (with a results.json) matches {pattern!r}.")
    return label, folders


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arm", action="append", required=True, help="LABEL=GLOB of its result folders")
    parser.add_argument("--types", nargs="+", default=None, help="question types (default: those every run has)")
    parser.add_argument("--out", required=True, type=Path, help="path stem: writes OUT.md and OUT.json")
    args = parser.parse_args(argv)
    arms = {}
    for text in args.arm:
        label, folders = parse_arm(text)
        if label in arms:
            raise SystemExit(f"--arm {label} given twice.")
        arms[label] = arm_summary(label, folders, args.types)
    table = markdown(arms)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(args.out.with_suffix(".md"), table + "\n")
    write_atomically(args.out.with_suffix(".json"), json.dumps(arms, indent=2, ensure_ascii=False) + "\n")
    print(table)
    return arms


if __name__ == "__main__":
    main()
