"""Export a Qwen2.5-VL-Depth folder for the Hub: weights, config, remote code, processor and a filled model card,
validated by loading it in a fresh offline Python process; optionally uploaded.

    python -m training.export --model runs/sft-add/merged --out runs/hub/qwen2_5_vl_3b_depth \\
        --results runs/eval/add/results.json runs/eval/add-cvbench/results.json --repo-id you/qwen2_5_vl_3b_depth
    python -m training.export ... --push-to-hub you/qwen2_5_vl_3b_depth [--private]

The folder holds `model.safetensors` (or shards and their index), `config.json` with a complete `auto_map`,
`generation_config.json`, the three remote-code files, the processor and tokenizer files, `README.md` (the model
card, from the template `model_card.md` through `huggingface_hub.ModelCard.from_template`, with every metric of the
`--results` files as `model-index` entries) and `eval_results.json` (those metrics, without per-sample predictions).

Validation (skipped only with `--no-validate`): a fresh Python process with `HF_HUB_OFFLINE=1`, run from elsewhere,
loads the folder through `AutoConfig`, `AutoModel`, `AutoModelForImageTextToText` and `AutoProcessor` with
`trust_remote_code=True`, checks every class comes from the folder's own code, and runs one forward pass on a
synthetic image (with depth when the model has depth); its logits must equal this process's on the same inputs
(`reload_in_fresh_process`, which `training.demo` uses to ask the exported model a question).

Base model: the card's `base_model` is the Hub model the depth model was built from, as its config records it
(`base_model_name_or_path`, written by `training.model_loading.load_depth_model` and kept through alignment, SFT
and merging).
A model built from a local folder names no `base_model` (a path means nothing on the Hub); `--base-model` overrides.

Merging: `export_merged_model` is where `training.sft` turns its trained adapter into the plain depth-model folder
this exports (in place, or into a rebuilt unquantized model after sharded training or QLoRA:
`merged_model_from_adapter`).

Licence: `--license` sets it. Without it, a known base's licence is used (Qwen2.5-VL-3B-Instruct: "qwen-research",
written as `license: other` with its name and link; Qwen2.5-VL-72B-Instruct: "qwen"), and Apache-2.0 otherwise (the
7B and 32B bases' licence). A fine-tune inherits its base's terms: check them before publishing.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np


if TYPE_CHECKING:
    from trl import ModelConfig, SFTConfig, SFTTrainer

    from modeling_qwen2_5_vl_depth import Qwen2_5_VLDepthForConditionalGeneration
    from training.sft_arguments import SpatialSFTScriptArguments


CARD_TEMPLATE = Path(__file__).resolve().parent.parent / "model_card.md"
REMOTE_CODE_FILES = (
    "configuration_depth.py",
    "fast_qwen2_5_vl.py",
    "modeling_qwen2_5_vl_depth.py",
    "processing_depth.py",
)
# A metric checkpoint: the card's "without a depth map" example should give metres, which relative ones cannot.
EXAMPLE_DEPTH_ESTIMATOR = "depth-anything/Depth-Anything-V2-Metric-Indoor-Small-hf"
TRANSFORMERS_REQUIREMENT = "transformers>=5.24,<5.25"
# (license, license_name, license_link) of bases whose licence is not Apache-2.0.
BASE_LICENSES = {
    "Qwen/Qwen2.5-VL-3B-Instruct": (
        "other",
        "qwen-research",
        "https://huggingface.co/Qwen/Qwen2.5-VL-3B-Instruct/blob/main/LICENSE",
    ),
    "Qwen/Qwen2.5-VL-72B-Instruct": (
        "other",
        "qwen",
        "https://huggingface.co/Qwen/Qwen2.5-VL-72B-Instruct/blob/main/LICENSE",
    ),
}
TAGS = ["custom_code", "depth", "spatial-reasoning", "rgb-d", "qwen2_5_vl", "vision-language", "multimodal"]
METRIC_LABELS = {"delta1": "δ₁", "abs_rel": "AbsRel", "within_2x": "within 2x", "accuracy": "accuracy"}


# ----------------------------------------------------------------------------------------------------------------
# Card
# ----------------------------------------------------------------------------------------------------------------
def resolve_license(license: str | None, base_model: str | None) -> tuple[str, str | None, str | None, str]:
    """(license, license_name, license_link, note for the card) for `--license` or the base model's licence."""
    if license is None and base_model in BASE_LICENSES:
        license, name, link = BASE_LICENSES[base_model]
        note = (
            f"This model is a derivative of [{base_model}](https://huggingface.co/{base_model}) and is distributed\n"
            f"under its **{name}** licence: {link}. Read it before use: it may restrict commercial use."
        )
        return license, name, link, note
    license = license or "apache-2.0"
    note = f"Released under `{license}`."
    if base_model is not None:
        note += (
            f" It is a derivative of [{base_model}](https://huggingface.co/{base_model}): its licence terms apply as "
            "well."
        )
    return license, None, None, note


