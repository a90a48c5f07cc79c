"""Write the rendered RGB-D spatial-VQA world as a parquet `datasets` dataset.

Example (the fixed, reproducible test set: 200 scenes x 6 questions = 1,200 rows, same bytes on every run)::

    python -m training.make_world --preset test --out data/world_test
    python -m training.make_world --out data/world_train --split train --num-scenes 20000 --seed 0 --workers 2

One row per question, in TRL conversational format (``messages`` + ``images``) with the metric ground truth: the depth
map and the camera inside the image block (``{"type": "image", "depth": <16-bit millimetre PNG>, "intrinsics": [fx,
fy, cx, cy]}``, `training.trl_layout`), so that stock ``trl sft`` trains with both, and ``scene`` JSON with intrinsics,
pose and objects. Shards are independent
units: each is generated from its own scene indices, written to a temporary file and atomically renamed, so an
interrupted run can simply be restarted and only missing shards are produced; temporary files a killed run left
behind are removed when the next run starts. A dataset card (``README.md``: license, task categories, features, row
counts, ``configs``) is written once every shard exists, so ``datasets.load_dataset(out_dir)`` loads the folder as is.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass
from multiprocessing import Pool
from pathlib import Path

from tqdm import tqdm

from training import world
from training.dataset_files import (
    card_front_matter,
    columns_table,
    remove_stale_temporary_files,
    temporary_path,
    write_atomically,
)
from training.trl_layout import image_turn, message_features, text_turn


PRESETS = {
    "test": {"split": "test", "num_scenes": 200, "seed": 0, "size": 224, "questions_per_scene": 6, "shard_size": 50},
    "val": {"split": "val", "num_scenes": 200, "seed": 0, "size": 224, "questions_per_scene": 6, "shard_size": 50},
    "train": {
        "split": "train",
        "num_scenes": 20000,
        "seed": 0,
        "size": 224,
        "questions_per_scene": 6,
        "shard_size": 500,
    },
}
DEFAULTS = {
    "split": "train",
    "num_scenes": 1000,
    "seed": 0,
    "size": 224,
    "questions_per_scene": 6,
    "shard_size": 100,
    "supersample": 1,
}
# 3: each image block also carries its camera's intrinsics; 2: depth inside the image block of `messages` (1: a
# `depth` column)
FORMAT_VERSION = 3
# Rendered from seeds by this project's code alone: no third-party image, model output or annotation is in it.
WORLD_LICENSE = "apache-2.0"
GENERATION_INFO_NAME = "generation.json"
CARD_NAME = "README.md"


@dataclass(frozen=True)
class WorldConfig:
    split: str
    num_scenes: int
    seed: int
    size: int
    questions_per_scene: int
    shard_size: int
    supersample: int = 1
    format_version: int = FORMAT_VERSION

    @property
    def num_shards(self) -> int:
        return -(-self.num_scenes // self.shard_size)

    def shard_path(self, out_dir: Path, shard: int) -> Path:
        return out_dir / f"{self.split}-{shard:05d}-of-{self.num_shards:05d}.parquet"

    @property
    def shard_glob(self) -> str:
        return f"{self.split}-*-of-{self.num_shards:05d}.parquet"


def dataset_features():
    from datasets import Features, Image, List, Value

    return Features(
        {
            "messages": message_features(),
            "images": List(Image()),
            "question_type": Value("string"),
            "question": Value("string"),
            "answer": Value("string"),
            "answer_value": Value("float64"),
            "choices": List(Value("string")),
            "unit": Value("string"),
            "marker": List(Value("int32")),
            "object_ids": List(Value("int32")),
            "scene_id": Value("string"),
            "split": Value("string"),
            "scene": Value("string"),
        }
    )


def sample_rows(sample: world.Sample) -> list[dict]:
    """One TRL conversational row per question; point_depth rows get their own image with the marker drawn."""
    rgb_png = world.encode_png(sample.rendering.rgb)
    depth_png = world.encode_depth_png(sample.rendering.depth)
    scene_json = world.metadata_json(sample.metadata)
    rows = []
    for question in sample.questions:
        image_png = rgb_png
        if question.marker is not None:
            image_png = world.encode_png(world.draw_marker(sample.rendering.rgb, *question.marker))
        record = question.to_dict()
        rows.append(
            {
                "messages": [
                    image_turn(depth_png, record["question"], intrinsics=sample.rendering.intrinsics),
                    text_turn(record["answer"]),
                ],
                "images": [{"bytes": image_png, "path": None}],
                "question_type": record["question_type"],
                "question": record["question"],
                "answer": record["answer"],
                "answer_value": record["answer_value"],
                "choices": record["choices"],
                "unit": record["unit"],
                "marker": record["marker"],
                "object_ids": record["object_ids"],
                "scene_id": sample.scene.scene_id,
                "split": sample.scene.split,
                "scene": scene_json,
            }
        )
    return rows


def write_shard(config: WorldConfig, out_dir: Path, shard: int, on_scene=None) -> int:
    """Generate one shard and publish it atomically; returns the number of scenes in it."""
    from datasets import Dataset, disable_progress_bars

    disable_progress_bars()  # our own tqdm bar already tracks scenes
    first = shard * config.shard_size
    indices = range(first, min(first + config.shard_size, config.num_scenes))
    # Type balancing restarts per shard so that a shard's content depends only on its own scene indices.
    type_counts: dict[str, int] = {}
    rows = []
    for index in indices:
        sample = world.make_sample(
            config.split, index, config.seed, config.size, config.questions_per_scene, type_counts, config.supersample
        )
        rows.extend(sample_rows(sample))
        if on_scene is not None:
            on_scene()
    final_path = config.shard_path(out_dir, shard)
    temp_path = temporary_path(final_path)
    Dataset.from_list(rows, features=dataset_features()).to_parquet(str(temp_path))
    os.replace(temp_path, final_path)
    return len(indices)


def _write_shard_job(job: tuple[WorldConfig, str, int]) -> int:
    config, out_dir, shard = job
    return write_shard(config, Path(out_dir), shard)


def _check_generation_info(config: WorldConfig, out_dir: Path) -> None:
    """Refuse to mix shards made with different settings; record the settings otherwise (atomically)."""
    info_path = out_dir / GENERATION_INFO_NAME
    info = json.dumps(asdict(config), indent=2, sort_keys=True) + "\n"
    if info_path.exists():
        if info_path.read_text() != info:
            raise SystemExit(
                f"{info_path} was written with different settings; use a fresh --out directory.\n"
                f"existing: {info_path.read_text()}\nrequested: {info}"
            )
        return
    write_atomically(info_path, info)


def write_dataset(config: WorldConfig, out_dir: str | Path, workers: int = 1, progress: bool = True) -> list[int]:
    """Write every missing shard of ``config`` to ``out_dir``; returns the indices of the shards written now."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # One job writes the whole folder (its worker processes included), so every temporary file here is a killed
    # run's: a to_parquet interrupted by SIGKILL leaves a partial `.NAME.tmp-PID` that nothing would ever rename.
    own_files = [config.shard_path(out_dir, shard) for shard in range(config.num_shards)]
    remove_stale_temporary_files([*own_files, out_dir / GENERATION_INFO_NAME, out_dir / CARD_NAME])
    _check_generation_info(config, out_dir)
    pending = [s for s in range(config.num_shards) if not config.shard_path(out_dir, s).exists()]
    done_scenes = config.num_scenes - sum(
        len(range(s * config.shard_size, min((s + 1) * config.shard_size, config.num_scenes))) for s in pending
    )
    bar = tqdm(
        total=config.num_scenes, initial=done_scenes, unit="scene", disable=not progress, desc=f"{config.split} shards"
    )
    if workers <= 1:
        for shard in pending:
            write_shard(config, out_dir, shard, on_scene=lambda: bar.update(1))
    else:
        with Pool(workers) as pool:
            for scenes in pool.imap_unordered(_write_shard_job, [(config, str(out_dir), s) for s in pending]):
                bar.update(scenes)
    bar.close()
    write_card(config, out_dir)
    return pending


