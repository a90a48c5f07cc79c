"""The main job, end to end on CPU in under ten minutes: depth vs RGB-only, trained, evaluated, exported, reloaded.

    python -m training.demo --out runs/demo

1. Renders a small RGB-D world with exact metric depth (train, val, and the fixed test set).
2. Trains a mini Qwen2.5-VL from scratch (the stand-in for a pretrained base): its RGB tower on which object each
   image token shows, then the whole model on the RGB-only questions.
3. Aligns a depth encoder to its frozen RGB tower (dense InfoNCE).
4. Fine-tunes with LoRA, RGB-only and with depth (`add`), same rows, steps and seed.
5. Evaluates both on the fixed test set and prints the comparison (δ₁, AbsRel, accuracy per question type).
6. Exports the depth model as a Hub-ready folder (weights, config with `auto_map`, code, processor, model card).
7. Reloads that folder in a fresh Python process with `AutoModel`/`AutoProcessor(trust_remote_code=True)`, offline,
   and answers a spatial question about a test scene with its depth map.

It is the `demo` preset of `training.experiment` (one seed, two arms, small): a smoke-scale version of the real
comparison, too small for depth to show. The measured comparison is `python -m training.experiment --preset
cpu-fair-final --tokenizer-digits single` (issue 21's protocol, three whole-pipeline seeds), committed in
`MEASURED_RESULT`; the demo ends by printing it.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import matplotlib


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from configuration_depth import DEFAULT_DEPTH_FUSION  # noqa: E402
from training.experiment import PRESETS, Experiment  # noqa: E402
from training.export import reload_in_fresh_process  # noqa: E402
from training.world import make_sample  # noqa: E402


# The committed depth-vs-RGB comparison (the demo's own run is smoke scale), read rather than restated.
MEASURED_RESULT = Path(__file__).resolve().parents[1] / "results" / "fair_final_digits"


def measured_finding(folder: Path = MEASURED_RESULT) -> str:
    """One line of the committed comparison, from its `results.json`: each depth arm's δ₁ beside RGB-only's and the
    constant guess's (issue 21's protocol), on the set it was read on, with whether it clears the protocol's bar."""
    results_file = folder / "results.json"
    if not results_file.exists():
        return f"not in this checkout ({results_file})"
    results = json.loads(results_file.read_text())
    evaluation_set = results.get("evaluation_set", "test")
    parts = []
    for row in results.get("against_baselines", []):
        constant = "-" if row["constant"] is None else f"{row['constant']:.2f}"
        parts.append(
            f"{row['question_type']} δ₁ {row['delta1']:.2f} ({row['arm']}) against {row['rgb_only']:.2f} (RGB only) "
            f"and {constant} (a constant guess), {row['seeds']} seed(s) on the {evaluation_set} set, "
            f"bar {'met' if row['meets_bar'] else 'not met'}"
        )
    return "; ".join(parts) or f"no depth arm against RGB-only in {results_file}"


def test_scene(index: int) -> tuple[np.ndarray, np.ndarray, str, str]:
    """A scene of the test split: RGB, metric depth, a metric question about it and its exact answer."""
    sample = make_sample("test", index, 0, 224, questions_per_scene=12)
    # point_depth questions need the marked image; any other metric question fits the plain RGB.
    question = next(q for q in sample.questions if q.question_type == "distance_to_camera")
    return sample.rendering.rgb, sample.rendering.depth, question.question, question.answer


def draw_depth(rgb: np.ndarray, depth: np.ndarray, path: Path) -> None:
    figure, axes = plt.subplots(1, 2, figsize=(8, 3.6))
    axes[0].imshow(rgb)
    axes[0].set_title("RGB")
    shown = np.where(depth > 0, depth, np.nan)
    # The horizon reaches tens of metres; clip the colours so the objects' distances stay readable.
    image = axes[1].imshow(shown, cmap="turbo", vmax=np.nanpercentile(shown, 90))
    axes[1].set_title("metric depth (m)")
    figure.colorbar(image, ax=axes[1], fraction=0.046)
    for axis in axes:
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    parser.add_argument("--scene", type=int, default=3, help="test-split scene to ask about at the end")
    args = parser.parse_args(argv)
    out = args.out.resolve()

    results = Experiment(PRESETS["demo"], out / "experiment")()
    depth_run = next(run for run in results["runs"] if run["arm"] == DEFAULT_DEPTH_FUSION)
    hub_folder = out / "hub" / "qwen2_5_vl_depth_demo"
    export_args = [
        "--model", depth_run["model"], "--out", str(hub_folder), "--overwrite",
        "--results", str(out / "experiment" / "eval" / "add-seed0" / "results.json"), "--license", "apache-2.0",
        "--model-name", "Qwen2.5-VL-Depth demo (mini model trained from scratch on the rendered world)",
    ]  # fmt: skip
    print(f"[demo] export: python -m training.export {' '.join(export_args)}", flush=True)
    subprocess.run([sys.executable, "-m", "training.export", *export_args], check=True)

    rgb, depth, question, true_answer = test_scene(args.scene)
    draw_depth(rgb, depth, out / "scene_depth.png")
    reloaded, _ = reload_in_fresh_process(hub_folder, rgb, depth, question, max_new_tokens=16)

    summary = {
        "comparison_table": str(out / "experiment" / "results.md"),
        "comparison_plot": str(out / "experiment" / "results.png"),
        "hub_folder": str(hub_folder),
        "reloaded_class": reloaded["AutoModelForImageTextToText"],
        "question": question,
        "true_answer": true_answer,
        "model_answer": reloaded["answer"],
        "depth_picture": str(out / "scene_depth.png"),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print((out / "experiment" / "results.md").read_text())
    print(json.dumps(summary, indent=2))
    print(
        f"[demo] This comparison is smoke scale. The measured one ({MEASURED_RESULT.parent / 'README.md'}): "
        f"{measured_finding()}"
    )
    return summary


if __name__ == "__main__":
    main()