def _count(number: int) -> str:
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if number >= scale:
            return f"{number / scale:.2f} {suffix}"
    return str(number)


def eval_results_from(results: dict, task_name: str = "Spatial VQA"):
    """`EvalResult`s for a results.json of `training.evaluate`: overall and per question type, one per metric."""
    from huggingface_hub import EvalResult

    dataset = results.get("dataset") or {}
    common = {
        "task_type": "image-text-to-text",
        "task_name": task_name,
        "dataset_type": dataset.get("type") or "unknown",
        "dataset_name": dataset.get("name") or dataset.get("type") or "unknown",
        "dataset_config": dataset.get("config"),
        "dataset_split": dataset.get("split"),
    }
    groups = [("overall", results["metrics"]["overall"]), *results["metrics"]["per_type"].items()]
    evaluated = []
    for group, metrics in groups:
        for key, label in METRIC_LABELS.items():
            value = metrics.get(key)
            if value is not None:
                evaluated.append(
                    EvalResult(
                        **common,
                        metric_type=key,
                        metric_value=round(float(value), 4),
                        metric_name=f"{label} ({group})",
                    )
                )
    return evaluated


def _results_section(results: dict) -> dict:
    from training.evaluate import markdown_table

    dataset = results.get("dataset") or {}
    sources = results.get("depth_source") or {}
    return {
        "dataset_name": dataset.get("name") or results.get("benchmark") or "Evaluation set",
        "split": dataset.get("split"),
        "num_samples": results["num_samples"],
        "depth_source": ", ".join(f"{source} ({count})" for source, count in sources.items()) or "unknown",
        "unparseable": results["unparseable"]["count"],
        "table": markdown_table(results),
    }