COLUMN_DESCRIPTIONS = {
    "messages": "TRL conversational turns: the user's image and question, the assistant's answer; the image block's "
    "`depth` is a 16-bit PNG of the z-buffer depth along the optical axis in millimetres (value / 1000 = metres), "
    "exact to the millimetre, 0 = sky, and its `intrinsics` the camera's [fx, fy, cx, cy] in the image's pixels (both "
    "null in text blocks)",
    "images": "the RGB rendering (PNG); a `point_depth` row has its own copy with the marker drawn",
    "question_type": "one of `" + "`, `".join(world.QUESTION_TYPES) + "`",
    "question": "the question text (also in `messages`)",
    "answer": "the reference answer text (also in `messages`)",
    "answer_value": "the exact answer in metres for metric questions (distances, sizes, point depth); null otherwise",
    "choices": "the options of a categorical question (empty for numeric ones)",
    "unit": "`m` for metric questions, else empty",
    "marker": "(u, v) pixel marked on the image for `point_depth` questions, else empty",
    "object_ids": "indices into the scene's `objects` that the question is about",
    "scene_id": "`SPLIT-SEED-INDEX`: rows of one scene share it (one row per question)",
    "split": "`train`, `val` or `test`: the three never share a scene",
    "scene": "JSON: intrinsics, camera-to-world pose, and every object's shape, colour, material, 3D centre and size",
}


