"""Issue 21's protocol, as the harness enforces it: sets rendered alike, unexplored test scenes, the constant baseline,
the depth controls, whole-pipeline seeds, and the bar against both baselines."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.benchmarks import SpatialSample
from training.controls import (
    UNINFORMATIVE_DEPTH_M,
    ConstantAnswer,
    constant_predictions,
    delta1_maximising_constant,
    fit_constant_answers,
    override_depth,
    scene_of,
    with_uninformative_depth,
)
from training.depth_png import decode_depth_png, encode_depth_png
from training.evaluate import DELTA1_THRESHOLD, build_results
from training.experiment import METRIC_QUESTION_TYPES, PRESETS, Experiment
from training.experiment.protocol import check_rendered_alike, check_test_world_unexplored
from training.experiment.report import PROTOCOL_BAR, against_baselines, forgetting, summary_of


# ---- the experiment's own commands --------------------------------------------------------------------------------
def value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


# What the faked evaluations of RecordedExperiment score, by arm (others: 0.25).
FAKE_DELTA1 = {"constant": 0.4, "none": 0.3, "add": 0.6, "add-nodepth": 0.2, "add-shuffled": 0.1}


class RecordedExperiment:
    """Runs an experiment's whole plan with every stage faked: make_world writes its generation.json from its flags,
    every other stage writes the file that marks it done. `calls` holds (stage name, module, args)."""

    def __init__(self, monkeypatch, preset, out: Path):
        self.calls = []

        def fake_run(experiment, name, module, args, done, launch=False, shared=False):
            self.calls.append((name, module, list(args)))
            if module == "training.make_world":
                folder = Path(value(args, "--out"))
                folder.mkdir(parents=True, exist_ok=True)
                info = {"format_version": 1, "questions_per_scene": 6, "supersample": 1, "shard_size": 100}
                if "--preset" in args:
                    info.update(split="test", seed=0, size=224)
                else:
                    info.update(split=value(args, "--split"), seed=int(value(args, "--seed")))
                    info.update(size=int(value(args, "--size")))
                (folder / "generation.json").write_text(json.dumps(info))
            elif module == "training.evaluate":  # a result the report can read: δ₁ by the run's arm
                done.parent.mkdir(parents=True, exist_ok=True)
                arm = done.parent.name.rpartition("-seed")[0]
                delta1 = FAKE_DELTA1.get(arm, 0.25)
                counts = {"num_samples": 500, "num_parseable": 500, "num_unparseable": 0, "delta1": delta1}
                per_type = {name: dict(counts) for name in ("distance_to_camera", "point_depth")}
                done.write_text(json.dumps({"metrics": {"per_type": per_type, "overall": {}}}))
            elif done is not None:
                done.parent.mkdir(parents=True, exist_ok=True)
                done.write_text("{}")

        monkeypatch.setattr(Experiment, "run", fake_run)
        monkeypatch.setattr(Experiment, "stage0_rows", lambda experiment, source, name: out / "data" / name)
        monkeypatch.setattr(Experiment, "uninformative_rows", lambda experiment, train: out / "data" / "train-uninf")
        monkeypatch.setattr(Experiment, "report", lambda experiment, results, wall_s=None: None)
        monkeypatch.setattr("training.experiment.runner.save_tiny_base", lambda folder, **kwargs: None)
        monkeypatch.setattr("training.experiment.runner.save_as_plain_qwen2_5_vl", lambda model, base: None)
        self.experiment = Experiment(preset, out)

    def __call__(self):
        self.experiment()
        return self.calls

    def args_of(self, name: str) -> list[str]:
        return next(args for stage, _, args in self.calls if stage == name)


def small_fair_preset(**overrides):
    return replace(PRESETS["cpu-fair-final"], **{"parallel_runs": 1, **overrides})


def test_every_set_is_rendered_like_training_and_the_test_scenes_are_unexplored(tmp_path, monkeypatch):
    calls = RecordedExperiment(monkeypatch, small_fair_preset(), tmp_path)()
    worlds = {
        value(args, "--out").rpartition("/")[2]: args for _, module, args in calls if module == "training.make_world"
    }
    train, val, test = worlds["train"], worlds["val"], worlds["test"]
    assert value(val, "--size") == value(test, "--size") == value(train, "--size") == "112"
    assert "--preset" not in test  # not the 224-px fixed set
    assert (value(train, "--split"), value(val, "--split"), value(test, "--split")) == ("train", "val", "test")
    assert ("test", int(value(test, "--seed"))) != ("test", 0)
    # >= 500 validation questions per type: 6 questions per scene over 12 types.
    assert int(value(val, "--num-scenes")) * 6 / 12 >= 500


def test_a_final_run_on_an_explored_test_world_is_refused(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="read while recipes were chosen"):
        RecordedExperiment(monkeypatch, small_fair_preset(test_world_seed=0), tmp_path)()
    check_test_world_unexplored("test", 1)  # any other seed is fine
    # The exploration preset never reads the test set, so it may render the explored one (and evaluates on val only).
    calls = RecordedExperiment(monkeypatch, replace(PRESETS["cpu-fair"], parallel_runs=1), tmp_path / "explore")()
    evaluations = [args for _, module, args in calls if module == "training.evaluate"]
    assert evaluations and all("/eval-val/" in value(args, "--out") for args in evaluations)


def write_generation(folder: Path, **info) -> Path:
    folder.mkdir(parents=True)
    base = {"split": "train", "seed": 0, "size": 112, "questions_per_scene": 6, "supersample": 1, "format_version": 1}
    (folder / "generation.json").write_text(json.dumps({**base, **info}))
    return folder


def test_a_world_rendered_otherwise_is_refused_with_what_differs(tmp_path):
    train = write_generation(tmp_path / "train")
    check_rendered_alike(train, {"val": write_generation(tmp_path / "val", split="val")})
    with pytest.raises(ValueError, match=r"size 224 \(training: 112\)"):
        check_rendered_alike(train, {"test": write_generation(tmp_path / "test", split="test", size=224)})
    with pytest.raises(ValueError, match="uses the training split"):
        check_rendered_alike(train, {"test": write_generation(tmp_path / "again")})
    with pytest.raises(FileNotFoundError, match="no generation.json"):
        check_rendered_alike(train, {"test": tmp_path / "missing"})


def test_seeds_vary_the_whole_pipeline_and_depth_arms_get_their_controls(tmp_path, monkeypatch):
    recorded = RecordedExperiment(monkeypatch, small_fair_preset(seeds=(0, 1)), tmp_path)
    calls = recorded()
    for seed in (0, 1):
        assert value(recorded.args_of(f"stage0-vision-seed{seed}"), "--seed") == str(seed)
        stage0 = recorded.args_of(f"stage0-seed{seed}")
        assert value(stage0, "--seed") == str(seed) and f"stage0/seed{seed}/" in value(stage0, "--output_dir")
        align = recorded.args_of(f"align-dense-points-seed{seed}")  # the chosen recipe's points alignment
        assert value(align, "--seed") == str(seed) and value(align, "--base") == str(
            tmp_path / f"stage0/seed{seed}/base"
        )
        assert value(align, "--depth_input") == "points"
        add = recorded.args_of(f"sft-add-seed{seed}")
        assert value(add, "--aligned_depth_model") == str(tmp_path / "align" / f"dense-points-seed{seed}")
        assert "--question_types" not in add  # stage 2 trains all twelve types
    labels = {value(args, "--label"): args for _, module, args in calls if module == "training.evaluate"}
    assert "--no-depth" in labels["add-nodepth-seed0"]
    assert value(labels["add-shuffled-seed1"], "--depth-override") == "shuffled"
    assert "--no-depth" not in labels["none-seed0"] and "--depth-override" not in labels["none-seed0"]
    assert "none-nodepth-seed0" not in labels  # RGB-only has no depth to control
    # The capacity-matched control: the same depth arm and modules, trained on uninformative rows, read on them.
    control = recorded.args_of("sft-add-uninformative-seed0")
    assert value(control, "--dataset_path") == str(tmp_path / "data" / "train-uninf")
    assert [a for a in control if a.startswith("--depth")] == [
        a for a in recorded.args_of("sft-add-seed0") if a.startswith("--depth")
    ]
    assert value(labels["add-uninformative-seed0"], "--depth-override") == "constant"
    outs = [value(args, "--out") for _, module, args in calls if module == "training.evaluate"]
    assert {out.split("/")[-2] for out in outs} == {"eval-test"}  # the final run reads only the test set
    shipped = {
        value(args, "--out"): value(args, "--model") for _, module, args in calls if module == "training.export"
    }
    assert shipped == {
        str(tmp_path / "models" / arm): str(tmp_path / "sft" / f"{arm}-seed0" / "model") for arm in ("none", "add")
    }
    constant_runs = [args for _, module, args in calls if module == "training.evaluate" and args[0] == "constant"]
    assert len(constant_runs) == 1 and all(
        value(args, "--train") == str(tmp_path / "data" / "train") for args in constant_runs
    )


def test_a_run_of_some_arms_ships_only_the_arms_it_trains(tmp_path, monkeypatch):
    # `--arms add` (e.g. a depth-input variant beside a finished run) trains no `none`, so there is none to ship.
    calls = RecordedExperiment(monkeypatch, small_fair_preset(arms=("add",), capacity_controls=()), tmp_path)()
    exports = [value(args, "--model") for _, module, args in calls if module == "training.export"]
    assert exports == [str(tmp_path / "sft" / "add-seed0" / "model")]
    calls = RecordedExperiment(monkeypatch, small_fair_preset(seeds=(1,)), tmp_path / "seed1")()
    assert not [args for _, module, args in calls if module == "training.export"]  # no seed-0 model to ship


# ---- the constant baseline --------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0.05, max_value=50.0), min_size=1, max_size=40))
def test_the_fitted_constant_is_the_best_possible_constant(values):
    constant = delta1_maximising_constant(np.array(values), DELTA1_THRESHOLD)

    def hits(c: float) -> int:
        return sum(max(v / c, c / v) < DELTA1_THRESHOLD for v in values)

    # The best constant lies just inside some value's window: try every value's window edges and the values.
    candidates = [v * f for v in values for f in (1.0, DELTA1_THRESHOLD * 0.999999, 1 / (DELTA1_THRESHOLD * 0.999999))]
    assert hits(constant) == max(hits(c) for c in candidates)


def world_sample(index: int, question_type: str, answer: str, value=None, choices=(), scene: str | None = None):
    return SpatialSample(
        id=f"{scene or f'scene{index}'}/{index}", question="q", question_type=question_type, answer=answer,
        answer_value=value, choices=list(choices),
    )  # fmt: skip


def test_constants_are_fitted_per_type_and_scored_like_a_model():
    rows = {
        "question_type": ["distance_to_camera"] * 3 + ["closer"] * 3 + ["count"] * 3 + ["depth_order"] * 2,
        "answer": ["2.00 m", "2.10 m", "9.00 m", "b", "d", "e", "3", "3", "2", "z, y, x", "c, b, a"],
        "answer_value": [2.0, 2.1, 9.0] + [None] * 8,
        "choices": [[]] * 3 + [["a", "b"], ["c", "d"], ["e", "f"]] + [[]] * 3 + [["x", "y", "z"], ["a", "b", "c"]],
    }
    constants = fit_constant_answers(rows, DELTA1_THRESHOLD)
    assert 2.1 / DELTA1_THRESHOLD < constants["distance_to_camera"].metres < 2.0 * DELTA1_THRESHOLD
    assert constants["closer"] == ConstantAnswer("closer", position=(1,))  # "b", "d": the second option twice
    assert constants["count"].text == "3"
    assert constants["depth_order"].position == (2, 1, 0)
    samples = [
        world_sample(0, "distance_to_camera", "2.05 m", 2.05),
        world_sample(1, "closer", "q", choices=["p", "q"]),
        world_sample(2, "count", "2"),
        world_sample(
            3, "depth_order", "red cone, blue cube, green ball", choices=["green ball", "blue cube", "red cone"]
        ),
        world_sample(4, "color", "red"),  # a type the constants were not fitted on: unreadable, never right
    ]
    predictions = constant_predictions(constants, samples)
    assert predictions[1:] == ["q", "3", "red cone, blue cube, green ball", ""]
    per_type = build_results(samples, predictions)["metrics"]["per_type"]
    assert per_type["distance_to_camera"]["delta1"] == 1.0 and per_type["closer"]["accuracy"] == 1.0
    assert per_type["count"]["accuracy"] == 0.0 and per_type["depth_order"]["accuracy"] == 1.0
    assert per_type["color"]["num_unparseable"] == 1


# ---- depth controls ------------------------------------------------------------------------------------------------
def samples_with_depth(scenes: int, per_scene: int) -> list[SpatialSample]:
    samples = []
    for scene in range(scenes):
        for _ in range(per_scene):
            sample = world_sample(len(samples), "point_depth", "1 m", 1.0, scene=f"s{scene}")
            samples.append(replace(sample, depth=encode_depth_png(np.full((4, 6), 1.0 + scene, np.float32))))
    return samples


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shuffled_depth_always_comes_from_another_scene(seed):
    samples = samples_with_depth(scenes=5, per_scene=3)
    shuffled = override_depth(samples, "shuffled", seed=seed)
    own = {scene_of(s): decode_depth_png(s.depth)[0, 0] for s in samples}
    donors = [decode_depth_png(s.depth)[0, 0] for s in shuffled]
    assert all(donor != own[scene_of(s)] for s, donor in zip(samples, donors))
    # One donor scene per scene, and every scene's depth is used once: a permutation of the scenes' maps.
    assert sorted({float(d) for d in donors}) == sorted(float(v) for v in own.values())
    assert [s.question for s in shuffled] == [s.question for s in samples]  # only the depth changes


def test_constant_depth_keeps_each_map_size_and_carries_one_value():
    samples = samples_with_depth(scenes=2, per_scene=2)
    constant = override_depth(samples, "constant")
    assert all(d.depth.shape == (4, 6) and np.all(d.depth == UNINFORMATIVE_DEPTH_M) for d in constant)
    with pytest.raises(ValueError, match="Unknown depth override 'blurred'"):
        override_depth(samples, "blurred")
    with pytest.raises(ValueError, match="at least two scenes"):
        override_depth(samples[:2], "shuffled")


def test_the_capacity_control_trains_on_one_constant_map_in_either_layout():
    from datasets import Dataset

    depth = encode_depth_png(np.linspace(0.5, 9.0, 12, dtype=np.float32).reshape(3, 4))
    rows = Dataset.from_list([
        {"messages": [{"role": "user", "content": [{"type": "image", "depth": depth, "text": None},
                                                    {"type": "text", "depth": None, "text": "q"}]}],
         "depth": depth},
    ])  # fmt: skip
    control = with_uninformative_depth(rows)[0]
    column = decode_depth_png(control["depth"])
    block = decode_depth_png(control["messages"][0]["content"][0]["depth"])
    assert column.shape == block.shape == (3, 4)
    assert np.all(column == UNINFORMATIVE_DEPTH_M) and np.all(block == UNINFORMATIVE_DEPTH_M)
    assert control["messages"][0]["content"][1]["text"] == "q"


# ---- the report ----------------------------------------------------------------------------------------------------
def aggregate_of(arms: dict[str, dict[str, tuple[float, float, int]]]) -> dict:
    """{arm: {type: (mean, std, n)}} as `aggregate` writes it, with δ₁ for metric types, accuracy otherwise."""
    out = {}
    for arm, per_type in arms.items():
        out[arm] = {}
        for question_type, (mean, std, n) in per_type.items():
            key = "delta1" if question_type in METRIC_QUESTION_TYPES else "accuracy"
            out[arm][question_type] = {
                key: {"mean": mean, "std": std, "n": n},
                "readable": {"mean": 1.0, "std": 0, "n": n},
            }
    return out


def test_the_bar_is_against_the_better_of_rgb_only_and_the_constant():
    aggregate_ = aggregate_of({
        "constant": {"distance_to_camera": (0.46, 0.0, 1), "point_depth": (0.30, 0.0, 1)},
        "none": {"distance_to_camera": (0.34, 0.02, 3), "point_depth": (0.35, 0.02, 3)},
        "add": {"distance_to_camera": (0.85, 0.03, 3), "point_depth": (0.60, 0.03, 3)},
        "add-nodepth": {"distance_to_camera": (0.30, 0.0, 3), "point_depth": (0.30, 0.0, 3)},
    })  # fmt: skip
    rows = {row["question_type"]: row for row in against_baselines(aggregate_)}
    assert {row["arm"] for row in against_baselines(aggregate_)} == {"add"}  # controls are not depth arms
    distance, point = rows["distance_to_camera"], rows["point_depth"]
    assert distance["ratio_to_best"] == pytest.approx(0.85 / 0.46) and distance["meets_bar"]
    assert point["ratio_to_best"] == pytest.approx(0.60 / 0.35) and not point["meets_bar"]  # below the 0.8 level
    assert PROTOCOL_BAR["level"] == 0.8 and PROTOCOL_BAR["ratio"] == 1.5


def test_forgetting_flags_a_type_below_the_base_beyond_noise_and_unreadable_answers():
    aggregate_ = aggregate_of({
        "stage0": {"color": (0.60, 0.0, 1)},
        "none": {"color": (0.58, 0.02, 3)},
        "add": {"color": (0.40, 0.02, 3)},
    })  # fmt: skip
    aggregate_["none"]["color"]["readable"]["mean"] = 0.90
    rows = {row["arm"]: row for row in forgetting(aggregate_)}
    assert not rows["none"]["below_stage0"] and not rows["none"]["readable_ok"]
    assert rows["add"]["below_stage0"] and rows["add"]["readable_ok"]


def test_the_readable_rate_is_reported_per_type():
    result = {"metrics": {"per_type": {"closer": {"num_samples": 8, "num_unparseable": 2, "accuracy": 0.5}},
                          "overall": {}}, "predictions": []}  # fmt: skip
    assert summary_of(result)["per_type"]["closer"]["readable"] == pytest.approx(0.75)


# ---- scene conversations -------------------------------------------------------------------------------------------
def test_a_scenes_questions_become_one_conversation_whose_every_answer_is_a_target(world_dir, depth_models):
    from training.collator import IGNORE_INDEX, DepthVLMCollator
    from training.data_files import load_rows
    from training.experiment.conversations import SCENE_CONVERSATION_TYPE, scene_conversations

    rows = load_rows(world_dir)
    conversations = scene_conversations(rows)
    unmarked = [i for i, marker in enumerate(rows["marker"]) if not marker]
    scenes = {rows["scene_id"][i] for i in unmarked}
    assert len(conversations) == len(scenes) + len(rows) - len(unmarked)  # marked rows stay on their own
    by_scene = {}
    for index in unmarked:
        by_scene.setdefault(rows["scene_id"][index], []).append(index)
    processor = depth_models["add"][1]
    collator = DepthVLMCollator(processor)
    for row in conversations:
        originals = by_scene.get(row["scene_id"]) if not row["marker"] else None
        if not originals or len(originals) == 1:
            continue
        assert row["question_type"] == SCENE_CONVERSATION_TYPE
        roles = [message["role"] for message in row["messages"]]
        assert roles == ["user", "assistant"] * len(originals)
        images = [part for message in row["messages"] for part in message["content"] if part["type"] == "image"]
        assert len(images) == 1 and row["messages"][0]["content"][0]["type"] == "image"
        answers = [row["messages"][2 * turn + 1]["content"][0]["text"] for turn in range(len(originals))]
        assert answers == [rows["answer"][index] for index in originals]
        questions = [row["messages"][2 * turn]["content"][-1]["text"] for turn in range(len(originals))]
        assert questions == [rows["messages"][index][0]["content"][-1]["text"] for index in originals]
        # One image in the inputs, and every answer (with its <|im_end|>) is a training target.
        batch = collator([row])
        assert batch["image_grid_thw"].shape[0] == 1 and batch["image_has_depth"].tolist() == [True]
        targets = processor.tokenizer.decode(batch["labels"][0][batch["labels"][0] != IGNORE_INDEX])
        assert targets == "".join(f"{answer}<|im_end|>" for answer in answers)
    limited = scene_conversations(rows, max_turns=2)
    assert max(len(row["messages"]) for row in limited) == 4


def test_side_by_side_each_arm_starts_after_its_own_seeds_stages(tmp_path, monkeypatch):
    """parallel_runs=2 over 3 pipeline seeds: one queue, no idle wait on the other seeds' stages, no deadlock."""
    import time

    recorded = RecordedExperiment(monkeypatch, small_fair_preset(seeds=(0, 1, 2), parallel_runs=2), tmp_path)
    original = Experiment.run
    events = []  # ("start" | "end", stage name), in time order

    def slow_stage0(experiment, name, module, args, done, launch=False, shared=False):
        events.append(("start", name))
        if name.startswith("stage0-seed"):
            time.sleep(0.05 * (1 + int(name[-1])))
        original(experiment, name, module, args, done, launch, shared)
        events.append(("end", name))

    monkeypatch.setattr(Experiment, "run", slow_stage0)
    recorded()
    for seed in (0, 1, 2):
        for arm in ("none", "add"):
            assert events.index(("end", f"align-dense-points-seed{seed}")) < events.index(
                ("start", f"sft-{arm}-seed{seed}")
            )
    # Two seeds' shared stages ran side by side: seed 1's stage 0 started before seed 0's had finished.
    assert events.index(("start", "stage0-seed1")) < events.index(("end", "stage0-seed0"))


