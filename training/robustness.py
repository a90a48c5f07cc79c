"""What imperfect depth costs (issue 22): a depth model evaluated on every corruption of `training.depth_corruptions`,
beside its clean-depth score and an RGB-only model's.

    python -m training.robustness --model runs/sft-add/merged --rgb-only-model runs/sft-none/merged \\
        --data data/world_test --out runs/robustness/add

runs `python -m training.evaluate run` into `OUT/rgb-only`, `OUT/clean` and `OUT/<corruption>` (one per name of
`--corruptions`, default all, each seeded by `--corruption-seed` and the question's id, so every model sees the same
corrupted map of each question), then writes `OUT/results.md` and `OUT/results.json`. Any other flag is handed to
every evaluation (`--limit 500`, `--question-types ...`, `--instruction ""`, `--batch-size 16`, `--device cuda`).
It resumes: an evaluation whose `results.json` exists (written last, atomically) is read back instead of run, after
checking that it is of the same model, data and corruption (and hole filling, with `--fill-depth-holes`).

The table (`robustness_table`): per question type, δ₁ (metric types) or accuracy (the others) for RGB-only, clean
depth and each corruption; the share of readable answers per run; and the issue's done-when checks
(`ROBUSTNESS_BARS`, `robustness_checks`): with `realistic` depth (noise and holes) δ₁ within 0.05 of clean depth on
distance to camera and point depth, and with `relative` depth accuracy still above RGB-only's on "closer" and depth
order.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from configuration_depth import RGB_ONLY_FUSION
from training.answers import readable_rate
from training.dataset_files import write_atomically
from training.depth_corruptions import CORRUPTION_NAMES, CORRUPTIONS
from training.evaluate import METRIC_NAMES, comparison_table, format_metric, question_type_order


RGB_ONLY_RUN, CLEAN_RUN = "rgb-only", "clean"


@dataclass(frozen=True)
class RobustnessBar:
    """One line of the issue's done-when: on each of `question_types`, the `corruption` run's `metric` is at least the
    `against` run's minus `tolerance` (`strictly`: above it by more than `tolerance`)."""

    corruption: str
    question_types: tuple[str, ...]
    metric: str
    against: str
    tolerance: float = 0.0
    strictly: bool = False

    def met(self, score: float, reference: float) -> bool:
        return score > reference + self.tolerance if self.strictly else score >= reference - self.tolerance

    def describe(self) -> str:
        if self.strictly:
            return f"with `{self.corruption}` depth {METRIC_NAMES[self.metric]} above {self.against}'s"
        return (
            f"with `{self.corruption}` depth {METRIC_NAMES[self.metric]} within {self.tolerance} of {self.against}'s"
        )


# Issue 22's done-when: with noise and holes at realistic levels, δ₁ within 0.05 of clean depth on distance to camera
# and point depth; with relative depth, accuracy still above RGB-only's on "closer" and depth order.
ROBUSTNESS_BARS = (
    RobustnessBar("realistic", ("distance_to_camera", "point_depth"), "delta1", CLEAN_RUN, tolerance=0.05),
    RobustnessBar("relative", ("closer", "depth_order"), "accuracy", RGB_ONLY_RUN, strictly=True),
)
# Flags the job sets itself for each evaluation, so none may be handed through.
OWN_EVALUATE_FLAGS = (
    "--model", "--data", "--out", "--label", "--no-depth", "--depth-override", "--depth-corruption",
    "--corruption-seed", "--fill-depth-holes",
)  # fmt: skip


# ---- the report -----------------------------------------------------------------------------------------------------
def _readable(results: dict, question_type: str) -> float | None:
    return readable_rate(results["metrics"]["per_type"].get(question_type))


def _headline(results: dict, question_type: str, key: str) -> float | None:
    return (results["metrics"]["per_type"].get(question_type) or {}).get(key)


def robustness_checks(clean: dict, rgb_only: dict, corrupted: dict[str, dict]) -> list[dict]:
    """The rows of `ROBUSTNESS_BARS` that the given runs can answer: one per bar and question type that both its
    corruption's run and its reference run have."""
    references = {CLEAN_RUN: clean, RGB_ONLY_RUN: rgb_only}
    rows = []
    for bar in ROBUSTNESS_BARS:
        if bar.corruption not in corrupted:
            continue
        for question_type in bar.question_types:
            score = _headline(corrupted[bar.corruption], question_type, bar.metric)
            reference = _headline(references[bar.against], question_type, bar.metric)
            if score is None or reference is None:
                continue
            rows.append({
                "corruption": bar.corruption, "question_type": question_type, "metric": bar.metric, "score": score,
                "against": bar.against, "reference": reference, "difference": score - reference,
                "met": bar.met(score, reference),
            })  # fmt: skip
    return rows


