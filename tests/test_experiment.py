"""The experiment's bookkeeping: per-arm aggregation over seeds, the report files, and resource sharing."""

import json
import math
from dataclasses import replace

import pytest

from training.experiment import (
    PRESETS,
    RGB_ONLY_QUESTION_TYPES,
    Experiment,
    against_rgb_only,
    aggregate,
    log_correlations,
    summary_of,
    write_report,
)


def evaluation(delta1: float, accuracy: float, answers: list[str]) -> dict:
    """A `training.evaluate` results.json with one metric and one choice question type."""
    per_type = {
        "distance_to_camera": {"num_samples": 4, "num_parseable": 4, "num_unparseable": 0, "delta1": delta1},
        "closer": {"num_samples": 4, "num_parseable": 4, "num_unparseable": 0, "accuracy": accuracy},
    }
    predictions = [{"question_type": "distance_to_camera", "prediction": answer} for answer in answers]
    return {"metrics": {"per_type": per_type, "overall": {"num_samples": 8}}, "predictions": predictions}


def run(arm: str, seed: int, delta1: float, accuracy: float, answers: list[str]) -> dict:
    return {"arm": arm, "seed": seed, **summary_of(evaluation(delta1, accuracy, answers))}


def test_aggregate_gives_mean_and_sample_std_over_seeds():
    runs = [
        run("none", 0, 0.50, 0.25, ["1 m"] * 4),
        run("none", 1, 0.70, 0.75, ["1 m", "2 m", "2 m", "3 m"]),
        run("add", 0, 0.90, 1.00, ["1 m", "2 m", "3 m", "4 m"]),
    ]
    summary = aggregate(runs)
    delta1 = summary["none"]["distance_to_camera"]["delta1"]
    assert delta1["mean"] == pytest.approx(0.60)
    assert delta1["std"] == pytest.approx(0.1 * 2**0.5)  # sample std (ddof 1) of 0.5 and 0.7
    assert delta1["n"] == 2
    assert summary["none"]["closer"]["accuracy"]["mean"] == pytest.approx(0.50)
    assert summary["add"]["distance_to_camera"]["delta1"] == {"mean": 0.9, "std": 0.0, "n": 1}
    # The prior-collapse diagnostic: how many different answers a run gave per type.
    assert [r["per_type"]["distance_to_camera"]["distinct_answers"] for r in runs] == [1, 3, 4]


def test_report_files_hold_the_table_and_the_plot(tmp_path):
    runs = [run("none", 0, 0.50, 0.25, ["1 m"]), run("add", 0, 0.90, 1.00, ["2 m"])]
    results = {"runs": runs, "aggregate": aggregate(runs)}
    write_report(results, tmp_path)
    table = (tmp_path / "results.md").read_text()
    assert "| distance_to_camera | delta1 | 0.500 ± 0.000 | 0.900 ± 0.000 |" in table
    assert "| closer | accuracy | 0.250 ± 0.000 | 1.000 ± 0.000 |" in table
    assert json.loads((tmp_path / "results.json").read_text())["runs"][1]["arm"] == "add"
    assert (tmp_path / "results.png").read_bytes().startswith(b"\x89PNG")


def test_parallel_runs_share_the_cores_and_dataloader_workers(tmp_path, monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    preset = replace(PRESETS["small"], parallel_runs=4, dataloader_workers=3)
    experiment = Experiment(preset, tmp_path)
    assert experiment.threads(shared=True) == 4
    assert experiment.threads(shared=False) == 16
    assert experiment.dataloader_workers(shared=True) == 3
    assert experiment.dataloader_workers(shared=False) == 12  # a stage that runs alone gets every run's workers
    args = experiment.training_args(steps=100, lr=1e-3, seed=2, shared=True)
    assert args[args.index("--dataloader_num_workers") + 1] == "3"
    assert args[args.index("--seed") + 1] == "2"


def world_row(scene_id: str, question_type: str, objects: list[tuple[str, float]], marker=()) -> dict:
    """A world row whose scene holds `objects` as (description, image column of the centre)."""
    scene = {"objects": [{"description": name, "center_pixel": [u, 10.0]} for name, u in objects]}
    question = [{"type": "image", "text": None}, {"type": "text", "text": f"a {question_type} question"}]
    return {
        "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": [{"type": "text", "text": "x"}]}],
        "images": [f"{scene_id}.png"], "question_type": question_type, "question": "q", "answer": "x",
        "answer_value": None, "choices": [], "unit": "", "object_ids": [0], "marker": list(marker),
        "scene_id": scene_id, "scene": json.dumps(scene),
    }  # fmt: skip


