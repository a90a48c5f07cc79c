"""Hub export: folder contents, fresh-process validation, model-index metadata, and the model card's usage snippets
run against the exported tiny model (so the card cannot go stale)."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from safetensors import safe_open

from configuration_depth import DEPTH_FUSION_MODES, DEPTH_FUSIONS, Qwen2_5_VLDepthConfig
from training import evaluate, export
from training.benchmarks import read_benchmark
from training.make_world import WorldConfig, write_dataset
from training.model_loading import load_depth_model
from training.provenance import base_model_provenance, hub_base_model
from training.tiny import save_tiny_depth_anything


ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures" / "benchmarks"
REPO_ID = "someone/qwen2_5_vl_depth-tiny"


def oracle_predictions(samples) -> list[str]:
    """Right answers, metric ones 10% long, one question left unanswered: known metrics to find in the card."""
    predictions = [f"{s.answer_value * 1.1:.4f} m" if s.answer_value is not None else s.answer for s in samples]
    predictions[0] = "I cannot tell."
    return predictions


@pytest.fixture(scope="module")
def results_files(tmp_path_factory):
    """A world results.json (6 questions, one scene) and a CV-Bench 3D one, as training.evaluate writes them."""
    folder = tmp_path_factory.mktemp("results")
    write_dataset(WorldConfig("test", 1, 0, 64, 6, 1), folder / "world", progress=False)
    paths = []
    for name, benchmark, path, predictions in [
        ("world", "world", folder / "world", None),
        ("cvbench", "cvbench3d", FIXTURES / "cvbench", ["(B)", "chair", "no idea", "plant"]),
    ]:
        data = read_benchmark(benchmark, path)
        results = evaluate.build_results(
            data.samples,
            predictions or oracle_predictions(data.samples),
            label=name,
            benchmark=benchmark,
            dataset=data.info.as_dict(),
            depth_source={"dataset": len(data.samples)} if benchmark == "world" else {"none": len(data.samples)},
            instruction=evaluate.ANSWER_INSTRUCTION,
        )
        paths.append(evaluate.write_outputs(results, folder / name)["json"])
    return paths


def hub_snapshot(tiny_base, cache: Path, repo_id: str = "Qwen/Qwen2.5-VL-3B-Instruct") -> Path:
    """The tiny base where the hub cache would keep `repo_id`'s download (what `from_pretrained(repo_id)` reads)."""
    owner, name = repo_id.split("/")
    snapshot = cache / f"models--{owner}--{name}" / "snapshots" / "0123456789abcdef"
    shutil.copytree(tiny_base, snapshot)
    return snapshot


@pytest.fixture(scope="module")
def exported(tiny_base, results_files, tmp_path_factory):
    """A tiny `add` depth model (gate open) built from "Qwen/Qwen2.5-VL-3B-Instruct" (the tiny base in the hub
    cache's layout), exported with both results; the export's summary."""
    model, processor = load_depth_model(hub_snapshot(tiny_base, tmp_path_factory.mktemp("hub_cache")), "add")
    with torch.no_grad():
        model.model.depth_gate.gate.fill_(0.5)
    source = tmp_path_factory.mktemp("source")
    model.save_pretrained(source)
    processor.save_pretrained(source)
    out = tmp_path_factory.mktemp("hub") / "qwen2_5_vl_depth-tiny"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf_home")))  # the fresh process's module cache
        summary = export.main(
            ["--model", str(source), "--out", str(out), "--results", *map(str, results_files), "--repo-id", REPO_ID]
            + ["--training-summary", "Tiny random test model."]
        )
    return summary