def test_with_one_seed_forgetting_is_read_against_the_questions_own_sampling_noise():
    """One seed has no spread: a drop counts only beyond twice the binomial error of the two scores (500 questions
    each: about 0.03 at p = 1/3), so 0.338 -> 0.328 is noise and 0.338 -> 0.20 is forgetting."""
    aggregate_ = aggregate_of({"stage0": {"count": (0.338, 0.0, 1)}, "none": {"count": (0.328, 0.0, 1)},
                               "add": {"count": (0.20, 0.0, 1)}})  # fmt: skip
    for arm in aggregate_:
        aggregate_[arm]["count"]["questions"] = 500
    rows = {row["arm"]: row for row in forgetting(aggregate_)}
    assert not rows["none"]["below_stage0"] and rows["add"]["below_stage0"]
    del aggregate_["none"]["count"]["questions"]  # without the counts there is no floor: any drop counts
    assert {row["arm"]: row for row in forgetting(aggregate_)}["none"]["below_stage0"]


@pytest.mark.parametrize("stage0_types", ["rgb", "all"])
def test_stage0_trains_the_types_it_is_told_with_a_description_per_scene(world_dir, tmp_path, stage0_types):
    from training.data_files import load_rows
    from training.experiment.presets import RGB_ONLY_QUESTION_TYPES
    from training.world import QUESTION_TYPES

    preset = replace(PRESETS["cpu-fair"], stage0_question_types=stage0_types)
    folder = Experiment(preset, tmp_path).stage0_rows(world_dir, "train-stage0")
    assert folder.name == ("train-stage0-all" if stage0_types == "all" else "train-stage0")
    rows = load_rows(folder)
    source = load_rows(world_dir)
    types = set(rows["question_type"]) - {"describe"}
    assert types == (set(QUESTION_TYPES) if stage0_types == "all" else set(RGB_ONLY_QUESTION_TYPES))
    scenes = set(source["scene_id"])
    described = [row["scene_id"] for row in rows if row["question_type"] == "describe"]
    assert sorted(described) == sorted(scenes)  # one description per scene, on an unmarked view
    assert all(not row["marker"] for row in rows if row["question_type"] == "describe")
    expected_questions = (
        len(source) if stage0_types == "all" else sum(t in RGB_ONLY_QUESTION_TYPES for t in source["question_type"])
    )
    assert len(rows) == expected_questions + len(scenes)


