"""Evaluation: answer reading (lengths, choices, orders, counts), metrics on hand-made predictions, benchmark readers
on fixtures in the published schemas, and `python -m training.evaluate run` end to end on a tiny depth model."""

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import reconfigured
from training import evaluate
from training.answers import match_choice, match_order, normalize_answer, parse_count, parse_length, unit_to_metres
from training.benchmarks import SpatialSample, load_depth, load_image, read_benchmark
from training.build_depth_model import build_depth_model
from training.depth_png import decode_depth_cell
from training.make_world import WorldConfig, write_dataset
from training.tiny import save_tiny_depth_anything


FIXTURES = Path(__file__).parent / "fixtures" / "benchmarks"

# ---------------------------------------------------------------------------------------------------------------
# Lengths
# ---------------------------------------------------------------------------------------------------------------
LENGTH_CASES = [
    # (answer, metres or None, reason)
    ("1.5 meters", 1.5, "unit"),
    ("1.5 metres", 1.5, "unit"),
    ("about 2 m", 2.0, "unit"),
    ("The distance is 3.75 metres.", 3.75, "unit"),
    ("1.2m", 1.2, "unit"),
    ("1.5-meter", 1.5, "unit"),
    (".5 m", 0.5, "unit"),
    ("150 cm", 1.5, "unit"),
    ("150 centimeters", 1.5, "unit"),
    ("250 mm", 0.25, "unit"),
    ("2 km", 2000.0, "unit"),
    ("approximately 10 ft", 3.048, "unit"),
    ("1 foot", 0.3048, "unit"),
    ("12 inches", 0.3048, "unit"),
    ("3 yards", 2.7432, "unit"),
    ("4 in.", 0.1016, "unit"),
    ("2,5 m", 2.5, "unit"),  # decimal comma
    ("1,500 mm", 1.5, "unit"),  # thousands separator
    ("3/4 in", 0.01905, "unit"),
    ("two meters", 2.0, "unit"),
    ("seventeen meters", 17.0, "unit"),
    ("twenty-five feet", 7.62, "unit"),
    ("half a metre", 0.5, "unit"),
    ("a foot", 0.3048, "unit"),
    ("3 ft 4 in", 1.016, "compound"),
    ("3 ft 4 in tall", 1.016, "compound"),
    ("5'2\"", 1.5748, "compound"),
    ("5\u20322\u2033", 1.5748, "compound"),
    ("1 m 20 cm", 1.2, "compound"),
    ("2-3 m", 2.5, "range"),
    ("2\u20133 m", 2.5, "range"),
    ("2 to 3 meters", 2.5, "range"),
    ("between 2 and 3 m", 2.5, "range"),
    ("2m-3m", 2.5, "range"),
    ("about 2 m, maybe 3 m", 2.0, "unit"),  # the first length with a unit
    ("5 m away from the 2 cubes", 5.0, "unit"),  # unitless numbers are ignored next to a length
    ("2.5", 2.5, "bare_number"),  # bare numbers are metres
    ("The answer is 7", 7.0, "bare_number"),
    ("2 in the image", 2.0, "bare_number"),  # "in" the preposition, not inches
    ("-2 m", -2.0, "unit"),  # read; metrics count it as a failure
    ("0 m", 0.0, "unit"),
    ("no idea", None, "no_number"),
    ("", None, "no_number"),
    ("the red one", None, "no_number"),
    ("1 and 2", None, "several_bare_numbers"),
]


@pytest.mark.parametrize(("answer", "metres", "reason"), LENGTH_CASES)
def test_parse_length(answer, metres, reason):
    parsed = parse_length(answer)
    assert parsed.reason == reason
    if metres is None:
        assert parsed.metres is None and not parsed.ok
    else:
        assert parsed.metres == pytest.approx(metres, rel=1e-9)


def test_parse_length_counts_candidates_and_can_refuse_bare_numbers():
    assert parse_length("about 2 m, maybe 3 m").candidates == 2
    refused = parse_length("2.5", bare_number_unit=None)
    assert refused.metres is None and refused.reason == "bare_number_not_allowed"
    assert parse_length("2.5", bare_number_unit="cm").metres == pytest.approx(0.025)


def test_unit_to_metres():
    assert unit_to_metres("centimeters") == 0.01
    assert unit_to_metres("Feet") == 0.3048
    assert unit_to_metres("inches") == 0.0254
    with pytest.raises(ValueError, match="Unknown length unit 'parsecs'"):
        unit_to_metres("parsecs")