def test_export_folder_holds_weights_config_code_processor_and_card(exported):
    folder = Path(exported["folder"])
    assert set(exported["files"]) == {
        "README.md",
        "chat_template.jinja",
        "config.json",
        "configuration_depth.py",
        "eval_results.json",
        "fast_qwen2_5_vl.py",
        "generation_config.json",
        "model.safetensors",
        "modeling_qwen2_5_vl_depth.py",
        "processing_depth.py",
        "processor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    }
    for code_file in export.REMOTE_CODE_FILES:  # the checkout's code, byte for byte
        assert (folder / code_file).read_bytes() == (ROOT / code_file).read_bytes(), code_file
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_depth.Qwen2_5_VLDepthConfig",
        "AutoModel": "modeling_qwen2_5_vl_depth.Qwen2_5_VLDepthForConditionalGeneration",
        "AutoModelForImageTextToText": "modeling_qwen2_5_vl_depth.Qwen2_5_VLDepthForConditionalGeneration",
    }
    assert config["depth_fusion"] == "add"
    processor_config = json.loads((folder / "processor_config.json").read_text())
    assert processor_config["auto_map"] == {"AutoProcessor": "processing_depth.Qwen2_5_VLDepthProcessor"}
    with safe_open(folder / "model.safetensors", "pt") as weights:
        assert bool((weights.get_tensor("model.depth_gate.gate") == 0.5).all())
        assert any(key.startswith("model.depth_encoder.blocks.") for key in weights.keys())
    summaries = json.loads((folder / "eval_results.json").read_text())
    assert [s["label"] for s in summaries] == ["world", "cvbench"]
    assert all("predictions" not in s and "metrics" in s for s in summaries)


def test_export_is_validated_in_a_fresh_offline_process(exported):
    report = exported["validation"]
    for key in ("AutoConfig", "AutoProcessor", "AutoModel", "AutoModelForImageTextToText"):
        assert report[key].startswith("transformers_modules."), (key, report[key])
    assert report["AutoModelForImageTextToText"].endswith("Qwen2_5_VLDepthForConditionalGeneration")
    assert report["depth_fusion"] == "add"
    assert report["logits_finite"] and report["logits_shape"][-1] == 512
    assert report["max_abs_logit_difference"] == 0.0


def test_card_metadata_and_model_index(exported, results_files):
    card = ModelCard.load(Path(exported["folder"]) / "README.md")
    data = card.data
    assert data.library_name == "transformers" and data.pipeline_tag == "image-text-to-text"
    assert data.base_model == "Qwen/Qwen2.5-VL-3B-Instruct"  # what the model's config records, not a default
    assert "[Qwen/Qwen2.5-VL-3B-Instruct](https://huggingface.co/Qwen/Qwen2.5-VL-3B-Instruct)" in card.text
    assert (data.license, data.license_name) == ("other", "qwen-research")  # the 3B base's licence
    assert {"custom_code", "depth", "spatial-reasoning", "depth-fusion-add"} <= set(data.tags)
    assert data.model_name == "qwen2_5_vl_depth-tiny"

    results = [json.loads(p.read_text()) for p in results_files]
    by_name = {(r.dataset_type, r.metric_name): r for r in data.eval_results}
    assert len(data.eval_results) == len(by_name)  # one entry per (dataset, metric, group)
    world, cvbench = results
    overall = world["metrics"]["overall"]
    assert by_name[("rendered-rgbd-world", "δ₁ (overall)")].metric_value == round(overall["delta1"], 4)
    assert by_name[("rendered-rgbd-world", "AbsRel (overall)")].metric_value == pytest.approx(0.1, abs=1e-3)
    distance = by_name[("nyu-visionx/CV-Bench", "accuracy (cvbench_distance)")]
    assert (distance.metric_value, distance.metric_type, distance.task_type) == (0.5, "accuracy", "image-text-to-text")
    assert (distance.dataset_name, distance.dataset_config, distance.dataset_split) == ("CV-Bench (3D)", "3D", "test")
    assert by_name[("nyu-visionx/CV-Bench", "accuracy (cvbench_depth)")].metric_value == 1.0
    expected_count = sum(
        sum(metrics[key] is not None for key in export.METRIC_LABELS)
        for r in results
        for metrics in [r["metrics"]["overall"], *r["metrics"]["per_type"].values()]
    )
    assert len(data.eval_results) == expected_count
    assert "| **overall** | 4 | – | – | – | 0.750 | 1 |" in card.text  # the CV-Bench table
    assert "Tiny random test model." in card.text
    assert f'model_id = "{REPO_ID}"' in card.text


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, re.DOTALL)


