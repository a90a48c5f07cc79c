"""Qwen2.5-VL-Depth demo (a Hugging Face Space): ask a spatial question about an image and its metric depth map.

    python app.py --model runs/demo/hub/qwen2_5_vl_depth_demo   # a model folder or Hub id; http://127.0.0.1:7860
    MODEL_ID=you/qwen2_5_vl_3b_depth python app.py              # on a Space, which runs `python app.py`

Depth is optional: a 16-bit PNG in millimetres or a `.npy` array in metres, read by the processor's own depth reader,
so the colour map shown is exactly the depth the model gets and a bad file fails with the processor's message. Without
a file, the processor's `depth_estimator` makes one when the model folder configures it; otherwise the question is
answered from RGB only, and the page says so. Answers are greedy, so the same inputs always give the same answer.

The example scenes are rendered at start-up by `training.world` (deterministic, exact metric depth), so the Space
ships no image files: it needs this file, `training/` and the three remote-code files of the repository.
"""

import argparse
import os
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import gradio as gr
import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from modeling_qwen2_5_vl_depth import default_intrinsics
from training.depth_png import encode_depth_png
from training.world import make_sample


DEPTH_FILE_TYPES = [".png", ".npy"]
# Rendered test-split scenes offered as examples, and the metric question asked about each.
EXAMPLE_SCENES = ((3, "distance_to_camera"), (5, "distance_between"), (8, "closer"))
EXAMPLE_SIZE = 224
MAX_NEW_TOKENS = 64
# Far ground and horizon reach tens of metres: colours stop at this percentile so the objects' distances stay legible.
COLOUR_MAP_PERCENTILE = 90


# ----------------------------------------------------------------------------------------------------------------
# The answer path (no Gradio: tests and scripts call it directly)
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Answer:
    text: str
    depth: np.ndarray | None  # the depth the model got, float32 (H, W), 0 = no measurement; None when RGB only
    depth_source: str  # "uploaded", "estimated" or "none"
    depth_is_metric: bool  # False only for a relative estimator's output (depth ÷ image median, not metres)


def load_model(model_id: str | Path):
    """The model (its saved dtype, on the available devices) and processor of a depth-model folder or Hub id."""
    model = AutoModelForImageTextToText.from_pretrained(
        model_id, trust_remote_code=True, dtype="auto", device_map="auto"
    ).eval()
    processor = AutoProcessor.from_pretrained(model_id, trust_remote_code=True)
    return model, processor