# ---------------------------------------------------------------------------------------------------------------
# Choices, orders, counts
# ---------------------------------------------------------------------------------------------------------------
PAIR = ["purple cone", "cyan sphere"]
CHOICE_CASES = [
    # (prediction, choices, lettered, index, reason)
    ("The purple cone.", PAIR, False, 0, "exact"),
    ("CYAN SPHERE", PAIR, False, 1, "exact"),
    ("It is the cyan sphere, clearly.", PAIR, False, 1, "contains"),
    ("purple cone is closer than the cyan sphere", PAIR, False, 0, "leading"),
    ("closer than the cyan sphere is the purple cone", PAIR, False, None, "ambiguous"),
    ("purple cone or cyan sphere", PAIR, False, None, "ambiguous"),  # a hedge names no answer
    ("the yellow cube", PAIR, False, None, "no_match"),
    ("", PAIR, False, None, "empty"),
    ("left", ["left", "right"], False, 0, "exact"),
    ("To the right.", ["left", "right"], False, 1, "contains"),
    ("(B)", ["lamp", "pillow"], True, 1, "letter"),
    ("B", ["lamp", "pillow"], True, 1, "letter"),
    ("Answer: A", ["lamp", "pillow"], True, 0, "letter"),
    ("(B) pillow", ["lamp", "pillow"], True, 1, "letter"),
    ("The lamp.", ["lamp", "pillow"], True, 0, "contains"),
    ("B", ["lamp", "pillow"], False, None, "no_match"),  # letters only count where options were lettered
    ("(C)", ["lamp", "pillow"], True, None, "no_match"),  # no option C
    ("A is closer", ["A is closer", "B is closer"], True, 0, "exact"),
    ("Point B is closer.", ["A is closer", "B is closer"], True, 1, "contains"),
    ("a red cube", ["cube", "red cube"], False, 1, "exact"),
    ("it is a red cube", ["cube", "red cube"], False, 1, "contains"),  # "cube" inside "red cube" is no mention
]


@pytest.mark.parametrize(("prediction", "choices", "lettered", "index", "reason"), CHOICE_CASES)
def test_match_choice(prediction, choices, lettered, index, reason):
    match = match_choice(prediction, choices, lettered=lettered)
    assert (match.index, match.reason) == (index, reason)


def test_normalize_answer():
    assert normalize_answer("  The Red-cube!! ") == "red cube"
    assert normalize_answer("A") == "a"  # nothing left without the article: kept
    assert normalize_answer("A is closer", drop_articles=False) == "a is closer"


def test_match_order():
    choices = ["purple cylinder", "red cone", "white cube"]
    assert match_order("red cone, white cube, purple cylinder", choices).order == [1, 2, 0]
    assert match_order("The red cone is nearest, then the white cube, then the purple cylinder.", choices).order == [
        1,
        2,
        0,
    ]
    missing = match_order("red cone, white cube", choices)
    assert (missing.order, missing.reason) == (None, "missing")
    assert match_order("", choices).reason == "empty"


@pytest.mark.parametrize(
    ("answer", "count"), [("3", 3), ("three objects", 3), ("There are 12 objects.", 12), ("2.5", None), ("none", None)]
)
def test_parse_count(answer, count):
    assert parse_count(answer) == count


# ---------------------------------------------------------------------------------------------------------------
# Metrics on hand-made predictions
# ---------------------------------------------------------------------------------------------------------------
def metric(question_type, truth):
    return SpatialSample("", "q", question_type, f"{truth:.2f} m", answer_value=truth)