def test_the_command_line_overrides_the_chosen_recipe_back_to_the_default_tokenizer():
    from training.experiment.__main__ import parse_preset

    chosen, _ = parse_preset(["--preset", "cpu-fair-final"])
    assert (chosen.tokenizer_corpus, chosen.stage0_question_types, chosen.depth_input) == ("world", "all", "points")
    assert (chosen.evaluate_val, chosen.evaluate_test) == (False, True)
    overridden, _ = parse_preset(["--preset", "cpu-fair", "--tokenizer-corpus", "default", "--depth-input", "depth"])
    assert (overridden.tokenizer_corpus, overridden.depth_input) == (None, "depth")
    assert chosen.tokenizer_digits == "merged"
    assert parse_preset(["--preset", "cpu-fair", "--tokenizer-digits", "single"])[0].tokenizer_digits == "single"


def test_the_extras_reuse_the_main_comparisons_runs_only_under_the_same_recipe(tmp_path, monkeypatch):
    main = tmp_path / "main"
    RecordedExperiment(monkeypatch, small_fair_preset(seeds=(0, 1)), main)()
    extras = replace(PRESETS["cpu-fair-final-extras"], parallel_runs=1)
    assert extras.arms == ("none", "add") and extras.seeds == (0,)
    experiment = Experiment(extras, tmp_path / "extras", shared_stages=main)
    assert experiment.link_shared_runs() == ["none-seed0", "add-seed0"]
    for linked in ("sft/none-seed0", "sft/add-seed0", "eval-test/add-seed0", "eval-test/add-nodepth-seed0"):
        assert (tmp_path / "extras" / linked).resolve() == (main / linked).resolve()
        assert (tmp_path / "extras" / linked).is_symlink()
    assert not (tmp_path / "extras" / "sft" / "add-seed1").exists()  # only the extras' own seeds
    # Another stage-2 recipe (here: its steps) makes other runs: nothing is linked.
    other = Experiment(replace(extras, sft_steps=extras.sft_steps + 1), tmp_path / "other", shared_stages=main)
    assert other.link_shared_runs() == [] and not (tmp_path / "other" / "sft").exists()


