"""Where a metric answer is lost: a ridge probe from the language model's hidden state where the answer begins.

    python -m training.answer_probe --model results/fair_final/models/add --data runs/fair-final/data/val \\
        --out results/answer_probe/add.json [--no-depth] [--question-types point_depth distance_to_camera]

The depth tokens hand the language model the metric answer (a ridge probe reads region depth from them at δ₁
0.9; `training.align.probe`), yet the trained models answer at δ₁ 0.4. This asks where in between it is lost. Each
question is asked exactly as `training.evaluate run` asks it (`evaluate.batch_inputs`: the image, the question, the
dataset's depth and camera), and the hidden state of every language-model layer at the prompt's last position (the
one whose logits give the answer's first token) is kept. Per question type and layer, a ridge regression from that
state to the log of the true answer is fitted on half the scenes and scored on the other half (`ridge_probe`: R²,
and δ₁ of exp(prediction)). A probe far above the model's own δ₁ says the answer is in the state and lost in
decoding it to digits; a probe at the model's level says it never reached the state. For a model with one token per
image region (`add`, `adapter`, `rgbd`) the same probe reads each image token's region depth at every layer
(`image_token_states`): whether depth survives the fusion into the language model's token stream at all; and on
point depth it probes the state of the one image token that covers the marked pixel (`marker_token_states`): what
the answer position would have if it looked there.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from training.align.probe import ridge_probe
from training.dataset_files import write_atomically


DEFAULT_TYPES = ("point_depth", "distance_to_camera")


def forward_batches(model, processor, samples, batch_size: int = 32, with_depth: bool = True):
    """Each batch of questions asked as `training.evaluate` asks them, left-padded (every row's last position is its
    last prompt token): yields (index of its first sample, its inputs, every layer's hidden states stacked as
    (rows, positions, layers + 1, hidden), the embeddings first)."""
    import torch

    from training.evaluate import batch_inputs

    processor.tokenizer.padding_side = "left"
    with torch.inference_mode():
        for start in range(0, len(samples), batch_size):
            inputs, _ = batch_inputs(
                processor, samples[start : start + batch_size], "", with_depth, device=model.device
            )
            outputs = model(**inputs.to(model.device), output_hidden_states=True)
            yield start, inputs, torch.stack(outputs.hidden_states, dim=2)


def answer_states(model, processor, samples, batch_size: int = 32, with_depth: bool = True) -> np.ndarray:
    """(num_samples, layers + 1, hidden) float32: every language-model layer's state at the last prompt position of
    each question."""
    batches = forward_batches(model, processor, samples, batch_size, with_depth)
    return np.concatenate([layered[:, -1].float().cpu().numpy() for _, _, layered in batches])


def image_token_states(model, processor, samples, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every language-model layer's hidden state at each image token with depth, its region's mean log-depth (the
    merged token's pixels, `region_log_depth`) and its image: (tokens, layers + 1, hidden), (tokens,), (tokens,).
    Asked with depth, as `answer_states`; an `add` model's image tokens are its RGB tokens plus its gated depth."""
    from training.align.probe import region_log_depth

    merge_size = processor.image_processor.merge_size
    states, targets, images = [], [], []
    for start, inputs, layered in forward_batches(model, processor, samples, batch_size):
        log_depth, valid = region_log_depth(inputs["depth_values"].cpu(), merge_size)
        image_tokens = inputs["input_ids"] == model.config.image_token_id  # one run per row, in token order
        if int(image_tokens.sum()) != len(log_depth):
            raise ValueError(
                f"{int(image_tokens.sum())} image tokens but {len(log_depth)} merged depth regions: the probe reads one "
                "token per region (an `add`, `adapter` or `rgbd` model)."
            )
        rows = image_tokens.nonzero()[:, 0].cpu().numpy() + start
        states.append(layered[image_tokens].float().cpu().numpy()[valid])  # (tokens, layers + 1, hidden)
        targets.append(log_depth[valid])
        images.append(rows[valid])
    return np.concatenate(states), np.concatenate(targets), np.concatenate(images)