def robustness_table(clean: dict, rgb_only: dict, corrupted: dict[str, dict]) -> str:
    """Markdown: δ₁ per metric type and accuracy per other type (rows) for RGB-only, clean depth and each corruption
    (columns, in the order given), then the readable-answer rates, then the done-when checks."""
    labels = [RGB_ONLY_RUN, CLEAN_RUN, *corrupted]
    runs = [rgb_only, clean, *corrupted.values()]
    lines = [comparison_table(runs, labels), "", "Readable answers (share that parse; unreadable count as wrong):", ""]
    lines += ["| question type | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    types = question_type_order({t for run in runs for t in run["metrics"]["per_type"]})
    for question_type in types:
        lines.append(
            f"| {question_type} | " + " | ".join(format_metric(_readable(r, question_type), 2) for r in runs) + " |"
        )
    checks = robustness_checks(clean, rgb_only, corrupted)
    if checks:
        lines += [
            "",
            "Issue 22's bar: " + "; ".join(bar.describe() for bar in ROBUSTNESS_BARS) + ":",
            "",
            "| corruption | question type | metric | score | against | reference | difference | met |",
            "|---|---|---|---:|---|---:|---:|---|",
        ]
        for row in checks:
            lines.append(
                f"| {row['corruption']} | {row['question_type']} | {row['metric']} | {row['score']:.3f} | "
                f"{row['against']} | {row['reference']:.3f} | {row['difference']:+.3f} | {'yes' if row['met'] else 'no'} |"
            )
    lines += ["", "Corruptions (`training.depth_corruptions`):", ""]
    lines += [f"- `{name}`: {CORRUPTIONS[name].description}" for name in corrupted if name in CORRUPTIONS]
    return "\n".join(lines)


def robustness_summary(clean: dict, rgb_only: dict, corrupted: dict[str, dict]) -> dict:
    """The numbers of the table, for results.json: per run and question type its headline metric and readable rate."""

    def per_type(results: dict) -> dict:
        return {
            question_type: {
                "delta1": metrics["delta1"],
                "accuracy": metrics["accuracy"],
                "readable": _readable(results, question_type),
                "num_samples": metrics["num_samples"],
            }
            for question_type, metrics in results["metrics"]["per_type"].items()
        }

    runs = {RGB_ONLY_RUN: rgb_only, CLEAN_RUN: clean, **corrupted}
    return {
        "runs": {
            label: {"per_type": per_type(r), "depth_corruption": r.get("depth_corruption")}
            for label, r in runs.items()
        },
        "checks": robustness_checks(clean, rgb_only, corrupted),
    }


# ---- the job --------------------------------------------------------------------------------------------------------
def evaluation_args(args: argparse.Namespace, label: str, extra: list[str]) -> list[str]:
    """`training.evaluate` arguments of one run of the job."""
    model = args.rgb_only_model if label == RGB_ONLY_RUN else args.model
    flags = ["run", *extra, "--model", str(model), "--data", str(args.data), "--out", str(args.out / label)]
    flags += ["--label", label]
    if label not in (RGB_ONLY_RUN, CLEAN_RUN):
        flags += ["--depth-corruption", label, "--corruption-seed", str(args.corruption_seed)]
    if label != RGB_ONLY_RUN and args.fill_depth_holes is not None:
        flags += ["--fill-depth-holes", str(args.fill_depth_holes)]
    return flags


def requested_decoding(extra: list[str]) -> str:
    """The `--decoding` among the flags handed to every evaluation (evaluate's default when none is)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--decoding", default="greedy")
    return parser.parse_known_args(extra)[0].decoding


def check_existing(results: dict, args: argparse.Namespace, label: str, path: Path, extra: list[str]) -> None:
    """An evaluation read back must be the one this job would run: same model, data, corruption and decoding."""
    model = args.rgb_only_model if label == RGB_ONLY_RUN else args.model
    corruption = results.get("depth_corruption")
    expected = None if label in (RGB_ONLY_RUN, CLEAN_RUN) else (label, args.corruption_seed)
    found = None if corruption is None else (corruption["name"], corruption["seed"])
    problems = []
    if results.get("model") != str(model):
        problems.append(f"model {results.get('model')!r}, not {str(model)!r}")
    if results.get("data_path") != str(args.data):
        problems.append(f"data {results.get('data_path')!r}, not {str(args.data)!r}")
    if found != expected:
        problems.append(f"depth corruption {found}, not {expected}")
    decoding = requested_decoding(extra)
    if results.get("decoding", "greedy") != decoding:
        problems.append(f"decoding {results.get('decoding', 'greedy')!r}, not {decoding!r}")
    wanted_fill = None if label == RGB_ONLY_RUN else args.fill_depth_holes
    if wanted_fill is not None and results.get("fill_depth_holes") != wanted_fill:
        problems.append(f"fill_depth_holes {results.get('fill_depth_holes')!r}, not {wanted_fill}")
    if problems:
        raise SystemExit(f"{path} is another evaluation ({'; '.join(problems)}): remove it or choose another --out.")


def run(args: argparse.Namespace, extra: list[str]) -> dict:
    from training import evaluate

    for flag in extra:
        if flag.split("=", 1)[0] in OWN_EVALUATE_FLAGS:
            raise SystemExit(f"{flag} is set by training.robustness for each evaluation; do not pass it.")
    results = {}
    for label in (RGB_ONLY_RUN, CLEAN_RUN, *args.corruptions):
        path = args.out / label / "results.json"
        if path.exists():
            print(f"[robustness] {label}: done already ({path})")
            results[label] = json.loads(path.read_text(encoding="utf-8"))
            check_existing(results[label], args, label, path, extra)
            continue
        print(f"[robustness] {label}: evaluating", flush=True)
        results[label] = evaluate.main(evaluation_args(args, label, extra))
        if label == RGB_ONLY_RUN and results[label]["depth_fusion"] != RGB_ONLY_FUSION:
            raise SystemExit(
                f"--rgb-only-model {args.rgb_only_model} reads depth (depth_fusion "
                f"{results[label]['depth_fusion']!r}): give a model trained with --depth_fusion {RGB_ONLY_FUSION}."
            )
    corrupted = {name: results[name] for name in args.corruptions}
    table = robustness_table(results[CLEAN_RUN], results[RGB_ONLY_RUN], corrupted)
    title = f"# Imperfect depth: `{args.model}` against RGB-only `{args.rgb_only_model}` on `{args.data}`"
    write_atomically(args.out / "results.md", f"{title}\n\n{table}\n")
    summary = {
        "model": str(args.model),
        "rgb_only_model": str(args.rgb_only_model),
        "data": str(args.data),
        "corruption_seed": args.corruption_seed,
        "corruptions": {name: CORRUPTIONS[name].describe() for name in args.corruptions},
        "evaluate_flags": extra,
        **robustness_summary(results[CLEAN_RUN], results[RGB_ONLY_RUN], corrupted),
    }
    write_atomically(args.out / "results.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    print(table)
    print(f"\nwrote {args.out / 'results.md'} and {args.out / 'results.json'}")
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Other flags are handed to every `training.evaluate run`.",
        allow_abbrev=False,  # a prefix of one of evaluate's flags must reach evaluate, not match one of these
    )
    parser.add_argument("--model", required=True, type=Path, help="the depth model folder")
    parser.add_argument("--rgb-only-model", required=True, type=Path, help="the RGB-only model folder to compare to")
    parser.add_argument("--data", required=True, help="the evaluation set (as training.evaluate's --data)")
    parser.add_argument("--out", required=True, type=Path, help="folder of the runs and the table")
    parser.add_argument(
        "--corruptions", nargs="+", choices=CORRUPTION_NAMES, default=list(CORRUPTION_NAMES), help="default: all"
    )
    parser.add_argument("--corruption-seed", type=int, default=0, help="base seed of every corruption")
    parser.add_argument(
        "--fill-depth-holes",
        type=int,
        default=None,
        metavar="PASSES",
        help="the depth model's processor fills holes, PASSES rings deep (training.evaluate's flag, on the clean and "
        "corrupted runs; default: as the folder saved it)",
    )
    return parser


def main(argv: list[str] | None = None) -> dict:
    args, extra = build_parser().parse_known_args(argv)
    args.corruptions = list(dict.fromkeys(args.corruptions))
    return run(args, extra)


if __name__ == "__main__":
    main()
