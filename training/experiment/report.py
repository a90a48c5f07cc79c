"""The experiment's report: per-run summaries, mean ± std over seeds, the depth arms against RGB-only, tables and plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from configuration_depth import DEPTH_FUSIONS, RGB_ONLY_FUSION
from training.answers import readable_rate
from training.experiment.presets import METRIC_QUESTION_TYPES


# The report's name for the stage-0 base, evaluated before any spatial fine-tuning.
STAGE0_ARM = "stage0"
# The report's name for the constant baseline (training.controls: one answer per type, fitted on training answers).
CONSTANT_ARM = "constant"
# Suffixes of a depth arm's controls: evaluated without depth, with another scene's depth, and the capacity-matched
# control trained (and read) on uninformative depth.
# The runner names its control runs with these, the report reads them back.
DEPTH_REMOVED_SUFFIX, DEPTH_SHUFFLED_SUFFIX, CAPACITY_CONTROL_SUFFIX = "-nodepth", "-shuffled", "-uninformative"
CONTROL_SUFFIXES = (DEPTH_REMOVED_SUFFIX, DEPTH_SHUFFLED_SUFFIX, CAPACITY_CONTROL_SUFFIX)


def own_evaluation_labels(arm: str, seed: int) -> list[str]:
    """The evaluations of one trained run: itself, then (a depth arm's) with depth removed and with another scene's."""
    return [f"{arm}{suffix}-seed{seed}" for suffix in ("", DEPTH_REMOVED_SUFFIX, DEPTH_SHUFFLED_SUFFIX)]


def summary_of(result: dict) -> dict:
    """Per question type: δ₁, AbsRel, within-2x (metric types) or accuracy (the others), and the counts behind them."""
    keep = ("num_samples", "num_parseable", "num_unparseable", "delta1", "abs_rel", "within_2x", "accuracy")
    metrics = result["metrics"]
    per_type = {name: {key: values.get(key) for key in keep} for name, values in metrics["per_type"].items()}
    # How many different answers the model gave per type: 1 means it answers from the prior, not from the image.
    for question_type, answers in _answers_by_type(result.get("predictions", [])).items():
        per_type[question_type]["distinct_answers"] = len(set(answers))
    # Whether metric answers follow the truth at all (δ₁ alone also rewards a well-chosen constant).
    for question_type, correlation in log_correlations(result.get("predictions", [])).items():
        per_type[question_type]["log_correlation"] = correlation
    # The share of answers that could be read at all (a format failure is not a wrong belief about space).
    for values in per_type.values():
        values["readable"] = readable_rate(values)
    overall = {key: metrics["overall"].get(key) for key in keep}
    return {"per_type": per_type, "overall": overall, "depth_source": result.get("depth_source")}


def _answers_by_type(predictions: list[dict]) -> dict[str, list[str]]:
    answers: dict[str, list[str]] = {}
    for prediction in predictions:
        answers.setdefault(prediction["question_type"], []).append(str(prediction.get("prediction", "")).strip())
    return answers


def log_correlations(predictions: list[dict]) -> dict[str, float]:
    """Per metric question type: the Pearson correlation of log predicted and log true values over the answers that
    parsed to a positive number (NaN when fewer than 3 did, or when either side is constant)."""
    pairs: dict[str, list[tuple[float, float]]] = {}
    for prediction in predictions:
        parsed, truth = prediction.get("parsed"), prediction.get("answer_value")
        if prediction.get("kind") != "metric" or not prediction.get("parse_ok") or truth is None:
            continue
        if isinstance(parsed, (int, float)) and parsed > 0 and truth > 0:
            pairs.setdefault(prediction["question_type"], []).append((math.log(parsed), math.log(truth)))
    correlations = {}
    for question_type, values in pairs.items():
        predicted, true = np.array(values).T
        constant = len(values) < 3 or predicted.std() == 0 or true.std() == 0
        correlations[question_type] = float("nan") if constant else float(np.corrcoef(predicted, true)[0, 1])
    return correlations


def aggregate(runs: list[dict]) -> dict:
    """Mean and sample standard deviation (ddof 1; 0 for a single seed) over seeds of each arm's per-type metrics."""
    arms: dict[str, list[dict]] = {}
    for run in runs:
        arms.setdefault(run["arm"], []).append(run)
    summary = {}
    for arm, arm_runs in arms.items():
        per_type = {}
        for question_type in arm_runs[0]["per_type"]:
            values = {}
            for key in ("delta1", "abs_rel", "within_2x", "accuracy", "log_correlation", "readable"):
                samples = [r["per_type"][question_type].get(key) for r in arm_runs]
                samples = [v for v in samples if v is not None and not math.isnan(v)]
                if samples:
                    std = float(np.std(samples, ddof=1)) if len(samples) > 1 else 0.0
                    values[key] = {"mean": float(np.mean(samples)), "std": std, "n": len(samples)}
            counts = [r["per_type"][question_type].get("num_samples") for r in arm_runs]
            if all(counts):
                values["questions"] = int(min(counts))  # per run: what a score's sampling noise depends on
            per_type[question_type] = values
        summary[arm] = per_type
    return summary


# Issue 14's bar: on both of these, a depth arm's mean δ₁ is at least this many times RGB-only's, and the difference
# of the means exceeds twice the larger of the two seed standard deviations.
DEPTH_BAR_QUESTION_TYPES = ("distance_to_camera", "point_depth")
DEPTH_BAR_RATIO = 1.2


def against_rgb_only(aggregate_: dict, baseline: str = RGB_ONLY_FUSION) -> list[dict]:
    """Each depth arm measured on 2+ seeds against `baseline` on `DEPTH_BAR_QUESTION_TYPES`: the ratio of the mean
    δ₁, the difference of the means, twice the larger seed std, and whether the bar is met on that type."""
    rows = []
    for arm, per_type in aggregate_.items():
        if not is_depth_arm(arm) or baseline not in aggregate_:
            continue
        for question_type in DEPTH_BAR_QUESTION_TYPES:
            depth, rgb = per_type.get(question_type, {}).get("delta1"), aggregate_[baseline].get(question_type, {})
            rgb = rgb.get("delta1")
            if depth is None or rgb is None or min(depth["n"], rgb["n"]) < 2:
                continue
            difference, noise = depth["mean"] - rgb["mean"], 2 * max(depth["std"], rgb["std"])
            ratio = depth["mean"] / rgb["mean"] if rgb["mean"] > 0 else float("inf")
            rows.append({
                "arm": arm, "question_type": question_type, "ratio": ratio, "difference": difference,
                "twice_larger_std": noise, "seeds": min(depth["n"], rgb["n"]),
                "meets_bar": ratio >= DEPTH_BAR_RATIO and difference > noise,
            })  # fmt: skip
    return rows


# Issue 21's bar, for a depth arm on 3 seeds of the whole pipeline: on both DEPTH_BAR_QUESTION_TYPES δ₁ at least
# LEVEL, at least RATIO times the better of RGB-only and the constant, the difference to each more than twice the
# larger seed std; "closer" accuracy at least CLOSER; every type readable at least READABLE.
PROTOCOL_BAR = {"level": 0.8, "ratio": 1.5, "closer": 0.85, "readable": 0.95}


def is_depth_arm(arm: str) -> bool:
    """A trained arm that reads depth (not RGB-only, not a baseline, not a control): not a fusion of the table without
    depth (the "image" arm reads depth too, drawn as a second picture)."""
    rgb_only = arm in DEPTH_FUSIONS and not DEPTH_FUSIONS[arm].has_depth
    return not rgb_only and arm not in (STAGE0_ARM, CONSTANT_ARM) and not arm.endswith(CONTROL_SUFFIXES)


def against_baselines(aggregate_: dict) -> list[dict]:
    """Each depth arm against the better of RGB-only (`none`) and the constant, per bar type: the PROTOCOL_BAR."""
    rows = []
    none, constant = aggregate_.get(RGB_ONLY_FUSION, {}), aggregate_.get(CONSTANT_ARM, {})
    for arm, per_type in aggregate_.items():
        if not is_depth_arm(arm) or not none:
            continue
        for question_type in DEPTH_BAR_QUESTION_TYPES:
            depth = per_type.get(question_type, {}).get("delta1")
            rgb = none.get(question_type, {}).get("delta1")
            fixed = constant.get(question_type, {}).get("delta1")
            if depth is None or rgb is None:
                continue
            best = max(rgb["mean"], fixed["mean"] if fixed else 0.0)
            noise = 2 * max(depth["std"], rgb["std"])
            difference_rgb = depth["mean"] - rgb["mean"]
            difference_constant = depth["mean"] - fixed["mean"] if fixed else None
            ratio = depth["mean"] / best if best > 0 else float("inf")
            rows.append({
                "arm": arm, "question_type": question_type, "delta1": depth["mean"], "std": depth["std"],
                "rgb_only": rgb["mean"], "constant": fixed["mean"] if fixed else None, "ratio_to_best": ratio,
                "difference_rgb_only": difference_rgb, "difference_constant": difference_constant,
                "twice_larger_std": noise, "seeds": min(depth["n"], rgb["n"]),
                "meets_bar": bool(
                    depth["mean"] >= PROTOCOL_BAR["level"] and ratio >= PROTOCOL_BAR["ratio"]
                    and difference_rgb > noise and (difference_constant is None or difference_constant > noise)
                    and min(depth["n"], rgb["n"]) >= 3
                ),
            })  # fmt: skip
    return rows


def sampling_noise(score: dict, base: dict, values: dict, base_values: dict) -> float:
    """The standard error of the difference of two mean scores from the questions alone (binomial, each run's
    questions), the noise floor of a comparison whose seeds are too few to show their spread."""
    if "questions" not in values or "questions" not in base_values:
        return 0.0
    variance = sum(
        m["mean"] * (1 - m["mean"]) / (entry["questions"] * m["n"])
        for m, entry in ((score, values), (base, base_values))
    )
    return math.sqrt(max(variance, 0.0))


def forgetting(aggregate_: dict) -> list[dict]:
    """Per trained arm and question type: its mean against the stage-0 base's (δ₁ or accuracy), and whether it is
    below beyond noise (twice the larger seed std, or twice the questions' own sampling error where that is larger,
    as with one seed); and its readable-answer rate against PROTOCOL_BAR["readable"]."""
    rows = []
    stage0 = aggregate_.get(STAGE0_ARM, {})
    for arm, per_type in aggregate_.items():
        # Evaluation-time controls are not trained models; the capacity control is, and must not forget either.
        if arm in (STAGE0_ARM, CONSTANT_ARM) or arm.endswith((DEPTH_REMOVED_SUFFIX, DEPTH_SHUFFLED_SUFFIX)):
            continue
        for question_type, values in per_type.items():
            key = "delta1" if question_type in METRIC_QUESTION_TYPES else "accuracy"
            score, base = values.get(key), stage0.get(question_type, {}).get(key)
            readable = values.get("readable")
            below = (
                base is not None
                and score is not None
                and score["mean"] - base["mean"]
                < -2 * max(score["std"], base["std"], sampling_noise(score, base, values, stage0[question_type]))
            )
            rows.append({
                "arm": arm, "question_type": question_type, "metric": key,
                "score": score["mean"] if score else None, "stage0": base["mean"] if base else None,
                "below_stage0": bool(below), "readable": readable["mean"] if readable else None,
                "readable_ok": bool(readable and readable["mean"] >= PROTOCOL_BAR["readable"]),
            })  # fmt: skip
    return rows


def _cell(value: dict | None) -> str:
    return "-" if value is None else f"{value['mean']:.3f} ± {value['std']:.3f}"


def card_summary(aggregate_: dict, arm: str, evaluation_set: str, experiment: str) -> str:
    """The Training section of a shipped model's card: how it was trained, and its bar types' δ₁ beside the constant,
    RGB-only and (for a depth arm) its depth controls, mean ± std over the experiment's seeds."""
    seeds = next(iter(aggregate_[arm].values()))["delta1"]["n"] if aggregate_.get(arm) else 0
    lines = [
        f"Trained from scratch on the project's rendered RGB-D world as one arm of the experiment `{experiment}` "
        "(`python -m training.experiment`: a small stand-in for a pretrained Qwen2.5-VL, 2-core CPU): stage 0 on "
        "RGB, the depth encoder aligned to the RGB tower, then stage 2 on all 12 question types. This is that run's seed-0 model. δ₁ on its "
        f"{evaluation_set} set (rendered like training, read once), mean ± std over {seeds} whole-pipeline seed(s):",
        "",
    ]
    columns = [(CONSTANT_ARM, "constant"), (RGB_ONLY_FUSION, "RGB-only"), (arm, f"this arm (`{arm}`)")]
    columns = columns if arm != RGB_ONLY_FUSION else [columns[0], columns[2]]
    if is_depth_arm(arm):
        columns += [
            (f"{arm}{DEPTH_REMOVED_SUFFIX}", "depth removed"),
            (f"{arm}{DEPTH_SHUFFLED_SUFFIX}", "another scene's depth"),
            (f"{arm}{CAPACITY_CONTROL_SUFFIX}", "trained on constant depth"),
        ]
    columns = [(name, title) for name, title in columns if name in aggregate_]
    lines += ["| δ₁ | " + " | ".join(title for _, title in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for question_type in DEPTH_BAR_QUESTION_TYPES:
        cells = [_cell(aggregate_[name].get(question_type, {}).get("delta1")) for name, _ in columns]
        lines.append(f"| {question_type.replace('_', ' ')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def protocol_lines(results: dict) -> list[str]:
    """The protocol's tables: readable rates, the depth controls, the bar against both baselines, forgetting."""
    aggregate_ = results["aggregate"]
    arms, types = list(aggregate_), list(next(iter(aggregate_.values())))
    lines = ["", "Readable answers per question type (share of answers that parse; bar ≥ 0.95):", ""]
    lines += ["| question type | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
    for question_type in types:
        cells = []
        for arm in arms:
            value = aggregate_[arm].get(question_type, {}).get("readable")
            cells.append("-" if value is None else f"{value['mean']:.2f}")
        lines.append(f"| {question_type} | " + " | ".join(cells) + " |")
    controls = [arm for arm in arms if is_depth_arm(arm)]
    if controls:
        lines += [
            "",
            "Depth controls, δ₁ (a model that reads depth loses its gain without it or with another "
            "scene's; the capacity-matched control is trained and read on one constant depth map):",
            "",
        ]
        header = ["arm", "question type", "with depth", "depth removed", "another scene's depth", "uninformative"]
        lines += ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        for arm in controls:
            for question_type in DEPTH_BAR_QUESTION_TYPES:
                cells = [
                    _cell(aggregate_.get(arm + suffix, {}).get(question_type, {}).get("delta1"))
                    for suffix in ("", *CONTROL_SUFFIXES)
                ]
                lines.append(f"| {arm} | {question_type} | " + " | ".join(cells) + " |")
    bar = against_baselines(aggregate_)
    results["against_baselines"] = bar
    if bar:
        lines += [
            "",
            f"Depth arms against the better of RGB-only and the constant, δ₁ (bar: ≥ {PROTOCOL_BAR['level']}, "
            f"≥ {PROTOCOL_BAR['ratio']}x the better, each difference > 2x the larger seed std, 3 seeds):",
            "",
        ]
        lines += [
            "| arm | question type | seeds | δ₁ | RGB-only | constant | ratio | diff. RGB-only | diff. constant | "
            "2x larger std | bar met |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in bar:
            constant = "-" if row["constant"] is None else f"{row['constant']:.3f}"
            difference = "-" if row["difference_constant"] is None else f"{row['difference_constant']:+.3f}"
            lines.append(
                f"| {row['arm']} | {row['question_type']} | {row['seeds']} | {row['delta1']:.3f} | "
                f"{row['rgb_only']:.3f} | {constant} | {row['ratio_to_best']:.2f} | {row['difference_rgb_only']:+.3f} | "
                f"{difference} | {row['twice_larger_std']:.3f} | {'yes' if row['meets_bar'] else 'no'} |"
            )
    forgotten = forgetting(aggregate_)
    results["forgetting"] = forgotten
    flagged = [row for row in forgotten if row["below_stage0"] or not row["readable_ok"]]
    if forgotten:
        lines += [
            "",
            f"Forgetting: {len(flagged)} of {len(forgotten)} (arm, type) pairs are below the stage-0 base "
            "beyond noise (twice the seed std, or the questions' sampling error where larger) or under 95% readable"
            + (":" if flagged else "."),
            "",
        ]
        if flagged:
            lines += ["| arm | question type | metric | score | stage 0 | readable |", "|---|---|---|---|---|---|"]
            for row in flagged:
                score = "-" if row["score"] is None else f"{row['score']:.3f}"
                base = "-" if row["stage0"] is None else f"{row['stage0']:.3f}"
                readable = "-" if row["readable"] is None else f"{row['readable']:.2f}"
                lines.append(
                    f"| {row['arm']} | {row['question_type']} | {row['metric']} | {score} | {base} | {readable} |"
                )
    return lines


def write_report(results: dict, out: Path) -> None:
    """results.json, a markdown table (mean ± std over seeds) and a grouped bar chart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    aggregate_ = results["aggregate"]
    results["against_rgb_only"] = against_rgb_only(aggregate_)
    arms = list(aggregate_)
    types = list(next(iter(aggregate_.values())))
    lines = ["| question type | metric | " + " | ".join(arms) + " |", "|---|---|" + "---|" * len(arms)]
    for question_type in types:
        keys = ("delta1", "abs_rel") if question_type in METRIC_QUESTION_TYPES else ("accuracy",)
        for key in keys:
            cells = []
            for arm in arms:
                value = aggregate_[arm][question_type].get(key)
                cells.append("-" if value is None else f"{value['mean']:.3f} ± {value['std']:.3f}")
            lines.append(f"| {question_type} | {key} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Distinct answers per question type and run (1 = the same answer to every question of the type):")
    lines.append("")
    lines.append("| run | " + " | ".join(types) + " |")
    lines.append("|---|" + "---|" * len(types))
    for run in results["runs"]:
        counts = [str(run["per_type"].get(t, {}).get("distinct_answers", "-")) for t in types]
        lines.append(f"| {run['arm']}-seed{run['seed']} | " + " | ".join(counts) + " |")
    metric_types = [t for t in types if t in METRIC_QUESTION_TYPES]
    lines += ["", "Correlation of log answer and log truth per metric type and run (0: no relation to the truth):", ""]
    lines += ["| run | " + " | ".join(metric_types) + " |", "|---|" + "---|" * len(metric_types)]
    for run in results["runs"]:
        cells = [run["per_type"].get(t, {}).get("log_correlation") for t in metric_types]
        cells = ["-" if value is None or math.isnan(value) else f"{value:.2f}" for value in cells]
        lines.append(f"| {run['arm']}-seed{run['seed']} | " + " | ".join(cells) + " |")
    # Issue 14's bar (against RGB-only alone), for reports without a constant arm; the protocol's table supersedes it.
    if results["against_rgb_only"] and CONSTANT_ARM not in aggregate_:
        lines += [
            "",
            f"Depth arms against RGB-only (`none`), δ₁ (bar: ≥ {DEPTH_BAR_RATIO}x on "
            f"{' and '.join(DEPTH_BAR_QUESTION_TYPES)}, difference of the means > 2x the larger seed std):",
            "",
            "| arm | question type | seeds | ratio | difference | 2x larger std | bar met |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in results["against_rgb_only"]:
            lines.append(
                f"| {row['arm']} | {row['question_type']} | {row['seeds']} | {row['ratio']:.2f} | "
                f"{row['difference']:+.3f} | {row['twice_larger_std']:.3f} | {'yes' if row['meets_bar'] else 'no'} |"
            )
    lines += protocol_lines(results)
    seeds = sorted({run["seed"] for run in results["runs"]})
    whole = results.get("preset", {}).get("whole_pipeline_seeds")
    lines.append("")
    lines.append(
        f"Evaluation set: {results.get('evaluation_set', 'test')}. Mean ± sample standard deviation over seeds {seeds} "
        + (
            "(each seed its own stage 0, alignment and stage 2). "
            if whole
            else "(SFT seed; stage 0 and alignment are shared). "
        )
        + f"`{STAGE0_ARM}`: the base before spatial fine-tuning; `{CONSTANT_ARM}`: one answer per type fitted on the "
        "training answers."
    )
    if results.get("wall_s") is not None:
        lines.append(f"Wall time of this invocation: {results['wall_s']:.0f} s.")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print("\n".join(lines))

    figure, axis = plt.subplots(figsize=(max(8, 1.1 * len(types)), 4.5), dpi=120)
    width = 0.8 / len(arms)
    for index, arm in enumerate(arms):
        means, errors = [], []
        for question_type in types:
            key = "delta1" if question_type in METRIC_QUESTION_TYPES else "accuracy"
            value = aggregate_[arm][question_type].get(key) or {"mean": np.nan, "std": 0}
            means.append(value["mean"])
            errors.append(value["std"])
        axis.bar(np.arange(len(types)) + index * width, means, width, yerr=errors, capsize=2, label=arm)
    axis.set_xticks(np.arange(len(types)) + width * (len(arms) - 1) / 2, types, rotation=35, ha="right")
    axis.set_ylabel("δ₁ (metric types) / accuracy (others)")
    axis.set_ylim(0, 1)
    axis.set_title(
        f"Depth vs RGB-only on the rendered {results.get('evaluation_set', 'test')} set (mean ± std over seeds)"
    )
    axis.legend(ncols=min(len(arms), 4), fontsize=8)
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(out / "results.png")
    plt.close(figure)


def write_sft_loss_curves(out: Path) -> Path | None:
    """Every stage-2 run's training loss in one picture (`sft_loss_curves.png`, one colour per arm, one line per seed)
    and the curves behind it (`sft_loss_curves.json`); None before any run has finished."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {}
    for history_file in sorted((out / "sft").glob("*-seed*/loss_curve.json")):
        history = json.loads(history_file.read_text())
        curves[history_file.parent.name] = [[entry["step"], entry["loss"]] for entry in history if "loss" in entry]
    if not curves:
        return None
    (out / "sft_loss_curves.json").write_text(json.dumps(curves, indent=1) + "\n")
    arms = sorted({name.rpartition("-seed")[0] for name in curves})
    figure, axis = plt.subplots(figsize=(7, 4), dpi=120)
    for index, arm in enumerate(arms):
        seeds = [points for name, points in curves.items() if name.rpartition("-seed")[0] == arm]
        for seed_index, points in enumerate(seeds):  # one legend entry per arm, whatever its number of seeds
            label = arm if seed_index == 0 else None
            axis.plot(*zip(*points), color=f"C{index % 10}", alpha=0.8, linewidth=1.2, label=label)
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("train loss (nats per answer token)")
    axis.set_title("Stage 2 spatial SFT, every arm and seed")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(out / "sft_loss_curves.png")
    plt.close(figure)
    return out / "sft_loss_curves.png"