def build_model_card(
    model,
    processor,
    results_list: list[dict],
    model_name: str,
    repo_id: str,
    base_model: str | None = None,
    license: str | None = None,
    training_summary: str | None = None,
    template_path: str | Path = CARD_TEMPLATE,
):
    """The filled model card (`huggingface_hub.ModelCard`) of a depth model and its evaluation results.

    `base_model`: the Hub id it derives from; by default the one its config records
    (`training.provenance.hub_base_model`), none for a model built from a local folder.
    """
    from huggingface_hub import ModelCard, ModelCardData

    from modeling_qwen2_5_vl_depth import DEPTH_MODULE_PREFIXES
    from training.evaluate import ANSWER_INSTRUCTION
    from training.provenance import hub_base_model

    config = model.config
    base_model = base_model or hub_base_model(config)
    license, license_name, license_link, license_note = resolve_license(license, base_model)
    card_data = ModelCardData(
        model_name=model_name,
        base_model=base_model,
        library_name="transformers",
        pipeline_tag="image-text-to-text",
        license=license,
        license_name=license_name,
        license_link=license_link,
        tags=[*TAGS, f"depth-fusion-{config.depth_fusion}"],
        eval_results=[result for results in results_list for result in eval_results_from(results)] or None,
    )
    depth_parameters = sum(p.numel() for n, p in model.named_parameters() if n.startswith(DEPTH_MODULE_PREFIXES))
    depth_config = getattr(config, "depth_config", None)
    instructions = {r.get("instruction") or ANSWER_INSTRUCTION for r in results_list}
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path),
        model_name=model_name,
        repo_id=repo_id,
        base_model=base_model,
        depth_fusion=config.depth_fusion,
        depth_input=getattr(config, "depth_input", "depth"),
        depth_input_summary=config.input.summary if hasattr(config, "input") else "",
        default_fov=f"{getattr(config, 'default_horizontal_fov_degrees', 60.0):g}",
        has_depth=config.has_depth,
        has_depth_encoder=config.has_depth_encoder,
        fusion_description=f"{config.fusion.summary}.",  # the fusion table's row
        fusion_details=f"With `{config.depth_fusion}` fusion: {config.fusion.details}",
        depth_layers=getattr(depth_config, "depth", "–"),
        depth_hidden_size=getattr(depth_config, "hidden_size", "–"),
        depth_parameters=_count(depth_parameters),
        total_parameters=_count(sum(p.numel() for p in model.parameters())),
        depth_min_meters=f"{config.depth_min_meters:g}",
        depth_max_meters=f"{config.depth_max_meters:g}",
        depth_invalid_value=f"{config.depth_invalid_value:g}",
        depth_estimator=getattr(processor, "depth_estimator", None),
        example_depth_estimator=EXAMPLE_DEPTH_ESTIMATOR,
        transformers_requirement=TRANSFORMERS_REQUIREMENT,
        license_summary=f"{license_name or license}" + (f" ([terms]({license_link}))" if license_link else ""),
        license_note=license_note,
        results=[_results_section(r) for r in results_list],
        any_lettered=any(r.get("benchmark") in ("cvbench3d", "blink_depth") for r in results_list),
        instruction=" / ".join(sorted(instructions)),
        training_summary=training_summary
        or "Not recorded by the export: describe the training data, stages and steps here (`--training-summary`).",
    )


# ----------------------------------------------------------------------------------------------------------------
# Validation in a fresh process
# ----------------------------------------------------------------------------------------------------------------
VALIDATION_QUESTION = "How far is the cube?"
FRESH_PROCESS_RELOAD = r"""
import json, sys
import numpy as np, torch
from PIL import Image
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

folder, arrays_path, question, max_new_tokens, report_path = sys.argv[1:]
arrays = np.load(arrays_path)
report = {}
config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
report["AutoConfig"] = type(config).__module__ + "." + type(config).__name__
report["AutoProcessor"] = type(processor).__module__ + "." + type(processor).__name__
report["depth_fusion"] = processor.depth_fusion
messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
depth = {"depth": [arrays["depth"]]} if processor.fusion.has_depth else {}
inputs = processor(images=[Image.fromarray(arrays["image"])], text=[prompt], return_tensors="pt", **depth)
report["input_ids"] = inputs["input_ids"].tolist()
model = AutoModel.from_pretrained(folder, trust_remote_code=True, dtype="auto")
report["AutoModel"] = type(model).__module__ + "." + type(model).__name__
del model
model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True, dtype="auto").eval()
report["AutoModelForImageTextToText"] = type(model).__module__ + "." + type(model).__name__
with torch.no_grad():
    logits = model(**inputs).logits
report["logits_shape"] = list(logits.shape)
report["logits_finite"] = bool(torch.isfinite(logits).all())
if int(max_new_tokens):
    generated = model.generate(**inputs, max_new_tokens=int(max_new_tokens), do_sample=False)
    report["answer"] = processor.decode(generated[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
torch.save(logits, report_path + ".pt")
json.dump(report, open(report_path, "w"))
"""


