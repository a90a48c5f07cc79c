"""Per-type mean ± std over seeds of several arms' evaluations, side by side, with each run's readable rate.

    python -m training.seed_table --arm none='runs/rank/test-none-seed*' --arm add='runs/rank/test-add-seed*' \\
        --types closer depth_order --out results/rank_decoding/test

Each `--arm LABEL=GLOB` names the `training.evaluate` result folders of one arm (one per seed; a glob or a folder).
The headline metric of a type is δ₁ for metric types and accuracy otherwise, as in `training.evaluate`'s tables; mean
and spread are the experiment report's (`training.experiment.report.aggregate`: the sample std over the arm's seeds,
none shown for one seed). `--paired-against LABEL` adds each arm minus that one seed by seed (folders named
`...-seedN`), which is the comparison whole-pipeline seeds support: a seed's arms share its stage 0. Writes `OUT.md` (the table) and `OUT.json` (every
value, the folders each mean is over, and the decoding each run used).
"""

from __future__ import annotations

import argparse
import glob
import json
import re
from pathlib import Path

import numpy as np

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
        "seeds": [seed_of(folder) for folder in folders],
        "decoding": sorted({result.get("decoding", "greedy") for result in results}),
        "per_type": {t: per_type[t] for t in wanted},
        "values": {t: [run["per_type"][t][headline_metric(per_type[t])] for run in runs] for t in wanted},
        "readable": {t: [run["per_type"][t]["readable"] for run in runs] for t in wanted},
    }


def seed_of(folder: Path) -> int | None:
    """The seed a result folder is named for (`...-seed2` -> 2), None without one."""
    match = re.search(r"seed(\d+)$", folder.name)
    return int(match.group(1)) if match else None


def paired_differences(arm: dict, reference: dict) -> dict[str, dict] | None:
    """Per type: mean and sample std of `arm` minus `reference`, seed by seed (the experiment's whole-pipeline seeds
    share a seed's stage 0 between arms, so a seed's two runs differ by the arm); None unless both ran the same
    seeds."""
    if None in arm["seeds"] or sorted(arm["seeds"]) != sorted(reference["seeds"]) or len(arm["seeds"]) < 2:
        return None
    differences = {}
    for question_type, values in arm["values"].items():
        if question_type not in reference["values"]:
            continue
        by_seed = dict(zip(reference["seeds"], reference["values"][question_type]))
        deltas = np.array([value - by_seed[seed] for seed, value in zip(arm["seeds"], values)])
        differences[question_type] = {
            "mean": float(deltas.mean()),
            "std": float(deltas.std(ddof=1)),
            "n": len(deltas),
            "values": deltas.tolist(),
        }
    return differences


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


def paired_markdown(arms: dict[str, dict], reference: str) -> str:
    """Each arm minus `reference`, seed by seed, as mean ± std of the differences (arms without the same seeds
    left out)."""
    pairs = {label: paired_differences(arm, arms[reference]) for label, arm in arms.items() if label != reference}
    pairs = {label: pair for label, pair in pairs.items() if pair}
    if not pairs:
        return ""
    types = list(next(iter(pairs.values())))
    lines = [
        "| type | " + " | ".join(f"{label} − {reference} (per seed)" for label in pairs) + " |",
        "|---|" + "---:|" * len(pairs),
    ]
    for question_type in types:
        cells = [
            f"{pair[question_type]['mean']:+.3f} ± {pair[question_type]['std']:.3f} ("
            + ", ".join(f"{value:+.3f}" for value in pair[question_type]["values"])
            + ")"
            for pair in pairs.values()
        ]
        lines.append(f"| {question_type} | " + " | ".join(cells) + " |")
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
    parser.add_argument(
        "--paired-against", default=None, metavar="LABEL", help="also each arm minus this one, seed by seed"
    )
    args = parser.parse_args(argv)
    arms = {}
    for text in args.arm:
        label, folders = parse_arm(text)
        if label in arms:
            raise SystemExit(f"--arm {label} given twice.")
        arms[label] = arm_summary(label, folders, args.types)
    table = markdown(arms)
    document = {"arms": arms}
    if args.paired_against is not None:
        if args.paired_against not in arms:
            raise SystemExit(f"--paired-against {args.paired_against}: no such --arm.")
        document["paired_against"] = args.paired_against
        document["paired"] = {
            label: paired_differences(arm, arms[args.paired_against])
            for label, arm in arms.items()
            if label != args.paired_against
        }
        paired = paired_markdown(arms, args.paired_against)
        table = f"{table}\n\n{paired}" if paired else table
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(args.out.with_suffix(".md"), table + "\n")
    write_atomically(args.out.with_suffix(".json"), json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    print(table)
    return document


if __name__ == "__main__":
    main()