def test_scene_descriptions_list_each_scene_once_left_to_right():
    from datasets import Dataset

    from training.experiment import scene_descriptions
    from training.world import DESCRIBE_QUESTION

    first = [("red cube", 80.0), ("blue sphere", 12.0), ("green cone", 40.0)]
    second = [("cyan cylinder", 5.0), ("red cube", 100.0)]
    rows = Dataset.from_list(
        [world_row("a", "color", first), world_row("a", "shape", first), world_row("b", "count", second)]
    )
    described = scene_descriptions(rows)
    assert described["scene_id"] == ["a", "b"]
    assert described["answer"] == ["blue sphere, green cone, red cube", "cyan cylinder, red cube"]
    assert set(described["question_type"]) == {"describe"}
    assert described["images"] == [["a.png"], ["b.png"]]  # the scene's own (first) image
    messages = described[0]["messages"]
    assert messages[0]["content"][1]["text"] == DESCRIBE_QUESTION
    assert messages[1]["content"][0]["text"] == "blue sphere, green cone, red cube"


def test_scene_descriptions_refuse_marked_images():
    from datasets import Dataset

    from training.experiment import scene_descriptions

    rows = Dataset.from_list([world_row("a", "point_depth", [("red cube", 5.0)], marker=(3, 4))])
    with pytest.raises(ValueError, match="point marker"):
        scene_descriptions(rows)


def test_report_existing_puts_the_stage0_base_first(tmp_path):
    for label, delta1 in (("add-seed0", 0.9), ("stage0-seed0", 0.1), ("none-seed0", 0.5)):
        folder = tmp_path / "eval" / label
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps(evaluation(delta1, 0.5, ["1 m"])))
    results = Experiment(PRESETS["tiny"], tmp_path).report_existing()
    assert [run["arm"] for run in results["runs"]] == ["stage0", "none", "add"]
    table = (tmp_path / "results.md").read_text()
    assert "| question type | metric | stage0 | none | add |" in table
    assert "| distance_to_camera | delta1 | 0.100 ± 0.000 | 0.500 ± 0.000 | 0.900 ± 0.000 |" in table
    assert results["partial"] and "wall_s" not in results  # no finished report to take the timings from


def test_report_existing_keeps_a_finished_runs_timings(tmp_path):
    folder = tmp_path / "eval" / "add-seed0"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(evaluation(0.9, 0.5, ["1 m"])))
    (tmp_path / "results.json").write_text(json.dumps({"wall_s": 123.0, "timings_s": {"sft-add-seed0": 5.0}}))
    Experiment(PRESETS["tiny"], tmp_path).report_existing()
    rebuilt = json.loads((tmp_path / "results.json").read_text())
    assert (rebuilt["wall_s"], rebuilt["timings_s"], rebuilt["partial"]) == (123.0, {"sft-add-seed0": 5.0}, False)
    assert [run["arm"] for run in rebuilt["runs"]] == ["add"]


def test_stage0a_runs_first_and_stage0_starts_from_its_tower(tmp_path, monkeypatch):
    """With `vision_pretrain_steps`, the tower is pre-trained on the training scenes and stage 0 loads that folder."""
    calls = []

    def record(self, name, module, args, done, launch=False, shared=False):
        calls.append((name, module, dict(zip(args[::2], args[1::2]))))
        done.parent.mkdir(parents=True, exist_ok=True)
        done.write_text("{}")

    monkeypatch.setattr(Experiment, "run", record)
    monkeypatch.setattr("training.experiment.runner.save_as_plain_qwen2_5_vl", lambda model, base: None)
    rows, world = tmp_path / "rows", tmp_path / "world"
    for steps, expected in ((0, ["stage0"]), (40, ["stage0-vision", "stage0"])):
        calls.clear()
        experiment = Experiment(replace(PRESETS["demo"], vision_pretrain_steps=steps), tmp_path / f"steps{steps}")
        experiment.stage0(rows, rows, world, world)
        assert [name for name, _, _ in calls] == expected
        stage0_args = calls[-1][2]
        assert stage0_args["--dataset_path"] == str(rows)
        init = experiment.out / "stage0" / "init"
        if steps:
            vision_args = calls[0][2]
            assert calls[0][1] == "training.pretrain_vision"
            assert vision_args["--base"] == str(init)
            assert vision_args["--data"] == str(world)
            assert vision_args["--max_steps"] == "40"
            assert stage0_args["--model_name_or_path"] == vision_args["--out"]
        else:
            assert stage0_args["--model_name_or_path"] == str(init)


