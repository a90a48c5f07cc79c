"""`training.fresh_worlds`: committed models on several fresh test worlds, beside the experiment's own numbers."""

import json
import statistics

import pytest

from training import fresh_worlds


def evaluation(folder, delta1: dict[str, float], parseable: int = 500):
    folder.mkdir(parents=True)
    per_type = {t: {"delta1": v, "num_parseable": parseable, "num_samples": 500} for t, v in delta1.items()}
    (folder / "results.json").write_text(json.dumps({"metrics": {"per_type": per_type}}))


def experiment() -> dict:
    run = lambda arm, seed, d, p: {"arm": arm, "seed": seed, "per_type": {  # noqa: E731
        "distance_to_camera": {"delta1": d}, "point_depth": {"delta1": p}}}  # fmt: skip
    spread = lambda d, p: {"distance_to_camera": {"delta1": {"mean": 0, "std": d, "n": 3}},  # noqa: E731
                           "point_depth": {"delta1": {"mean": 0, "std": p, "n": 3}}}  # fmt: skip
    return {
        "runs": [
            run("constant", 0, 0.42, 0.33),
            run("none", 0, 0.38, 0.25),
            run("none", 1, 0.3, 0.3),
            run("add", 0, 0.38, 0.40),
            run("add", 1, 0.1, 0.1),
        ],  # fmt: skip
        "aggregate": {"none": spread(0.014, 0.03), "add": spread(0.039, 0.088)},
    }


def test_each_arm_is_summarised_over_the_worlds_beside_its_committed_seed(tmp_path):
    worlds = {"constant": [(0.44, 0.33), (0.43, 0.31)], "none": [(0.34, 0.30), (0.35, 0.29)],
              "add": [(0.36, 0.45), (0.35, 0.42)]}  # fmt: skip
    for arm, values in worlds.items():
        for world, (distance, point) in zip((2, 3), values):
            evaluation(tmp_path / f"{arm}-seed{world}", {"distance_to_camera": distance, "point_depth": point}, 490)
    out = tmp_path / "summary.json"
    (tmp_path / "e.json").write_text(json.dumps(experiment()))
    argv = ["--experiment", str(tmp_path / "e.json"), "--evaluations", str(tmp_path), "--worlds", "2", "3"]
    summary = fresh_worlds.main([*argv, "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(summary))
    add = summary["arms"]["add"]["point_depth"]
    assert add["delta1_per_world"] == [0.45, 0.42]
    assert add["mean"] == pytest.approx(0.435) and add["std"] == pytest.approx(statistics.stdev([0.45, 0.42]))
    assert (add["committed"], add["seed_std"], add["readable_min"]) == (0.40, 0.088, 0.98)  # seed 0's, not seed 1's
    constant = summary["arms"]["constant"]["distance_to_camera"]
    assert (constant["committed"], constant["seed_std"]) == (0.42, None)  # one run: no seed spread
    gain = summary["against_rgb_only"]["add"]["point_depth"]
    assert gain["per_world"] == pytest.approx([0.15, 0.13])
    assert set(summary["against_rgb_only"]) == {"add"}  # neither the constant nor RGB-only against itself


def test_a_missing_evaluation_or_run_is_named(tmp_path):
    (tmp_path / "e.json").write_text(json.dumps(experiment()))
    argv = ["--experiment", str(tmp_path / "e.json"), "--evaluations", str(tmp_path), "--worlds", "2"]
    with pytest.raises(SystemExit, match="No evaluation of 'constant' on world 2"):
        fresh_worlds.main([*argv, "--out", str(tmp_path / "s.json")])
    evaluation(tmp_path / "concat-seed2", {"distance_to_camera": 0.3, "point_depth": 0.3})
    with pytest.raises(SystemExit, match="no run of arm 'concat' at seed 0"):
        fresh_worlds.main([*argv, "--arms", "concat", "--out", str(tmp_path / "s.json")])
