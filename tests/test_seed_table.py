"""`training.seed_table`: mean ± std over seeds of result folders, with readable rates, as the experiment report
computes them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from training import evaluate, seed_table
from training.benchmarks import SpatialSample


def write_run(folder, closer_correct: list[bool], metric_predictions: list[str], decoding="rank"):
    """A results.json of 'closer' questions (right where `closer_correct`) and point-depth questions of truth 2 m."""
    samples, predictions = [], []
    for index, right in enumerate(closer_correct):
        samples.append(
            SpatialSample(f"s{index}/0", "Which is nearer?", "closer", "red cone", choices=["red cone", "blue cube"])
        )
        predictions.append("red cone" if right else "blue cube")
    for index, prediction in enumerate(metric_predictions):
        samples.append(SpatialSample(f"m{index}/0", "How deep?", "point_depth", "2.00 m", 2.0))
        predictions.append(prediction)
    results = evaluate.build_results(samples, predictions, decoding=decoding)
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(results))


def test_means_stds_and_readable_rates_over_seeds(tmp_path):
    write_run(tmp_path / "a-seed0", [True, True, False, False], ["2 m", "5 m"])
    write_run(tmp_path / "a-seed1", [True, True, True, False], ["2.1 m", "what"])
    write_run(tmp_path / "b-seed0", [True, False, False, False], ["9 m", "2 m"], decoding="greedy")
    document = seed_table.main(
        ["--arm", f"a={tmp_path}/a-seed*", "--arm", f"b={tmp_path / 'b-seed0'}", "--out", str(tmp_path / "table")]
    )
    arms = document["arms"]
    closer = arms["a"]["per_type"]["closer"]["accuracy"]
    assert closer["mean"] == pytest.approx(0.625) and closer["std"] == pytest.approx(np.std([0.5, 0.75], ddof=1))
    depth = arms["a"]["per_type"]["point_depth"]["delta1"]
    assert (depth["mean"], depth["n"]) == (0.5, 2)
    assert arms["a"]["readable"]["point_depth"] == [1.0, 0.5]  # "what" is not a length
    assert arms["a"]["decoding"] == ["rank"] and arms["b"]["decoding"] == ["greedy"]
    table = (tmp_path / "table.md").read_text()
    assert "| closer (accuracy) | 0.625 ± 0.177 (100% readable) | 0.250 (100% readable) |" in table
    assert "| point_depth (δ₁) | 0.500 ± 0.000 (50%–100% readable) | 0.500 (100% readable) |" in table
    assert json.loads((tmp_path / "table.json").read_text()) == json.loads(json.dumps(document))


def test_paired_differences_match_arms_seed_by_seed(tmp_path):
    write_run(tmp_path / "none-seed0", [True, False, False, False], ["2 m"])
    write_run(tmp_path / "none-seed1", [True, True, True, False], ["2 m"])
    write_run(tmp_path / "add-seed1", [True, True, True, True], ["2 m"])  # paired by the seed in its name
    write_run(tmp_path / "add-seed0", [True, True, False, False], ["9 m"])
    write_run(tmp_path / "one-seed0", [True, True, True, True], ["2 m"])
    document = seed_table.main(
        ["--arm", f"none={tmp_path}/none-seed*", "--arm", f"add={tmp_path}/add-seed*", "--arm", f"one={tmp_path}/one*"]
        + ["--paired-against", "none", "--out", str(tmp_path / "table")]
    )
    closer = document["paired"]["add"]["closer"]
    assert closer["values"] == pytest.approx([0.25, 0.25]) and closer["std"] == pytest.approx(0.0)
    assert document["paired"]["add"]["point_depth"]["values"] == pytest.approx([-1.0, 0.0])
    assert document["paired"]["one"] is None  # one seed against two: no pairing
    assert "| closer | +0.250 ± 0.000 (+0.250, +0.250) |" in (tmp_path / "table.md").read_text()
    with pytest.raises(SystemExit, match="--paired-against x: no such --arm"):
        seed_table.main(
            ["--arm", f"none={tmp_path}/none-seed*", "--paired-against", "x", "--out", str(tmp_path / "t")]
        )


def test_bad_arms_are_refused(tmp_path):
    write_run(tmp_path / "a-seed0", [True], ["2 m"])
    with pytest.raises(SystemExit, match="write LABEL=GLOB"):
        seed_table.main(["--arm", "nolabel", "--out", str(tmp_path / "t")])
    with pytest.raises(SystemExit, match="no result folder .* matches"):
        seed_table.main(["--arm", f"a={tmp_path}/zzz*", "--out", str(tmp_path / "t")])
    with pytest.raises(SystemExit, match="given twice"):
        seed_table.main(["--arm", f"a={tmp_path}/a*", "--arm", f"a={tmp_path}/a*", "--out", str(tmp_path / "t")])
    with pytest.raises(SystemExit, match="count not in every run"):
        seed_table.main(["--arm", f"a={tmp_path}/a*", "--types", "count", "--out", str(tmp_path / "t")])