def validation_arrays(height: int = 84, width: int = 112) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic RGB image (uint8 gradients) and a metric depth ramp (0.5 m to 8 m) of the same size."""
    rows, cols = np.mgrid[0:height, 0:width]
    image = np.stack([cols * 255 // width, rows * 255 // height, (rows + cols) % 256], axis=-1).astype(np.uint8)
    depth = np.linspace(8.0, 0.5, height, dtype=np.float32)[:, None].repeat(width, axis=1)
    return image, depth


def reference_inputs(processor, image: np.ndarray, depth: np.ndarray, question: str = VALIDATION_QUESTION):
    """The inputs `FRESH_PROCESS_RELOAD` makes, as this process's processor makes them (they must be the same)."""
    from PIL import Image

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    extra = {"depth": [depth]} if getattr(processor, "fusion", None) is not None and processor.fusion.has_depth else {}
    return processor(images=[Image.fromarray(image)], text=[prompt], return_tensors="pt", **extra)


def reload_in_fresh_process(
    folder: str | Path,
    image: np.ndarray,
    depth: np.ndarray,
    question: str = VALIDATION_QUESTION,
    max_new_tokens: int = 0,
    timeout: int = 1800,
):
    """Load `folder` in a new Python process, offline, through every Auto class with `trust_remote_code=True`, and
    ask it `question` about `image` (uint8 RGB) with `depth` (metres; used when the model has depth).

    The process runs from elsewhere and without this checkout on its path, so only the folder's own files can make it
    work. Returns its report (each Auto class, `depth_fusion`, `input_ids`, `logits_shape`, and with `max_new_tokens`
    the greedy `answer`) and its logits. Raises if it fails or a class is not the folder's remote code.
    """
    import torch

    folder = Path(folder).resolve()
    with tempfile.TemporaryDirectory(prefix="fresh_process_") as scratch:
        scratch = Path(scratch)
        np.savez(scratch / "arrays.npz", image=image, depth=depth)
        report_path = scratch / "report.json"
        environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        environment.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        arguments = [str(folder), str(scratch / "arrays.npz"), question, str(max_new_tokens), str(report_path)]
        result = subprocess.run(
            [sys.executable, "-c", FRESH_PROCESS_RELOAD, *arguments],
            cwd=scratch,
            env=environment,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(f"The exported folder failed to load in a fresh process:\n{result.stderr[-4000:]}")
        report = json.loads(report_path.read_text())
        logits = torch.load(str(report_path) + ".pt")
    for key in ("AutoConfig", "AutoProcessor", "AutoModel", "AutoModelForImageTextToText"):
        if not report[key].startswith("transformers_modules."):
            raise RuntimeError(f"{key} gave {report[key]}, not the folder's remote code.")
    if not report["logits_finite"]:
        raise RuntimeError("The reloaded model's logits are not finite.")
    return report, logits


def validate_in_fresh_process(
    folder: str | Path, expected_logits, expected_input_ids: list, timeout: int = 1800
) -> dict:
    """`reload_in_fresh_process` on the validation image; its tokens and logits must equal `expected_*` (this
    process's, from `reference_inputs`)."""
    import torch

    image, depth = validation_arrays()
    report, logits = reload_in_fresh_process(folder, image, depth, timeout=timeout)
    if report["input_ids"] != expected_input_ids:
        raise RuntimeError("The reloaded processor tokenised the validation prompt differently.")
    torch.testing.assert_close(logits, expected_logits, msg="The reloaded model's logits differ from the source's.")
    report["max_abs_logit_difference"] = float((logits.float() - expected_logits.float()).abs().max())
    return report


# ----------------------------------------------------------------------------------------------------------------
# Export and upload
# ----------------------------------------------------------------------------------------------------------------
def _prepare_out_dir(out: Path, source: Path, overwrite: bool) -> None:
    if out.resolve() == source.resolve():
        raise ValueError("--out must differ from --model.")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty: pass --overwrite to replace it.")
        if not ((out / "config.json").exists() or (out / "README.md").exists()):
            raise FileExistsError(f"{out} does not look like a model folder: refusing to delete it.")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def load_exportable_model(model_dir: str | Path):
    """The source folder's depth model (its saved dtype, eval mode) and processor, through the checkout's classes
    (`training.model_loading.load_depth_model`), so the export carries the current remote code. Refuses adapters
    and plain Qwen2.5-VL folders, which are not what a depth-model repo should hold."""
    from training.model_loading import load_depth_model

    model_dir = Path(model_dir)
    if (model_dir / "adapter_config.json").exists():
        raise ValueError(
            f"{model_dir} holds a PEFT adapter: export the merged model (training.sft writes it to --export_dir)."
        )
    config_path = model_dir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} does not exist.")
    model_type = json.loads(config_path.read_text()).get("model_type")
    if model_type != "qwen2_5_vl_depth":
        raise ValueError(
            f"{model_dir} has model_type {model_type!r}, not 'qwen2_5_vl_depth': build a depth model first "
            "(python -m training.build_depth_model)."
        )
    model, processor = load_depth_model(model_dir, dtype="auto")
    return model.eval(), processor