@pytest.mark.parametrize("preset_name, full_finetune", [("cpu", False), ("cpu-full", True)])
def test_stage2_is_lora_or_full_finetuning_as_the_preset_says(tmp_path, monkeypatch, preset_name, full_finetune):
    calls = []

    def record(self, name, module, args, done, launch=False, shared=False):
        calls.append((module, args))

    monkeypatch.setattr(Experiment, "run", record)
    preset = PRESETS[preset_name]
    assert preset.sft_full_finetune is full_finetune
    experiment = Experiment(preset, tmp_path)
    model = experiment.sft(
        "add", 1, tmp_path / "base", tmp_path / "aligned", tmp_path / "train", tmp_path / "val", "add"
    )
    assert model == tmp_path / "sft" / "add-seed1" / "model"
    module, args = calls[0]
    assert module == "training.sft"
    options = dict(zip(args[::2], args[1::2]))
    assert options["--aligned_depth_model"] == str(tmp_path / "aligned")
    assert options["--learning_rate"] == str(preset.sft_lr)
    if full_finetune:
        assert options["--use_peft"] == "false"
        assert "--lora_r" not in args
    else:
        assert "--use_peft" not in args
        assert options["--lora_r"] == str(preset.lora_r)
        assert options["--lora_alpha"] == str(2 * preset.lora_r)


def test_sft_loss_curves_gather_every_run(tmp_path):
    from training.experiment import write_sft_loss_curves

    assert write_sft_loss_curves(tmp_path) is None  # no run finished yet
    histories = {
        "none-seed0": [{"step": 10, "loss": 2.0}, {"step": 10, "eval_loss": 1.9}, {"step": 20, "loss": 1.5}],
        "add-seed0": [{"step": 10, "loss": 1.8}, {"step": 20, "loss": 1.1}],
        "add-seed1": [{"step": 10, "loss": 1.7}],
    }
    for name, history in histories.items():
        (tmp_path / "sft" / name).mkdir(parents=True)
        (tmp_path / "sft" / name / "loss_curve.json").write_text(json.dumps(history))
    picture = write_sft_loss_curves(tmp_path)
    assert picture.read_bytes().startswith(b"\x89PNG")
    curves = json.loads((tmp_path / "sft_loss_curves.json").read_text())
    assert curves == {
        "add-seed0": [[10, 1.8], [20, 1.1]],
        "add-seed1": [[10, 1.7]],
        "none-seed0": [[10, 2.0], [20, 1.5]],  # training loss only: the eval entry is left out
    }


def test_depth_path_options_and_question_types_reach_the_depth_arms_only(tmp_path, monkeypatch):
    calls = []

    def record(self, name, module, args, done, launch=False, shared=False):
        calls.append((module, args))

    monkeypatch.setattr(Experiment, "run", record)
    preset = replace(
        PRESETS["cpu-full"],
        sft_question_types=("distance_to_camera", "point_depth"),
        depth_merger_zero_init=True,
        depth_gate_init=1.0,
        depth_lr=3e-3,
        train_depth_encoder=True,
    )
    experiment = Experiment(preset, tmp_path)
    for arm in ("none", "add", "concat", "adapter"):
        experiment.sft(arm, 0, tmp_path / "base", None, tmp_path / "train", tmp_path / "val", arm)
    (_, none), (_, add), (_, concat), (_, adapter) = calls
    assert none[none.index("--question_types") + 1 : none.index("--question_types") + 3] == [
        "distance_to_camera",
        "point_depth",
    ]
    assert "--depth_lr" not in none and "--depth_merger_zero_init" not in none

    def value(args, flag):
        return args[args.index(flag) + 1]

    assert value(add, "--depth_merger_zero_init") == "true" and value(add, "--depth_gate_init") == "1.0"
    assert value(add, "--depth_lr") == "0.003" and value(add, "--train_depth_encoder") == "true"
    assert "--depth_gate_init" not in concat and "--depth_merger_zero_init" in concat
    # The adapter arm trains no projector and has no gate (its fusion row): only the flags that apply to it.
    assert "--depth_gate_init" not in adapter and "--depth_merger_zero_init" not in adapter
    assert value(adapter, "--depth_lr") == "0.003" and value(adapter, "--train_depth_encoder") == "true"
    assert experiment.eval_question_types() == ("distance_to_camera", "point_depth", *RGB_ONLY_QUESTION_TYPES)
    assert Experiment(PRESETS["cpu-full"], tmp_path).eval_question_types() is None