def read_depth_file(path: str | Path) -> np.ndarray | bytes:
    """A depth file's content, for the processor to read and check: a `.npy` file's array (floats in metres, `uint16`
    in millimetres) or a PNG's bytes (16-bit, millimetres)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in DEPTH_FILE_TYPES:
        raise ValueError(f"Depth file {path.name!r} is neither a 16-bit PNG (millimetres) nor a .npy array (metres).")
    if suffix == ".png":
        return path.read_bytes()
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError) as error:  # pickled objects, a truncated or foreign file
        raise ValueError(f"Depth file {path.name!r} is not a readable .npy array: {error}") from error


def chat_messages(image: Image.Image, question: str, depth=None, intrinsics=None) -> list[dict]:
    image_block = {"type": "image", "image": image}
    if depth is not None:
        image_block["depth"] = depth
        if intrinsics is not None:
            image_block["intrinsics"] = intrinsics
    return [{"role": "user", "content": [image_block, {"type": "text", "text": question}]}]


def intrinsics_from_fov(image: Image.Image, horizontal_fov_degrees: float | None):
    """The pinhole camera (fx, fy, cx, cy) of `image` with this horizontal field of view (square pixels, centred
    principal point), or None when no field of view is given."""
    if horizontal_fov_degrees is None:
        return None
    if not 0 < horizontal_fov_degrees < 180:
        raise ValueError(f"The field of view must lie between 0 and 180 degrees; got {horizontal_fov_degrees}.")
    return default_intrinsics(image.height, image.width, horizontal_fov_degrees)


def answer_question(
    model,
    processor,
    image: Image.Image,
    question: str,
    depth=None,
    max_new_tokens: int = MAX_NEW_TOKENS,
    horizontal_fov_degrees: float | None = None,
) -> Answer:
    """Greedy answer to `question` about `image`.

    `depth` is one depth map in any form the processor takes (`read_depth_file`'s output, metres as a float array, a
    16-bit PNG path). Without it, the processor's estimator makes one when it has one; otherwise the answer is RGB
    only. Depth that does not fit the image or the model raises the processor's `ValueError`.
    `horizontal_fov_degrees`: the camera's field of view, which a `depth_input="points"` model uses to place depth in
    3D (None: unknown, the model's stated default camera); a `"depth"` model does not use it.
    """
    if image is None:
        raise ValueError("Upload an RGB image first.")
    if not question or not question.strip():
        raise ValueError("Type a question about the image.")
    image = image.convert("RGB")
    if not processor.fusion.has_depth:
        depth_map = depth  # an RGB-only processor reads no depth: given some, it raises its own error below
    else:
        # Read and checked against the image, or estimated, by the processor: the page shows exactly this map.
        depth_map = processor.depth_maps([image], [depth], model.device)[0]
    source = "uploaded" if depth is not None else "estimated" if depth_map is not None else "none"
    intrinsics = intrinsics_from_fov(image, horizontal_fov_degrees) if depth_map is not None else None
    inputs = processor.apply_chat_template(
        chat_messages(image, question, depth_map, intrinsics),
        tokenize=True,
        return_dict=True,
        add_generation_prompt=True,
        return_tensors="pt",
    ).to(model.device)
    with torch.inference_mode():
        generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    text = processor.decode(generated[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return Answer(text, depth_map, source, source != "estimated" or processor.estimator().is_metric)


def describe_depth(answer: Answer, processor) -> str:
    """One line for the page: where the depth came from, or why there was none."""
    if answer.depth_source == "none":
        if not processor.fusion.has_depth:
            return (
                f"This model is RGB-only (`depth_fusion={processor.depth_fusion!r}`): answered from the RGB image "
                "alone."
            )
        return (
            "No depth map given and this model's processor has no `depth_estimator` configured: "
            "**answered from RGB only.**"
        )
    valid = answer.depth[answer.depth > 0]
    coverage = f"{valid.size / answer.depth.size:.0%} of pixels measured"
    span = f", {valid.min():.2f}–{valid.max():.2f} m" if valid.size and answer.depth_is_metric else ""
    if answer.depth_source == "uploaded":
        return f"Depth: the uploaded map ({answer.depth.shape[1]}×{answer.depth.shape[0]}, {coverage}{span})."
    kind = "metric" if answer.depth_is_metric else relative_depth_note(processor)
    return f"Depth: estimated by `{processor.depth_estimator}` ({kind}; {coverage}{span})."


def relative_depth_note(processor) -> str:
    """What a relative estimate is, as the processor reads it: median 1, or scaled to its `relative_depth_median`."""
    median = getattr(processor, "relative_depth_median", None)
    if median is None:
        return "relative: depth ÷ image median, not metres"
    return f"relative, read with its median at {median:.2f} m: which object is nearer is right, metres only roughly"


def depth_colour_map(depth: np.ndarray, is_metric: bool = True) -> Image.Image:
    """Depth as a colour map with a colour bar (metres), pixels without a measurement in grey."""
    # A Figure without pyplot: Gradio answers requests from several threads, and pyplot's global state is not safe.
    figure = Figure(figsize=(5.2, 4.0), dpi=100)
    FigureCanvasAgg(figure)
    axis = figure.add_subplot()
    valid = depth[depth > 0]
    vmin, vmax = (valid.min(), np.percentile(valid, COLOUR_MAP_PERCENTILE)) if valid.size else (0.0, 1.0)
    image = axis.imshow(
        np.where(depth > 0, depth, np.nan),  # NaN: the colour map's "bad" colour
        cmap=matplotlib.colormaps["turbo"].with_extremes(bad="0.6"),
        vmin=vmin,
        vmax=max(vmax, vmin + 1e-3),  # a flat map still needs a range
        interpolation="nearest",
    )
    label = "depth (m)" if is_metric else "depth ÷ image median (relative)"
    figure.colorbar(image, ax=axis, label=label, extend="max" if valid.size and valid.max() > vmax else "neither")
    axis.set_title("depth the model gets (grey: no measurement)", fontsize=10)
    axis.set_axis_off()
    figure.tight_layout()
    figure.canvas.draw()
    return Image.fromarray(np.asarray(figure.canvas.buffer_rgba())[..., :3].copy())


def render_examples(directory: str | Path) -> list[list[str]]:
    """Rendered test-split scenes as example rows: RGB PNG, 16-bit depth PNG (mm), a metric question, its answer, and
    the camera's horizontal field of view in degrees."""
    directory = Path(directory)
    rows = []
    for index, question_type in EXAMPLE_SCENES:
        sample = make_sample("test", index, 0, EXAMPLE_SIZE, questions_per_scene=12)
        question = next(q for q in sample.questions if q.question_type == question_type)
        rgb_path, depth_path = directory / f"scene_{index}.png", directory / f"scene_{index}_depth.png"
        Image.fromarray(sample.rendering.rgb).save(rgb_path)
        depth_path.write_bytes(encode_depth_png(sample.rendering.depth))
        hfov = round(sample.metadata["camera"]["hfov_deg"], 1)
        rows.append([str(rgb_path), str(depth_path), question.question, question.answer, hfov])
    return rows


# ----------------------------------------------------------------------------------------------------------------
# The page
# ----------------------------------------------------------------------------------------------------------------
def respond(
    model,
    processor,
    image: Image.Image | None,
    depth_file: str | None,
    question: str,
    horizontal_fov_degrees: float | None = None,
):
    """The Ask button: (answer, depth colour map or None, depth note). Bad input, and a depth estimator that cannot
    load (an offline hub id), become a `gr.Error` carrying the processor's message, which the page shows instead of
    failing."""
    try:
        depth = read_depth_file(depth_file) if depth_file else None
        # A blank number field arrives as None or 0: no field of view given.
        answer = answer_question(
            model, processor, image, question, depth, horizontal_fov_degrees=horizontal_fov_degrees or None
        )
    except (ValueError, TypeError, OSError) as error:  # OSError: missing files, an estimator that cannot load
        raise gr.Error(str(error), print_exception=False) from error
    colour_map = None if answer.depth is None else depth_colour_map(answer.depth, answer.depth_is_metric)
    return answer.text, colour_map, describe_depth(answer, processor)


def build_demo(model, processor, model_id: str, examples: list[list[str]]) -> gr.Blocks:
    estimator = (
        f"`{processor.depth_estimator}`" if processor.depth_estimator else "none (RGB only without a depth map)"
    )
    with gr.Blocks(title="Qwen2.5-VL-Depth", analytics_enabled=False) as demo:
        gr.Markdown(
            "# Qwen2.5-VL-Depth\n"
            "Ask a spatial question about an image. Add its metric depth map (16-bit PNG in millimetres, or `.npy` in "
            "metres) and the model reads distances from it. Give the camera's field of view for a `points` model "
            "(it places depth in 3D). Relative depth costs the most accuracy unless the processor reads it at the "
            "training scenes' median depth (`relative_depth_median`: then which object is nearer survives, metres "
            "do not), and holes in the depth map do unless "
            "the model's processor fills them (`fill_depth_holes=1`: within 0.002 δ₁ of complete depth with sensor "
            "noise and 10% holes); noise and a low-resolution map cost little (the project's `results/robustness`)."
            "\n\n"
            f"**Model** `{model_id}` · depth fusion `{processor.depth_fusion}` · depth estimator {estimator}"
        )
        with gr.Row():
            with gr.Column():
                image = gr.Image(label="RGB image", type="pil", image_mode="RGB", elem_id="rgb", height=300)
                depth_file = gr.File(
                    label="Depth map (optional): 16-bit PNG in mm or .npy in m",
                    file_types=DEPTH_FILE_TYPES,
                    elem_id="depth",
                    height=120,
                )
                fov = gr.Number(
                    label="Camera's horizontal field of view in degrees (optional: it places depth in 3D for a "
                    f"`points` model; this one's depth input is `{getattr(model.config, 'depth_input', 'depth')}`)",
                    value=None,
                    elem_id="fov",
                )
                question = gr.Textbox(
                    label="Question", placeholder="How far is the red cube from the camera?", elem_id="question"
                )
                ask = gr.Button("Ask", variant="primary", elem_id="ask")
            with gr.Column():
                depth_view = gr.Image(
                    label="Depth (m)", type="pil", format="png", interactive=False, elem_id="depth_view", height=300
                )
                answer = gr.Textbox(label="Answer", lines=2, max_lines=6, interactive=False, elem_id="answer")
                depth_note = gr.Markdown(elem_id="depth_note")
                exact_answer = gr.Textbox(
                    label="Exact answer (rendered example scenes)", interactive=False, elem_id="exact_answer"
                )
        gr.Examples(
            examples,
            inputs=[image, depth_file, question, exact_answer, fov],
            cache_examples=False,
            label="Rendered scenes with exact metric depth",
            elem_id="examples",
        )
        for event in (ask.click, question.submit):
            event(
                partial(respond, model, processor),
                inputs=[image, depth_file, question, fov],
                outputs=[answer, depth_view, depth_note],
            )
        # A user's own image has no known answer: drop an example's.
        image.upload(lambda: "", outputs=exact_answer)
    return demo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=os.environ.get("MODEL_ID"), help="model folder or Hub id (env MODEL_ID)")
    parser.add_argument("--host", default=None, help="address to serve on (default: Gradio's, 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: Gradio's, 7860)")
    args = parser.parse_args(argv)
    if not args.model:
        parser.error("give the model with --model DIR_OR_ID or the MODEL_ID environment variable")

    model, processor = load_model(args.model)
    with tempfile.TemporaryDirectory(prefix="qwen2_5_vl_depth_examples_") as examples_dir:
        demo = build_demo(model, processor, args.model, render_examples(examples_dir))
        # System fonts: the default theme's web fonts would be fetched from the internet.
        theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"])
        # show_error: an unexpected error still reaches the page as a message, not a bare "Error".
        demo.launch(server_name=args.host, server_port=args.port, share=False, theme=theme, show_error=True)


if __name__ == "__main__":
    main()