def export(
    model_dir: str | Path,
    out: str | Path,
    results_paths: list[str | Path] = (),
    base_model: str | None = None,
    repo_id: str | None = None,
    model_name: str | None = None,
    license: str | None = None,
    training_summary: str | None = None,
    validate: bool = True,
    overwrite: bool = False,
) -> dict:
    """Write the Hub folder and validate it; returns a summary (folder, files, validation report).

    `base_model`: the card's `base_model` (default: the Hub base the model's config records, see `build_model_card`).
    """
    import torch

    out, source = Path(out), Path(model_dir)
    model, processor = load_exportable_model(source)
    _prepare_out_dir(out, source, overwrite)
    results_list = [json.loads(Path(p).read_text(encoding="utf-8")) for p in results_paths]
    model_name = model_name or (repo_id.split("/")[-1] if repo_id else out.name)
    repo_id = repo_id or f"your-username/{out.name}"

    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    missing = [name for name in REMOTE_CODE_FILES if not (out / name).is_file()]
    if missing:
        raise RuntimeError(f"save_pretrained did not write the remote code files {missing}.")
    card = build_model_card(model, processor, results_list, model_name, repo_id, base_model, license, training_summary)
    card.save(out / "README.md")
    if results_list:
        summaries = [{k: v for k, v in r.items() if k != "predictions"} for r in results_list]
        (out / "eval_results.json").write_text(json.dumps(summaries, indent=2, ensure_ascii=False) + "\n")

    report = None
    if validate:
        image, depth = validation_arrays()
        inputs = reference_inputs(processor, image, depth)
        with torch.no_grad():
            expected = model(**inputs).logits
        expected_input_ids = inputs["input_ids"].tolist()
        del model  # the fresh process loads its own copy: do not hold two
        gc.collect()
        report = validate_in_fresh_process(out, expected, expected_input_ids)
    return {"folder": str(out), "files": sorted(p.name for p in out.iterdir()), "validation": report}


