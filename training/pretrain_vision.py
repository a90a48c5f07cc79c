"""Stage 0a of the experiment: dense supervised pre-training of a from-scratch RGB tower on the rendered world.

    python -m training.pretrain_vision --base runs/exp/stage0/init --data runs/exp/data/train \\
        --eval_data runs/exp/data/val --out runs/exp/stage0/vision --max_steps 600 --learning_rate 1e-3 \\
        --per_device_train_batch_size 32 --logging_steps 50 --save_strategy no --report_to none

Why: the experiment's base is a small Qwen2.5-VL trained from scratch (the stand-in for a pretrained checkpoint). On
questions alone it never learns to look at the image at CPU scale: trained on "What colour is the <shape>?", its
answer loss sits at the answer prior (0.504 nats per answer token, 8 colours) for as long as we ran it, and the RGB
tower's gradient fades to ~1e-3 as the language model learns to ignore the image tokens. Objects cover a few percent
of a 112-px picture, so a language model that averages over the image tokens sees almost nothing of them, and it
never starts attending selectively. This stage gives the tower object features first.

What it learns: for every merged image token (the unit the language model sees), the colour (8 classes) and shape
(4 classes) of the object that covers most of it, or "no object" for ground and sky, from the world's exact instance
masks (each scene is re-rendered from its metadata, `scene_token_labels`). These are RGB-only facts: no depth,
distance or size, so the RGB-only arm gets no metric hint from this stage. One linear head per label reads the
tower's merged tokens; the loss is the sum of the two token-wise cross-entropies. Only the tower and the heads train.

Output `--out`: the whole base as a plain Qwen2.5-VL folder (config, weights, tokenizer, image processor) with the
trained tower; the heads are dropped. `vision_pretrain_metrics.json` has held-out token accuracies before and after
(on tokens that show an object, and on all tokens) next to the majority-class rate. Any `TrainingArguments` flag
works; under `accelerate launch` it is data-parallel like the other stages.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import (
    AutoImageProcessor,
    AutoTokenizer,
    HfArgumentParser,
    Qwen2_5_VLForConditionalGeneration,
    Trainer,
    TrainingArguments,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

from training import world
from training.checkpoints import resume_checkpoint
from training.data_files import load_rows
from training.depth_png import decode_image_cell


COLOUR_CLASSES = tuple(world.COLORS)  # then "no object"
SHAPE_CLASSES = world.SHAPES  # then "no object"
# A token is labelled with an object only if that object covers at least this share of the token's pixels; a sliver
# of an object's edge is not what the token shows.
MIN_TOKEN_COVERAGE = 0.1


def token_grid(image_processor, height: int, width: int) -> tuple[int, int, int]:
    """(rows, columns, pixels per token side) of the merged tokens the processor makes of a `height`x`width` image."""
    token_side = image_processor.patch_size * image_processor.merge_size
    size = image_processor.size  # {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    resized_height, resized_width = smart_resize(
        height, width, factor=token_side, min_pixels=size["shortest_edge"], max_pixels=size["longest_edge"]
    )
    return resized_height // token_side, resized_width // token_side, token_side


def scene_token_labels(scene: dict, image_processor) -> tuple[np.ndarray, np.ndarray]:
    """Colour and shape class of the object each merged token shows (`len(CLASSES)`: none), row-major.

    `scene` is a world row's metadata (`json.loads(row["scene"])`); the scene is re-rendered from it to get its exact
    instance mask, which is resized (nearest) to the processor's input size and read token by token.
    """
    rendered_scene = world.sample_scene(scene["split"], scene["index"], scene["seed"])
    height, width = scene["image_size"]
    instance = world.render(rendered_scene, width, height).instance
    rows, columns, token_side = token_grid(image_processor, height, width)
    # Nearest-neighbour resize of the mask by index arithmetic (pixel centres), as the image is resized.
    row_index = ((np.arange(rows * token_side) + 0.5) * height / (rows * token_side)).astype(int)
    column_index = ((np.arange(columns * token_side) + 0.5) * width / (columns * token_side)).astype(int)
    instance = instance[np.ix_(row_index, column_index)]
    blocks = instance.reshape(rows, token_side, columns, token_side).transpose(0, 2, 1, 3).reshape(rows * columns, -1)
    objects = scene["objects"]
    colours = np.full(rows * columns, len(COLOUR_CLASSES), dtype=np.int64)
    shapes = np.full(rows * columns, len(SHAPE_CLASSES), dtype=np.int64)
    for token, block in enumerate(blocks):
        counts = np.bincount(block[block >= 0], minlength=len(objects))
        if counts.size and counts.max() >= MIN_TOKEN_COVERAGE * block.size:
            shown = objects[int(counts.argmax())]
            colours[token] = COLOUR_CLASSES.index(shown["color"])
            shapes[token] = SHAPE_CLASSES.index(shown["shape"])
    return colours, shapes


def scene_rows(path: str, image_processor, max_scenes: int | None = None):
    """One row per scene of a world folder: its unmarked image and its token labels (`scene_token_labels`)."""
    rows = load_rows(path)
    first_unmarked: dict[str, int] = {}
    for index, (scene_id, marker) in enumerate(zip(rows["scene_id"], rows["marker"])):
        if not marker:
            first_unmarked.setdefault(scene_id, index)
    indices = sorted(first_unmarked.values())[:max_scenes]
    rows = rows.select(indices).select_columns(["images", "scene"])

    def label(row: dict) -> dict:
        colours, shapes = scene_token_labels(json.loads(row["scene"]), image_processor)
        return {"image": row["images"][0], "colour_labels": colours, "shape_labels": shapes}

    return rows.map(label, remove_columns=["images", "scene"], desc="token labels (re-rendering masks)")


class DenseObjectCollator:
    """Scene rows to the tower's `pixel_values`/`image_grid_thw` and the flat token labels, in the tower's order."""

    def __init__(self, image_processor):
        self.image_processor = image_processor

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        images = [decode_image_cell(row["image"]) for row in rows]
        inputs = self.image_processor(images=images, return_tensors="pt")
        for row, (_, grid_rows, grid_columns) in zip(rows, inputs["image_grid_thw"].tolist()):
            tokens = grid_rows * grid_columns // self.image_processor.merge_size**2
            if len(row["colour_labels"]) != tokens:
                raise ValueError(f"{len(row['colour_labels'])} token labels for an image of {tokens} tokens.")
        # Labels are row-major per image, which is the order of the tower's merged output tokens.
        inputs["colour_labels"] = torch.tensor(np.concatenate([row["colour_labels"] for row in rows]))
        inputs["shape_labels"] = torch.tensor(np.concatenate([row["shape_labels"] for row in rows]))
        return dict(inputs)


class DenseObjectModel(nn.Module):
    """The RGB tower with a linear colour head and a linear shape head on its merged tokens."""

    def __init__(self, visual: nn.Module, width: int):
        super().__init__()
        self.visual = visual
        self.colour_head = nn.Linear(width, len(COLOUR_CLASSES) + 1)
        self.shape_head = nn.Linear(width, len(SHAPE_CLASSES) + 1)

    def forward(self, pixel_values, image_grid_thw, colour_labels=None, shape_labels=None) -> dict:
        tokens = self.visual(pixel_values, grid_thw=image_grid_thw).pooler_output
        outputs = {"colour_logits": self.colour_head(tokens), "shape_logits": self.shape_head(tokens)}
        if colour_labels is not None and shape_labels is not None:
            outputs["loss"] = nn.functional.cross_entropy(
                outputs["colour_logits"], colour_labels
            ) + nn.functional.cross_entropy(outputs["shape_logits"], shape_labels)
        return outputs


@torch.no_grad()
def token_accuracies(model: DenseObjectModel, rows, collator: DenseObjectCollator, batch_size: int = 64) -> dict:
    """Held-out accuracy of both heads, on the tokens that show an object and on all tokens."""
    model.eval()
    correct = {"colour_object": 0, "shape_object": 0, "colour_all": 0, "shape_all": 0}
    object_tokens = all_tokens = 0
    device = next(model.parameters()).device
    for start in range(0, len(rows), batch_size):
        batch = collator([rows[i] for i in range(start, min(start + batch_size, len(rows)))])
        outputs = model(batch["pixel_values"].to(device), batch["image_grid_thw"].to(device))
        colours, shapes = batch["colour_labels"], batch["shape_labels"]
        shows_object = colours < len(COLOUR_CLASSES)
        colour_hits = outputs["colour_logits"].argmax(-1).cpu() == colours
        shape_hits = outputs["shape_logits"].argmax(-1).cpu() == shapes
        correct["colour_object"] += int(colour_hits[shows_object].sum())
        correct["shape_object"] += int(shape_hits[shows_object].sum())
        correct["colour_all"] += int(colour_hits.sum())
        correct["shape_all"] += int(shape_hits.sum())
        object_tokens += int(shows_object.sum())
        all_tokens += len(colours)
    return {
        "colour_accuracy_object_tokens": correct["colour_object"] / max(object_tokens, 1),
        "shape_accuracy_object_tokens": correct["shape_object"] / max(object_tokens, 1),
        "colour_accuracy_all_tokens": correct["colour_all"] / max(all_tokens, 1),
        "shape_accuracy_all_tokens": correct["shape_all"] / max(all_tokens, 1),
        "object_token_share": object_tokens / max(all_tokens, 1),
    }


@dataclass
class VisionPretrainArguments:
    base: str = field(metadata={"help": "Plain Qwen2.5-VL folder whose RGB tower is trained (the rest is kept)."})
    data: str = field(metadata={"help": "Rendered-world folder (training.make_world) of training scenes."})
    out: str = field(metadata={"help": "Where the base with the trained tower is saved."})
    eval_data: str | None = field(default=None, metadata={"help": "World folder of held-out scenes for accuracy."})
    max_scenes: int | None = field(default=None, metadata={"help": "Use only the first N training scenes."})


def main(argv: list[str] | None = None) -> dict:
    parser = HfArgumentParser((VisionPretrainArguments, TrainingArguments))
    parser.set_defaults(output_dir="runs/pretrain_vision", remove_unused_columns=False, report_to="none")
    script_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    training_args.remove_unused_columns = False  # the collator needs the raw image and label columns
    out = Path(script_args.out)
    if out.exists():
        raise FileExistsError(f"{out} exists already: remove it to pre-train the tower again.")
    base = Qwen2_5_VLForConditionalGeneration.from_pretrained(script_args.base, dtype=torch.float32)
    image_processor = AutoImageProcessor.from_pretrained(script_args.base)
    with training_args.main_process_first(desc="token labels"):
        train_rows = scene_rows(script_args.data, image_processor, script_args.max_scenes)
        eval_rows = scene_rows(script_args.eval_data, image_processor) if script_args.eval_data else None
    torch.manual_seed(training_args.seed)  # the heads' initialisation
    model = DenseObjectModel(base.model.visual, base.config.vision_config.out_hidden_size)
    collator = DenseObjectCollator(image_processor)
    metrics = {}
    if eval_rows is not None:
        metrics["before"] = token_accuracies(model, eval_rows, collator)
    trainer = Trainer(model=model, args=training_args, train_dataset=train_rows, data_collator=collator)
    result = trainer.train(resume_from_checkpoint=resume_checkpoint(training_args))
    metrics["train_loss"] = result.metrics["train_loss"]
    metrics["train_samples_per_second"] = result.metrics["train_samples_per_second"]
    if eval_rows is not None:
        metrics["after"] = token_accuracies(model, eval_rows, collator)
    if trainer.accelerator.is_main_process:
        # `base.model.visual` is the trained tower itself (shared with `model`): save the whole base, atomically.
        staging = out.with_name(out.name + ".tmp")
        base.save_pretrained(staging)
        image_processor.save_pretrained(staging)
        AutoTokenizer.from_pretrained(script_args.base).save_pretrained(staging)
        (staging / "vision_pretrain_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        os.replace(staging, out)
        print(json.dumps(metrics, indent=2))
    trainer.accelerator.wait_for_everyone()
    return metrics


if __name__ == "__main__":
    main()