def test_a_shipped_models_card_carries_its_evaluations_and_the_experiments_table(tmp_path, monkeypatch):
    recorded = RecordedExperiment(monkeypatch, small_fair_preset(seeds=(0, 1)), tmp_path)
    recorded()
    add, none = recorded.args_of("ship-add"), recorded.args_of("ship-none")
    results = add[add.index("--results") + 1 : add.index("--training-summary")]
    assert results == [
        str(tmp_path / "eval-test" / label / "results.json")
        for label in ("add-seed0", "add-nodepth-seed0", "add-shuffled-seed0")
    ]
    summary = value(add, "--training-summary")
    assert "over 2 whole-pipeline seed(s)" in summary and "test set" in summary
    header = "| δ₁ | constant | RGB-only | this arm (`add`) | depth removed | another scene's depth | trained on constant depth |"
    assert header in summary
    # The faked capacity control scores the default 0.25.
    row = "| 0.400 ± 0.000 | 0.300 ± 0.000 | 0.600 ± 0.000 | 0.200 ± 0.000 | 0.100 ± 0.000 | 0.250 ± 0.000 |"
    assert f"| distance to camera {row}" in summary and f"| point depth {row}" in summary
    # RGB-only has no depth controls: its card's table stops at its own column.
    none_summary = value(none, "--training-summary")
    assert "| δ₁ | constant | this arm (`none`) |" in none_summary
    assert "| point depth | 0.400 ± 0.000 | 0.300 ± 0.000 |" in none_summary


def test_the_command_line_sets_the_image_size_in_whole_tokens():
    from training.experiment.__main__ import parse_preset

    preset, _ = parse_preset(["--preset", "cpu-fair", "--image-size", "224"])
    assert preset.image_size == 224
    with pytest.raises(SystemExit):
        parse_preset(["--preset", "cpu-fair", "--image-size", "100"])