def push_to_hub(folder: str | Path, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Create the model repo if needed and upload the folder; returns the repo URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    api.upload_folder(
        repo_id=repo_id, repo_type="model", folder_path=str(folder), commit_message="Upload Qwen2.5-VL-Depth export"
    )
    return str(url)


def merged_model_from_adapter(
    adapter_dir: str | Path, script_args: SpatialSFTScriptArguments, model_args: ModelConfig, training_args: SFTConfig
) -> Qwen2_5_VLDepthForConditionalGeneration:
    """Rebuild the starting model (unquantized), load the saved adapter (and full depth modules) into it and merge.

    Used when training sharded the weights (FSDP, DeepSpeed): the adapter saved by `trainer.save_model` is gathered,
    the in-memory model is not; and after QLoRA, whose 4/8-bit weights the adapter must not be merged into.
    """
    from peft import PeftModel

    from training.model_loading import load_starting_model

    model, _ = load_starting_model(script_args, model_args, training_args, quantize=False)
    return PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()


def export_merged_model(
    trainer: SFTTrainer,
    export_dir: str | Path,
    script_args: SpatialSFTScriptArguments,
    model_args: ModelConfig,
) -> Path:
    """Merge LoRA into the weights and save a plain depth-model folder (model, processor, remote code).

    Call on every rank. Unsharded (single process, DDP), the main process merges the trained model in place, which
    leaves `trainer.model` merged. Sharded, the adapter is first gathered into `output_dir` and merged into a rebuilt
    copy of the starting model; so is a QLoRA adapter (saved there by `training.sft.finish`), into the unquantized
    model.
    """
    from modeling_qwen2_5_vl_depth import Qwen2_5_VLDepthForConditionalGeneration

    accelerator = trainer.accelerator
    export_dir = Path(export_dir)
    model = accelerator.unwrap_model(trainer.model)
    is_peft = hasattr(model, "merge_and_unload")
    sharded = trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled
    quantized = model_args.load_in_4bit or model_args.load_in_8bit
    if sharded:
        trainer.save_model(trainer.args.output_dir)  # collective: gathers the full adapter / weights
    if accelerator.is_main_process:
        if (sharded or quantized) and is_peft:
            model = merged_model_from_adapter(trainer.args.output_dir, script_args, model_args, trainer.args)
        elif sharded:
            model = Qwen2_5_VLDepthForConditionalGeneration.from_pretrained(trainer.args.output_dir)
        elif is_peft:
            model = model.merge_and_unload()
        model.save_pretrained(export_dir)
        trainer.processing_class.save_pretrained(export_dir)
    accelerator.wait_for_everyone()
    return export_dir


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="depth model folder (e.g. training.sft's merged export)")
    parser.add_argument("--out", required=True, type=Path, help="the Hub folder to write")
    parser.add_argument("--results", nargs="*", default=[], help="results.json files of training.evaluate")
    parser.add_argument(
        "--base-model",
        default=None,
        help="the Hub Qwen2.5-VL it was built from (default: what the model records; none for a local base)",
    )
    parser.add_argument("--repo-id", default=None, help="Hub id shown in the card (default: --push-to-hub's)")
    parser.add_argument("--model-name", default=None, help="card title (default: the repo name)")
    parser.add_argument("--license", default=None, help="licence id (default: the base model's; see above)")
    parser.add_argument("--training-summary", default=None, help="the card's Training section")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", default=None, help="upload to this Hub repo")
    parser.add_argument("--private", action="store_true", help="create the Hub repo private")
    parser.add_argument("--no-validate", dest="validate", action="store_false", help="skip the fresh-process check")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export folder")
    args = parser.parse_args(argv)

    summary = export(
        args.model,
        args.out,
        args.results,
        base_model=args.base_model,
        repo_id=args.repo_id or args.push_to_hub,
        model_name=args.model_name,
        license=args.license,
        training_summary=args.training_summary,
        validate=args.validate,
        overwrite=args.overwrite,
    )
    print(f"wrote {summary['folder']}: {', '.join(summary['files'])}")
    if summary["validation"]:
        report = summary["validation"]
        print(
            f"validated in a fresh offline process: {report['AutoModelForImageTextToText']}, "
            f"logits {report['logits_shape']} equal to the source's"
        )
    if args.push_to_hub:
        summary["url"] = push_to_hub(args.out, args.push_to_hub, private=args.private)
        print(f"uploaded to {summary['url']}")
    return summary


if __name__ == "__main__":
    main()