HAND_MADE = [
    # distance_to_camera: ratios 1.1 (δ₁ ok), 1.5 (only within 2x), unreadable
    (metric("distance_to_camera", 2.0), "2.2 m"),
    (metric("distance_to_camera", 2.0), "300 cm"),
    (metric("distance_to_camera", 4.0), "no idea"),
    # object_height: 0 m (read, fails), 40 inches (δ₁ ok), bare 1.1 = metres (ratio 2.2, fails both)
    (metric("object_height", 1.0), "0 m"),
    (metric("object_height", 1.0), "3 ft 4 in"),
    (metric("object_height", 0.5), "1.1"),
    (SpatialSample("", "q", "closer", "purple cone", choices=PAIR), "the purple cone"),
    (SpatialSample("", "q", "closer", "purple cone", choices=PAIR), "neither"),
    (
        SpatialSample(
            "",
            "q",
            "depth_order",
            "red cone, white cube, purple cylinder",
            choices=["white cube", "red cone", "purple cylinder"],
        ),
        "red cone, white cube, purple cylinder",
    ),
    (
        SpatialSample(
            "",
            "q",
            "depth_order",
            "red cone, white cube, purple cylinder",
            choices=["white cube", "red cone", "purple cylinder"],
        ),
        "white cube, red cone, purple cylinder",
    ),
    (SpatialSample("", "q", "count", "3"), "three"),
    (SpatialSample("", "q", "color", "red"), "It is red."),
    (SpatialSample("", "q", "color", "red"), "red or blue"),  # the colour vocabulary makes this ambiguous
]


@pytest.fixture(scope="module")
def hand_made_results():
    samples = [copy.copy(sample) for sample, _ in HAND_MADE]
    for index, sample in enumerate(samples):
        sample.id = f"s{index}"
    return evaluate.build_results(samples, [prediction for _, prediction in HAND_MADE], label="hand-made")


def test_metrics_per_type(hand_made_results):
    per_type = hand_made_results["metrics"]["per_type"]
    assert list(per_type) == ["distance_to_camera", "closer", "depth_order", "object_height", "color", "count"]
    distance = per_type["distance_to_camera"]
    assert (distance["num_samples"], distance["num_metric"], distance["num_parseable"]) == (3, 3, 2)
    assert distance["delta1"] == pytest.approx(1 / 3)
    assert distance["within_2x"] == pytest.approx(2 / 3)
    assert distance["abs_rel"] == pytest.approx((0.1 + 0.5) / 2)  # readable answers only
    assert distance["num_unparseable"] == 1
    assert distance["accuracy"] is None and distance["num_choice"] == 0
    height = per_type["object_height"]
    assert (height["num_parseable"], height["num_unparseable"]) == (3, 0)
    assert height["delta1"] == pytest.approx(1 / 3)
    assert height["within_2x"] == pytest.approx(1 / 3)
    assert height["abs_rel"] == pytest.approx((1.0 + 0.016 + 1.2) / 3)
    assert per_type["closer"]["accuracy"] == 0.5 and per_type["closer"]["num_unparseable"] == 1
    assert per_type["closer"]["delta1"] is None
    assert per_type["depth_order"]["accuracy"] == 0.5 and per_type["depth_order"]["num_unparseable"] == 0
    assert per_type["count"]["accuracy"] == 1.0
    assert per_type["color"]["accuracy"] == 0.5 and per_type["color"]["num_unparseable"] == 1


def test_metrics_overall_and_unparseable_report(hand_made_results):
    overall = hand_made_results["metrics"]["overall"]
    assert (overall["num_samples"], overall["num_metric"], overall["num_parseable"]) == (13, 6, 5)
    assert overall["delta1"] == pytest.approx(2 / 6)
    assert overall["within_2x"] == pytest.approx(3 / 6)
    assert overall["abs_rel"] == pytest.approx((0.1 + 0.5 + 1.0 + 0.016 + 1.2) / 5)
    assert overall["accuracy"] == pytest.approx(4 / 7)
    assert overall["num_unparseable"] == 3
    report = hand_made_results["unparseable"]
    assert report["count"] == 3
    assert report["by_type"] == {"distance_to_camera": 1, "closer": 1, "color": 1}
    assert report["by_reason"] == {"no_number": 1, "no_match": 1, "ambiguous": 1}
    assert [e["prediction"] for e in report["examples"]] == ["no idea", "neither", "red or blue"]
    records = hand_made_results["predictions"]
    assert len(records) == 13  # every prediction kept, readable or not
    assert records[0]["ratio"] == pytest.approx(1.1) and records[0]["delta1"] is True
    assert records[3]["parsed"] == 0.0 and records[3]["ratio"] is None and records[3]["delta1"] is False