def test_card_usage_snippets_run_against_the_export(exported, tmp_path):
    folder = Path(exported["folder"])
    blocks = python_blocks((folder / "README.md").read_text())
    assert len(blocks) == 2  # with a depth map; without one, through an estimator
    estimator = save_tiny_depth_anything(tmp_path / "depth_anything")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(tmp_path / "scene.png")
    depth_mm = np.linspace(500, 8000, 48)[:, None].repeat(64, axis=1).astype(np.uint16)
    Image.fromarray(depth_mm).save(tmp_path / "scene_depth.png")
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    environment.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    for block, uses_estimator in zip(blocks, (False, True)):
        assert f'"{REPO_ID}"' in block
        assert (export.EXAMPLE_DEPTH_ESTIMATOR in block) == uses_estimator
        code = block.replace(f'"{REPO_ID}"', repr(str(folder))).replace(export.EXAMPLE_DEPTH_ESTIMATOR, str(estimator))
        # The snippet must have given the model depth: from the PNG, or from the estimator.
        code += '\nassert inputs["depth_values"].shape[1] == 14 * 14, inputs.keys()\nprint("SNIPPET OK")\n'
        result = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.strip().endswith("SNIPPET OK")


def test_rgb_only_card_has_an_rgb_snippet(depth_models):
    model, processor = depth_models["none"]
    card = export.build_model_card(model, processor, [], "rgb-baseline", "someone/rgb", "Qwen/Qwen2.5-VL-7B-Instruct")
    blocks = python_blocks(card.content)
    assert len(blocks) == 1 and '"depth"' not in blocks[0] and "depth_estimator" not in blocks[0]
    assert card.data.license == "apache-2.0" and card.data.eval_results is None
    assert "No evaluation results were attached" in card.content
    assert "| depth encoder | none: the RGB-only baseline |" in card.content


@pytest.mark.parametrize("fusion", DEPTH_FUSION_MODES)
def test_every_fusion_mode_gets_a_card_that_describes_it(depth_models, fusion):
    model, processor = depth_models[fusion]
    card = export.build_model_card(model, processor, [], "tiny", "someone/tiny", "Qwen/Qwen2.5-VL-7B-Instruct")
    row = DEPTH_FUSIONS[fusion]
    assert f"| depth fusion | `{fusion}` |" in card.content
    assert row.summary in card.content and row.details in card.content
    assert ("Qwen2.5-VL vision blocks, width" in card.content) == row.has_depth_encoder


@pytest.mark.parametrize(
    ("license", "base", "expected"),
    [
        (None, "Qwen/Qwen2.5-VL-3B-Instruct", ("other", "qwen-research")),
        (None, "Qwen/Qwen2.5-VL-72B-Instruct", ("other", "qwen")),
        (None, "Qwen/Qwen2.5-VL-7B-Instruct", ("apache-2.0", None)),
        ("mit", "Qwen/Qwen2.5-VL-3B-Instruct", ("mit", None)),  # --license wins
        (None, None, ("apache-2.0", None)),  # built from a local folder
    ],
)
def test_resolve_license(license, base, expected):
    resolved = export.resolve_license(license, base)
    assert resolved[:2] == expected
    if base is None:
        assert resolved[3] == "Released under `apache-2.0`."
    else:
        assert base in resolved[3]  # the note names the base whose terms apply