def test_the_report_holds_every_evaluation_in_out_not_only_this_invocations(tmp_path):
    """`--seeds 2` after a `--seeds 0 1` run adds seed 2 to the same report: mean ± std over all three."""
    for label, delta1 in (("none-seed0", 0.3), ("none-seed1", 0.5), ("rgbd-seed0", 0.7)):
        folder = tmp_path / "eval" / label
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps(evaluation(delta1, 0.5, ["1 m"])))
    preset = replace(PRESETS["tiny"], arms=("none", "add"), single_seed_arms=("rgbd",), seeds=(2,))
    results = {"preset": {}, "runs": [], "alignment": {}}
    Experiment(preset, tmp_path).report(results)
    assert [(run["arm"], run["seed"]) for run in results["runs"]] == [("none", 0), ("none", 1), ("rgbd", 0)]
    assert results["aggregate"]["none"]["distance_to_camera"]["delta1"]["n"] == 2
    assert results["aggregate"]["none"]["distance_to_camera"]["delta1"]["mean"] == pytest.approx(0.4)


def test_a_variant_folder_reuses_the_stages_of_another(tmp_path):
    source = tmp_path / "main"
    for relative in ("data/train", "stage0/base"):
        (source / relative).mkdir(parents=True)
    (source / "stage0" / "base" / "config.json").write_text("{}")
    variant = Experiment(PRESETS["tiny"], tmp_path / "variant", shared_stages=source)
    variant.link_shared_stages()
    assert (tmp_path / "variant" / "stage0" / "base" / "config.json").read_text() == "{}"
    assert (tmp_path / "variant" / "data").resolve() == (source / "data").resolve()
    assert not (tmp_path / "variant" / "eval").exists()  # evaluated in the variant, on its preset's test set
    variant.link_shared_stages()  # a rerun keeps the links
    with pytest.raises(FileNotFoundError, match="has no data: run its stages first"):
        Experiment(PRESETS["tiny"], tmp_path / "other", shared_stages=tmp_path / "empty").link_shared_stages()