def test_markdown_table_and_plots(hand_made_results, tmp_path):
    table = evaluate.markdown_table(hand_made_results)
    assert "| distance_to_camera | 3 | 0.333 | 0.300 (2/3) | 0.667 | – | 1 |" in table
    assert "| **overall** | 13 | 0.333 | 0.563 (5/6) | 0.500 | 0.571 | 3 |" in table
    paths = evaluate.write_outputs(hand_made_results, tmp_path / "one")
    assert json.loads(paths["json"].read_text())["metrics"] == hand_made_results["metrics"]
    assert "Unparseable answers: 3" in paths["markdown"].read_text()
    assert Image.open(paths["plot"]).size[0] > 500

    better = copy.deepcopy(hand_made_results)
    better["metrics"]["per_type"]["closer"]["accuracy"] = 1.0
    (tmp_path / "better.json").write_text(json.dumps(better))
    table = evaluate.main(
        ["compare", "--results", str(paths["json"]), str(tmp_path / "better.json"), "--labels", "rgb", "depth"]
        + ["--out", str(tmp_path / "compare.png"), "--markdown", str(tmp_path / "compare.md")]
    )
    assert "| closer | accuracy | 0.500 | 1.000 |" in table
    assert "| overall | δ₁ | 0.333 | 0.333 |" in table
    assert (tmp_path / "compare.md").read_text().strip() == table
    assert Image.open(tmp_path / "compare.png").format == "PNG"


def test_prompt_text_lists_lettered_options_then_the_instruction():
    sample = SpatialSample(
        "x", "Which is closer?", "cvbench_depth", "pillow", choices=["lamp", "pillow"], options_lettered=True
    )
    assert evaluate.prompt_text(sample) == f"Which is closer?\n(A) lamp\n(B) pillow\n{evaluate.ANSWER_INSTRUCTION}"
    assert evaluate.prompt_text(SpatialSample("x", "How far?", "t", "1 m"), "") == "How far?"


# ---------------------------------------------------------------------------------------------------------------
# Benchmark readers on fixtures in the published schemas
# ---------------------------------------------------------------------------------------------------------------
def test_cvbench3d_reader_parquet_and_jsonl():
    data = read_benchmark("cvbench3d", FIXTURES / "cvbench")  # the folder: test_3d.parquet
    assert [s.question_type for s in data.samples] == ["cvbench_depth"] * 2 + ["cvbench_distance"] * 2
    assert [s.answer for s in data.samples] == ["pillow", "chair", "shelves", "plant"]
    assert data.samples[0].choices == ["lamp", "pillow"] and data.samples[0].options_lettered
    assert data.samples[0].answer_value is None and data.samples[0].depth is None
    assert data.info.as_dict() == {
        "name": "CV-Bench (3D)",
        "type": "nyu-visionx/CV-Bench",
        "config": "3D",
        "split": "test",
    }
    assert load_image(data.samples[0].image).size == (32, 24)

    raw = read_benchmark("cv-bench", FIXTURES / "cvbench" / "test.jsonl")  # raw release: images under img/
    assert dict(raw.skipped) == {"not_3d": 1}
    assert [(s.id, s.answer) for s in raw.samples] == [(s.id, s.answer) for s in data.samples]
    assert load_image(raw.samples[3].image).mode == "RGB"


def test_blink_reader_keeps_answered_rows_and_counts_hidden_ones():
    data = read_benchmark("blink_depth", FIXTURES / "blink")
    assert [s.id for s in data.samples] == ["val_Relative_Depth_1", "val_Relative_Depth_2", "val_Relative_Depth_3"]
    assert [s.answer for s in data.samples] == ["B is closer", "A is closer", "B is closer"]
    assert {s.question_type for s in data.samples} == {"blink_relative_depth"}
    assert data.info.split == "val" and data.info.config == "Relative_Depth"
    hidden = read_benchmark("blink", FIXTURES / "blink" / "Relative_Depth" / "test-00000-of-00001.parquet")
    assert hidden.samples == [] and dict(hidden.skipped) == {"answer_hidden": 1}


def test_qspatial_reader_converts_units_and_finds_scannet_images():
    data = read_benchmark("qspatial", FIXTURES / "qspatial")
    assert [s.question_type for s in data.samples] == ["qspatial_plus"] * 3 + ["qspatial_scannet"]
    assert [s.answer_value for s in data.samples] == pytest.approx([0.96, 1.5, 3 * 0.3048, 80 * 0.0254])
    assert [s.answer for s in data.samples] == ["96 centimeters", "1.5 meters", "3 feet", "80 inches"]
    assert dict(data.skipped) == {"image_missing": 1}  # the second ScanNet image was never downloaded
    assert load_image(data.samples[3].image).size == (32, 24)
    assert data.info.type == "andrewliao11/Q-Spatial-Bench"