def test_base_model_provenance(tiny_base, tmp_path, monkeypatch):
    assert base_model_provenance("Qwen/Qwen2.5-VL-7B-Instruct") == "Qwen/Qwen2.5-VL-7B-Instruct"  # not a folder
    assert base_model_provenance(hub_snapshot(tiny_base, tmp_path)) == "Qwen/Qwen2.5-VL-3B-Instruct"
    # A local folder is recorded by its absolute path, even when named like a hub id: "runs/base" below.
    shutil.copytree(tiny_base, tmp_path / "runs" / "base")
    monkeypatch.chdir(tmp_path)
    assert base_model_provenance("runs/base") == str(tmp_path / "runs" / "base")
    recorded = {"Qwen/Qwen2.5-VL-7B-Instruct": "Qwen/Qwen2.5-VL-7B-Instruct", str(tmp_path): None, None: None}
    for value, hub_id in recorded.items():
        assert hub_base_model(SimpleNamespace(base_model_name_or_path=value)) == hub_id
    assert hub_base_model(SimpleNamespace()) is None  # a folder saved before the base was recorded


def test_a_model_built_from_a_local_folder_names_no_base_model(tiny_base, tmp_path):
    """The base is recorded in config.json when the depth model is built, survives saving and loading (unlike
    `config._name_or_path`), and a local one is left out of the card rather than published as a hub model."""
    model, processor = load_depth_model(tiny_base, "add")
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    saved = json.loads((tmp_path / "model" / "config.json").read_text())
    assert saved["base_model_name_or_path"] == str(Path(tiny_base).resolve())
    model, processor = export.load_exportable_model(tmp_path / "model")
    card = export.build_model_card(model, processor, [], "local-depth", "someone/local-depth")
    assert card.data.base_model is None and "base_model:" not in str(card)
    assert card.data.license == "apache-2.0"
    assert "a Qwen2.5-VL model (built from a local checkpoint that is not on the Hub)" in card.text
    assert "| base model | a local Qwen2.5-VL checkpoint, not on the Hub |" in card.text
    assert "huggingface.co/None" not in card.text and str(tiny_base) not in str(card)
    # `--base-model` still names one when the user knows better.
    card = export.build_model_card(model, processor, [], "local-depth", "someone/local", "Qwen/Qwen2.5-VL-7B-Instruct")
    assert card.data.base_model == "Qwen/Qwen2.5-VL-7B-Instruct"


def test_export_refuses_plain_base_folders_and_non_empty_outputs(tiny_base, exported, tmp_path):
    with pytest.raises(ValueError, match="model_type 'qwen2_5_vl'"):
        export.load_exportable_model(tiny_base)
    (tmp_path / "keep.txt").write_text("not a model")
    with pytest.raises(FileExistsError, match="not empty"):
        export._prepare_out_dir(tmp_path, Path(exported["folder"]), overwrite=False)
    with pytest.raises(FileExistsError, match="does not look like a model folder"):
        export._prepare_out_dir(tmp_path, Path(exported["folder"]), overwrite=True)
    assert (tmp_path / "keep.txt").exists()


def test_build_depth_model_records_its_base_through_save(depth_models, tiny_base, tmp_path):
    model, _ = depth_models["add"]
    assert model.config.base_model_name_or_path == str(tiny_base.resolve())
    model.save_pretrained(tmp_path)
    reloaded = Qwen2_5_VLDepthConfig.from_pretrained(tmp_path)
    assert reloaded.base_model_name_or_path == str(tiny_base.resolve())


def test_a_points_cards_states_its_input_and_the_camera_it_assumes(tiny_base):
    from configuration_depth import DEPTH_INPUTS
    from training.build_depth_model import build_depth_model

    model, processor = build_depth_model(tiny_base, depth_fusion="add", depth_input="points")
    card = export.build_model_card(model, processor, [], "tiny", "someone/tiny", "Qwen/Qwen2.5-VL-7B-Instruct")
    assert f"| depth input | `points`: {DEPTH_INPUTS['points'].summary} |" in card.content
    assert "Without intrinsics the model assumes a 60° horizontal field of view" in card.content
    depth_model, depth_processor = build_depth_model(tiny_base, depth_fusion="add")
    depth_card = export.build_model_card(depth_model, depth_processor, [], "tiny", "someone/tiny", None)
    assert "| depth input | `depth`:" in depth_card.content and "are not used by this model" in depth_card.content