def test_a_larger_test_set_is_rendered_like_the_fixed_one_and_evaluated_apart(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(Experiment, "run", lambda self, name, module, args, *rest, **options: calls.append(args))
    fixed = Experiment(PRESETS["cpu-full"], tmp_path)
    larger = Experiment(replace(PRESETS["cpu-full"], test_scenes=1000), tmp_path)
    assert fixed.test_world() == tmp_path / "data" / "test" and fixed.eval_folder == tmp_path / "eval"
    assert larger.test_world() == tmp_path / "data" / "test-1000" and larger.eval_folder == tmp_path / "eval-test1000"
    assert calls[0][calls[0].index("--preset") :] == ["--preset", "test"]
    assert calls[1][calls[1].index("--preset") :] == ["--preset", "test", "--num-scenes", "1000"]


def metric_prediction(question_type: str, parsed, truth: float, parse_ok: bool = True) -> dict:
    return {"question_type": question_type, "kind": "metric", "parsed": parsed, "answer_value": truth,
            "parse_ok": parse_ok, "prediction": f"{parsed} m"}  # fmt: skip


def test_log_correlation_follows_the_truth_and_ignores_unparsed_answers():
    truths = [1.0, 2.0, 4.0, 8.0]
    following = [metric_prediction("point_depth", 1.1 * t, t) for t in truths]
    constant = [metric_prediction("distance_to_camera", 3.0, t) for t in truths]
    broken = [metric_prediction("point_depth", None, 5.0, parse_ok=False), metric_prediction("closer", 1, 1)]
    broken[1]["kind"] = "choice"
    correlations = log_correlations(following + constant + broken)
    assert correlations["point_depth"] == pytest.approx(1.0)
    assert math.isnan(correlations["distance_to_camera"])  # a constant answer has no correlation
    assert set(correlations) == {"point_depth", "distance_to_camera"}


def bar_run(arm: str, seed: int, distance: float, point: float) -> dict:
    per_type = {"distance_to_camera": {"delta1": distance}, "point_depth": {"delta1": point}}
    return {"arm": arm, "seed": seed, "per_type": per_type}


def test_the_bar_needs_the_ratio_and_a_difference_beyond_twice_the_seed_spread():
    runs = [bar_run("none", seed, 0.30 + 0.01 * seed, 0.20 + 0.05 * seed) for seed in range(3)]
    runs += [bar_run("add", seed, 0.40 + 0.01 * seed, 0.26 + 0.05 * seed) for seed in range(3)]
    runs += [bar_run("rgbd", 0, 0.9, 0.9)]  # one seed: not judged
    rows = {(row["arm"], row["question_type"]): row for row in against_rgb_only(aggregate(runs))}
    assert set(rows) == {("add", "distance_to_camera"), ("add", "point_depth")}
    distance, point = rows["add", "distance_to_camera"], rows["add", "point_depth"]
    assert distance["ratio"] == pytest.approx(0.41 / 0.31) and distance["difference"] == pytest.approx(0.10)
    assert distance["twice_larger_std"] == pytest.approx(0.02) and distance["meets_bar"]
    # 1.24x, but the difference (0.06) is within twice the seed spread (0.1): not met.
    assert point["ratio"] == pytest.approx(0.31 / 0.25) and not point["meets_bar"]


def test_a_projector_warmup_runs_before_stage2_of_the_depth_arms_only(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(Experiment, "run", lambda self, name, module, args, *rest, **options: calls.append(args))
    preset = replace(PRESETS["cpu-depth"], depth_warmup_steps=100)
    experiment = Experiment(preset, tmp_path)
    model = experiment.sft("add", 0, tmp_path / "base", None, tmp_path / "train", tmp_path / "val", "add")
    assert model == tmp_path / "sft" / "add-seed0" / "model"
    experiment.sft("none", 0, tmp_path / "base", None, tmp_path / "train", tmp_path / "val", "none")
    warmup, stage2, rgb_only = calls

    def value(args, flag):
        return args[args.index(flag) + 1]

    assert value(warmup, "--train_only_depth") == "true" and value(warmup, "--max_steps") == "100"
    assert value(warmup, "--model_name_or_path") == str(tmp_path / "base")
    assert value(warmup, "--depth_merger_zero_init") == "true" and value(warmup, "--depth_gate_init") == "1.0"
    # Stage 2 continues from the warmed-up depth path instead of initialising it again.
    assert value(stage2, "--aligned_depth_model") == str(tmp_path / "sft" / "add-seed0" / "warmup" / "model")
    assert "--depth_merger_zero_init" not in stage2 and "--depth_gate_init" not in stage2
    assert "--train_only_depth" not in stage2 and value(stage2, "--max_steps") == str(preset.sft_steps)
    assert "--train_only_depth" not in rgb_only and "--aligned_depth_model" not in rgb_only


def test_the_demo_reads_its_finding_from_a_written_report(tmp_path):
    from training.demo import measured_finding
    from training.experiment.report import CONSTANT_ARM, against_baselines

    runs = [bar_run("none", seed, 0.30, 0.20 + 0.01 * seed) for seed in range(3)]
    runs += [bar_run("add", seed, 0.45, 0.30 + 0.01 * seed) for seed in range(3)]
    runs += [bar_run(CONSTANT_ARM, 0, 0.40, 0.25)]
    results = {"runs": runs, "aggregate": aggregate(runs), "evaluation_set": "val"}
    results["against_baselines"] = against_baselines(results["aggregate"])
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert measured_finding(tmp_path) == (
        "distance_to_camera δ₁ 0.45 (add) against 0.30 (RGB only) and 0.40 (a constant guess), 3 seed(s) on the val "
        "set, bar not met; point_depth δ₁ 0.31 (add) against 0.21 (RGB only) and 0.25 (a constant guess), 3 seed(s) "
        "on the val set, bar not met"
    )
    assert measured_finding(tmp_path / "missing").startswith("not in this checkout")


def test_the_demo_prints_the_committed_final_comparison():
    from training.demo import MEASURED_RESULT, measured_finding

    committed = json.loads((MEASURED_RESULT / "results.json").read_text())
    point_depth = next(row for row in committed["against_baselines"] if row["question_type"] == "point_depth")
    finding = measured_finding()
    assert f"point_depth δ₁ {point_depth['delta1']:.2f} (add) against {point_depth['rgb_only']:.2f}" in finding
    assert f"{point_depth['seeds']} seed(s) on the test set" in finding