def test_unknown_benchmark_and_missing_path():
    with pytest.raises(ValueError, match="Unknown benchmark 'vsibench'"):
        read_benchmark("vsibench", FIXTURES)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_benchmark("cvbench3d", FIXTURES / "nowhere")


# ---------------------------------------------------------------------------------------------------------------
# End to end on a tiny depth model
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world_24(tmp_path_factory):
    """24 rendered questions (4 test scenes x 6), two of each type, with exact metric depth."""
    out = tmp_path_factory.mktemp("world_24")
    write_dataset(WorldConfig("test", 4, 0, 224, 6, 4), out, progress=False)
    return out


@pytest.fixture(scope="module")
def depth_model_folder(tiny_base, tmp_path_factory):
    torch.manual_seed(0)
    model, processor = build_depth_model(tiny_base, depth_fusion="add")
    with torch.no_grad():
        model.model.depth_gate.gate.fill_(0.5)  # depth changes the answer path
    folder = tmp_path_factory.mktemp("eval_depth_add")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_evaluate_run_end_to_end(depth_model_folder, world_24, tmp_path, capsys):
    out = tmp_path / "eval"
    results = evaluate.main(
        ["run", "--model", str(depth_model_folder), "--data", str(world_24), "--out", str(out)]
        + ["--batch-size", "8", "--max-new-tokens", "6", "--device", "cpu", "--no-progress"]
    )
    saved = json.loads((out / "results.json").read_text())
    assert saved["metrics"] == results["metrics"]
    assert saved["num_samples"] == 24 and len(saved["predictions"]) == 24
    assert saved["depth_fusion"] == "add" and saved["depth_source"] == {"dataset": 24}
    assert saved["dataset"]["split"] == "test" and saved["instruction"] == evaluate.ANSWER_INSTRUCTION
    per_type = saved["metrics"]["per_type"]
    assert len(per_type) == 12 and all(m["num_samples"] == 2 for m in per_type.values())
    overall = saved["metrics"]["overall"]
    assert overall["num_metric"] == 10 and overall["num_choice"] == 14  # 5 metric types x 2
    # An untrained model's answers are noise: whatever could not be read is counted, listed and scored as wrong.
    unread = [r for r in saved["predictions"] if not r["parse_ok"]]
    assert saved["unparseable"]["count"] == overall["num_unparseable"] == len(unread)
    assert all(not r["correct"] for r in unread)
    assert overall["num_parseable"] == sum(r["parse_ok"] for r in saved["predictions"] if r["kind"] == "metric")
    for record in saved["predictions"]:
        assert {"id", "question_type", "prediction", "parsed", "parse_ok", "parse_reason", "correct"} <= set(record)
    markdown = (out / "results.md").read_text()
    assert markdown.count("\n| ") == 14  # separator + 12 types + overall
    assert Image.open(out / "results.png").format == "PNG"
    assert "| **overall** | 24 |" in capsys.readouterr().out


def test_answer_samples_gives_the_model_depth_from_data_or_estimator(depth_models, tmp_path, monkeypatch):
    model, processor = depth_models["concat"]
    received = []
    original_generate = model.generate

    def spy(**inputs):
        # concat: an image with depth has twice its merged tokens as placeholders, one without depth as many.
        placeholders = int((inputs["input_ids"] == processor.image_token_id).sum())
        placeholders_per_token = placeholders // int(inputs["image_grid_thw"].prod(-1).sum() // 4)
        received.append((inputs.get("depth_values") is not None, placeholders_per_token, inputs["input_ids"].shape[0]))
        return original_generate(**inputs)

    monkeypatch.setattr(model, "generate", spy)
    samples = read_benchmark("cvbench3d", FIXTURES / "cvbench").samples[:3]

    answers, sources = evaluate.answer_samples(
        model, processor, samples, batch_size=2, max_new_tokens=2, progress=False
    )
    assert len(answers) == 3 and dict(sources) == {"none": 3}  # no depth in the data, no estimator: RGB only
    assert received == [(False, 1, 2), (False, 1, 1)]

    received.clear()
    estimating = reconfigured(processor, depth_estimator=str(save_tiny_depth_anything(tmp_path / "da")))
    answers, sources = evaluate.answer_samples(
        model, estimating, samples, batch_size=3, max_new_tokens=2, progress=False
    )
    assert dict(sources) == {"estimator": 3}
    assert received == [(True, 2, 3)]  # depth values and depth tokens reached the model

    received.clear()
    _, sources = evaluate.answer_samples(
        model, estimating, samples, batch_size=3, max_new_tokens=2, use_depth=False, progress=False
    )
    assert dict(sources) == {"none": 3} and received == [(False, 1, 3)]
    assert estimating.depth_estimator is not None  # --no-depth only switches the estimator off for the run