def write_card(config: WorldConfig, out_dir: Path) -> None:
    """`README.md`: YAML front matter (license, task categories, features, row counts, `configs`) and a description.

    Deterministic (no timings, no dates), so a byte-reproducible run stays byte-reproducible.
    """
    shard_files = [config.shard_path(out_dir, shard) for shard in range(config.num_shards)]
    features = dataset_features()
    front_matter = card_front_matter(
        features,
        split_files={config.split: shard_files},
        data_files={config.split: config.shard_glob},
        license_id=WORLD_LICENSE,
        pretty_name=f"Rendered RGB-D spatial VQA world ({config.split})",
        task_categories=["visual-question-answering", "depth-estimation"],
        tags=["rgb-d", "depth", "metric-depth", "spatial-reasoning", "synthetic"],
    )
    num_questions = config.num_scenes * config.questions_per_scene
    body = f"""
# Rendered RGB-D spatial VQA world: `{config.split}` split

{num_questions} questions about {config.num_scenes} procedurally rendered scenes
({config.size} x {config.size} px, {config.questions_per_scene} questions per scene), made with
`python -m training.make_world` (Qwen2.5-VL-Depth). Each scene is a ground plane with 2-5 spheres, cubes, cylinders
and cones of random true size, colour and material, seen by a random pinhole camera and rendered by an analytic ray
caster: the depth maps are exact, not sensor measurements or model predictions, and every answer is computed from the
scene's geometry. Scenes are seeded from (seed {config.seed}, split, index), so the train, val and test splits never
share a scene, and the same settings give the same bytes.

## Columns

{columns_table(features, COLUMN_DESCRIPTIONS)}

## Loading

```python
from datasets import load_dataset

world = load_dataset("<this folder>", split="{config.split}")
```

Depth in metres: `training.depth_png.decode_depth_png(row["messages"][0]["content"][0]["depth"])`, or
`numpy.asarray(PIL.Image.open(io.BytesIO(<those bytes>)), dtype=numpy.float32) / 1000`. Stock `trl sft --dataset_name
<this folder> --trust_remote_code ...` reads it from there.

## Settings

```json
{json.dumps(asdict(config), indent=2, sort_keys=True)}
```
"""
    write_atomically(out_dir / CARD_NAME, front_matter + body)


def parse_args(argv=None) -> tuple[argparse.Namespace, WorldConfig]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output directory for the parquet shards")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="named configuration; explicit flags override it")
    parser.add_argument("--split", choices=sorted(world.SPLIT_IDS))
    parser.add_argument("--num-scenes", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--size", type=int, help="square image side in pixels")
    parser.add_argument("--questions-per-scene", type=int)
    parser.add_argument("--shard-size", type=int, help="scenes per parquet shard")
    parser.add_argument("--supersample", type=int, help="RGB anti-aliasing factor (depth stays exact)")
    parser.add_argument("--workers", type=int, default=1, help="processes, one shard each at a time")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    settings = dict(DEFAULTS)
    settings.update(PRESETS.get(args.preset, {}))
    for key in DEFAULTS:
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    return args, WorldConfig(**settings)


def main(argv=None) -> None:
    args, config = parse_args(argv)
    start = time.perf_counter()
    written = write_dataset(config, args.out, workers=args.workers, progress=not args.no_progress)
    elapsed = time.perf_counter() - start
    scenes = sum(
        len(range(s * config.shard_size, min((s + 1) * config.shard_size, config.num_scenes))) for s in written
    )
    skipped = config.num_shards - len(written)
    rate = scenes / elapsed if elapsed > 0 else float("nan")
    print(
        f"wrote {len(written)} shard(s) ({scenes} scenes, {scenes * config.questions_per_scene} questions) to "
        f"{args.out}; skipped {skipped} finished shard(s); {elapsed:.1f} s, {rate:.1f} scenes/s"
    )


if __name__ == "__main__":
    main()