def marker_token_states(model, processor, samples, batch_size: int = 32) -> np.ndarray:
    """(num_samples, layers + 1, hidden): every layer's state at the image token that covers each question's marked
    pixel (`SpatialSample.marker`, (u, v) in the image's pixels): what a model that looked in the right place would
    have."""
    from dataclasses import replace

    from training.benchmarks import load_image

    patch, merge = processor.image_processor.patch_size, processor.image_processor.merge_size
    decoded = [replace(s, image=load_image(s.image)) for s in samples]  # decoded once: for its size and the model
    states = []
    for start, inputs, layered in forward_batches(model, processor, decoded, batch_size):
        for row, grid in enumerate(inputs["image_grid_thw"].tolist()):
            sample = decoded[start + row]
            (u, v), (width, height), (_, grid_h, grid_w) = sample.marker, sample.image.size, grid
            # The marked pixel in the resized image, then its merged token (row-major over merge blocks).
            x, y = u * grid_w * patch / width, v * grid_h * patch / height
            token = int(y // (patch * merge)) * (grid_w // merge) + int(x // (patch * merge))
            positions = (inputs["input_ids"][row] == model.config.image_token_id).nonzero()[:, 0]
            states.append(layered[row, positions[token]].float().cpu().numpy())
    return np.stack(states)


def probe_answers(states: np.ndarray, samples) -> list[dict]:
    """`ridge_probe` of log(true answer) per layer, split by scene."""
    targets = np.log(np.array([s.answer_value for s in samples], dtype=np.float64))
    scene_of = {}
    groups = np.array([scene_of.setdefault(s.id.rsplit("/", 1)[0], len(scene_of)) for s in samples])
    return [{"layer": layer, **ridge_probe(states[:, layer], targets, groups)} for layer in range(states.shape[1])]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a trained model folder")
    parser.add_argument("--data", required=True, help="world parquet folder (validation)")
    parser.add_argument("--out", required=True, type=Path, help="JSON file of the probe per type and layer")
    parser.add_argument("--question-types", nargs="+", default=list(DEFAULT_TYPES))
    parser.add_argument("--no-depth", action="store_true", help="ask without depth (a depth model's RGB-only run)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--image-token-scenes", type=int, default=300, help="scenes of the image-token probe (one question each)"
    )
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    from configuration_depth import RGB_ONLY_FUSION
    from training.benchmarks import read_benchmark
    from training.evaluate import load_model_and_processor

    model, processor = load_model_and_processor(args.model, args.device)
    with_depth = not args.no_depth and getattr(processor, "depth_fusion", RGB_ONLY_FUSION) != RGB_ONLY_FUSION
    samples = read_benchmark("world", args.data).samples
    report = {"model": str(args.model), "data": str(args.data), "with_depth": with_depth, "per_type": {}}
    for question_type in args.question_types:
        chosen = [s for s in samples if s.question_type == question_type and s.answer_value]
        if not chosen:
            raise SystemExit(f"No metric {question_type!r} questions in {args.data}.")
        layers = probe_answers(answer_states(model, processor, chosen, args.batch_size, with_depth), chosen)
        best = max(layers, key=lambda row: row["r2"])
        report["per_type"][question_type] = {"questions": len(chosen), "layers": layers, "best_layer": best["layer"]}
        print(
            f"{question_type}: {len(chosen)} questions; last layer R² {layers[-1]['r2']:.3f}, δ₁ "
            f"{layers[-1]['delta1']:.3f}; best layer {best['layer']} (R² {best['r2']:.3f}, δ₁ {best['delta1']:.3f})"
        )
    marked = [s for s in samples if s.question_type == "point_depth" and s.marker is not None]
    if with_depth and model.config.fusion.tokens_per_image_with_depth == 1 and marked:
        chosen = marked
        layers = probe_answers(marker_token_states(model, processor, chosen, args.batch_size), chosen)
        report["marker_token"] = {"questions": len(chosen), "layers": layers}
        print(
            "point depth from the marked pixel's image token: R² / δ₁ by layer "
            + ", ".join(f"{row['r2']:.3f} / {row['delta1']:.3f}" for row in layers)
        )
    if with_depth and model.config.fusion.tokens_per_image_with_depth == 1:
        one_per_scene = list({s.id.rsplit("/", 1)[0]: s for s in samples}.values())[: args.image_token_scenes]
        states, targets, images = image_token_states(model, processor, one_per_scene, args.batch_size)
        layers = [
            {"layer": layer, **ridge_probe(states[:, layer], targets, images)} for layer in range(states.shape[1])
        ]
        report["image_tokens"] = {"scenes": len(one_per_scene), "layers": layers}
        print(
            f"image tokens ({len(one_per_scene)} scenes): region log-depth R² by layer "
            + ", ".join(f"{row['r2']:.3f}" for row in layers)
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(args.out, json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