def test_the_image_arm_is_evaluated_with_its_depth_pictures(tiny_base, world_24, tmp_path, monkeypatch):
    """A folder of SpatialBot's arm (an RGB-only model) loads with its processor, which adds each depth picture."""
    torch.manual_seed(0)
    model, processor = build_depth_model(tiny_base, depth_fusion="image")
    model.save_pretrained(tmp_path / "image_arm")
    processor.save_pretrained(tmp_path / "image_arm")
    model, processor = evaluate.load_model_and_processor(tmp_path / "image_arm", device="cpu")
    assert type(processor).__name__ == "DepthAsImageProcessor" and model.config.depth_fusion == "none"
    received = []
    original_generate = model.generate

    def spy(**inputs):
        received.append((inputs["image_grid_thw"].shape[0], "depth_values" in inputs))
        return original_generate(**inputs)

    monkeypatch.setattr(model, "generate", spy)
    samples = read_benchmark("world", world_24).samples[:3]
    _, sources = evaluate.answer_samples(model, processor, samples, batch_size=3, max_new_tokens=2, progress=False)
    assert dict(sources) == {"dataset": 3}
    assert received == [(6, False)]  # each sample's image and its depth picture, no depth_values


def test_scores_are_finite_numbers_or_none(hand_made_results):
    for metrics in [hand_made_results["metrics"]["overall"], *hand_made_results["metrics"]["per_type"].values()]:
        for key in ("delta1", "abs_rel", "within_2x", "accuracy"):
            assert metrics[key] is None or math.isfinite(metrics[key])


@pytest.mark.parametrize("override", ["shuffled", "constant"])
def test_a_depth_override_reaches_the_model_and_the_results(
    depth_model_folder, world_24, tmp_path, monkeypatch, override
):
    """`--depth-override`: every question is asked with another scene's depth (shuffled) or one constant map, and the
    results say so."""
    from training.controls import UNINFORMATIVE_DEPTH_M, scene_of

    seen = []
    original = evaluate.answer_samples

    def spy(model, processor, samples, **kwargs):
        seen.extend(samples)
        return original(model, processor, samples, **kwargs)

    monkeypatch.setattr(evaluate, "answer_samples", spy)
    out = tmp_path / override
    results = evaluate.main(
        ["run", "--model", str(depth_model_folder), "--data", str(world_24), "--out", str(out), "--limit", "12"]
        + ["--depth-override", override, "--max-new-tokens", "4", "--device", "cpu", "--no-progress"]
    )
    assert results["depth_override"] == override and results["depth_source"] == {"dataset": 12}
    own = {scene_of(s): decode_depth_cell(s.depth) for s in read_benchmark("world", world_24).samples[:12]}
    for sample in seen:
        depth = load_depth(sample.depth)
        if override == "constant":
            assert np.all(depth == UNINFORMATIVE_DEPTH_M)
        else:
            assert not np.array_equal(depth, own[scene_of(sample)])


def test_the_constant_baseline_answers_every_question_with_its_types_fitted_answer(world_24, tmp_path):
    from collections import Counter

    results = evaluate.main(["constant", "--train", str(world_24), "--data", str(world_24), "--out", str(tmp_path)])
    assert results["model"] == "constant" and results["num_samples"] == 24
    assert json.loads((tmp_path / "results.json").read_text())["constants"] == results["constants"]
    by_type = {}
    for record in results["predictions"]:
        by_type.setdefault(record["question_type"], []).append(record)
    for question_type, records in by_type.items():
        assert len({r["prediction"] for r in records if not r["choices"]}) <= 1, question_type  # one answer per type
    # Fitted and scored on the same rows: counts score the majority answer's share, lengths parse as metres.
    counts = Counter(r["answer"] for r in by_type["count"])
    assert results["metrics"]["per_type"]["count"]["accuracy"] == max(counts.values()) / len(by_type["count"])
    assert results["metrics"]["overall"]["num_parseable"] == results["metrics"]["overall"]["num_metric"]
