"""Spatial VQA sets read from local files into one sample schema: the rendered world and three public benchmarks.

    from training.benchmarks import read_benchmark
    data = read_benchmark("cvbench3d", "downloads/CV-Bench")  # a folder, or the parquet / jsonl file itself
    data.samples[0].question, data.samples[0].choices, data.skipped

Nothing is downloaded here: fetch the data yourself (e.g. `huggingface-cli download --repo-type dataset
nyu-visionx/CV-Bench --local-dir downloads/CV-Bench`) and point a reader at it.

Readers (`read_benchmark(name, path)`), with what they read and the `question_type` they give:

- `world`: `python -m training.make_world` parquet shards; every row; the world's 12 types, with exact depth.
- `cvbench3d`: nyu-visionx/CV-Bench `test_3d.parquet` (or `test.parquet`, or `test*.jsonl` with `img/`); rows of
  `type == "3D"`: task Depth (which of two boxed objects is closer to the camera) as `cvbench_depth`, task Distance
  (which of two objects is closer to a third) as `cvbench_distance`.
- `blink_depth`: BLINK-Benchmark/BLINK `Relative_Depth/val-*.parquet` (which of two marked points is closer), as
  `blink_relative_depth`; rows without a letter answer (the test split's are hidden) are skipped and counted.
- `qspatial`: andrewliao11/Q-Spatial-Bench `data/*.parquet`, `answer_value` in `answer_unit` converted to metres;
  `qspatial_plus` / `qspatial_scannet` from the file name.

Published schemas the readers expect (the fixtures in tests/fixtures/benchmarks/ follow them):

- CV-Bench: `idx, type ("2D"/"3D"), task, image, question, choices (list of names), answer ("(A)"), prompt,
  filename (image path under the dataset folder), source, source_dataset, source_filename, target_class,
  target_size, bbox`. Choices are shown to the model as "(A) lamp" lines; a letter or the name counts.
- BLINK: `idx, question, sub_task, image_1 .. image_4, choices, answer ("(A)"), prompt, explanation`; Relative_Depth
  uses `image_1` only.
- Q-Spatial-Bench: `question, answer_value, answer_unit ("centimeters", "meters", "feet", "inches", ...),
  question_type, image_path, image`. The QSpatial_scannet split ships without images (ScanNet's licence): its
  `image_path` is looked up under the data folder and its `images/` subfolder, where the authors' download script
  puts them; rows whose image is missing are skipped and counted.

Images are kept as stored (bytes or a path) and decoded only when a batch needs them (`load_image`), so a
benchmark of thousands of rows stays light in memory. No benchmark here has depth: a depth model gets its depth from
the processor's estimator, or runs RGB-only.
"""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from training import world
from training.answers import OPTION_LETTERS, unit_to_metres
from training.data_files import find_data_files
from training.trl_layout import first_depth, first_intrinsics


@dataclass
class SpatialSample:
    """One question in the schema every reader produces.

    `answer_value` is the metric answer in metres (None for non-metric questions); `choices` the options (empty
    for open questions); `options_lettered` whether the options are shown to the model as (A), (B), ... lines, as
    the benchmark's own prompt does. `image` and `depth` are as stored (bytes, path, array or PIL image; depth as
    float metres or a 16-bit millimetre PNG) and decoded by `load_image` / `load_depth`. `intrinsics` is the camera
    of the depth, (fx, fy, cx, cy) in the image's pixels, as the processor takes it (None: unknown). `marker` is the
    (u, v) pixel a point-depth question marks on its image (None: no marker).
    """

    id: str
    question: str
    question_type: str
    answer: str
    answer_value: float | None = None
    choices: list[str] = field(default_factory=list)
    options_lettered: bool = False
    image: Any = None
    depth: Any = None
    intrinsics: tuple[float, float, float, float] | None = None
    marker: tuple[int, int] | None = None

    def describe(self) -> dict:
        """The JSON-friendly fields (no pixels)."""
        return {
            "id": self.id,
            "question_type": self.question_type,
            "question": self.question,
            "answer": self.answer,
            "answer_value": self.answer_value,
            "choices": list(self.choices),
        }


@dataclass(frozen=True)
class DatasetInfo:
    """How results on a set are named in the model card's `model-index` (Hub dataset id as `type`)."""

    name: str
    type: str
    config: str | None = None
    split: str | None = None

    def as_dict(self) -> dict:
        return {"name": self.name, "type": self.type, "config": self.config, "split": self.split}


@dataclass
class BenchmarkData:
    """What a reader returns: the samples, the dataset's identity, and the rows it skipped, by reason."""

    samples: list[SpatialSample]
    info: DatasetInfo
    skipped: Counter = field(default_factory=Counter)


# ----------------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------------
def _read_table(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, list) else list(data.values())[0]
    raise ValueError(f"{path} is not a .parquet, .jsonl or .json file.")


def load_image(value: Any, base_dir: str | Path | None = None) -> Image.Image:
    """An RGB PIL image from what a dataset stores: `{"bytes", "path"}` structs, bytes, paths or PIL images."""
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray)):
        with Image.open(io.BytesIO(value)) as image:
            return image.convert("RGB")
    if isinstance(value, (str, Path)):
        path = Path(value)
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        with Image.open(path) as image:
            return image.convert("RGB")
    raise TypeError(f"Cannot read an image from {type(value).__name__}.")


def load_depth(value: Any) -> Any:
    """Depth for the processor: 16-bit millimetre PNG bytes become float32 metres; anything else passes through."""
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return world.decode_depth_png(bytes(value))
    return value


def _letter_index(answer: Any, num_choices: int) -> int | None:
    match = re.fullmatch(r"\s*\(?([A-Za-z])\)?\s*", str(answer or ""))
    if match is None:
        return None
    index = OPTION_LETTERS.find(match[1].upper())
    return index if 0 <= index < num_choices else None


# ----------------------------------------------------------------------------------------------------------------
# Readers
# ----------------------------------------------------------------------------------------------------------------
def read_world(path: str | Path) -> BenchmarkData:
    """Rows written by `training.make_world` (parquet shards in a folder, or one shard)."""
    files = find_data_files(path)
    samples, splits = [], Counter()
    for file in files:
        for row in _read_table(file):
            user_text = next(
                (
                    part["text"]
                    for message in row.get("messages") or []
                    if message["role"] == "user"
                    for part in message["content"]
                    if part.get("type") == "text" and part.get("text")
                ),
                None,
            )
            images = row.get("images") or []
            samples.append(
                SpatialSample(
                    id=f"{row.get('scene_id', file.stem)}/{len(samples)}",
                    question=user_text or row["question"],
                    question_type=row["question_type"],
                    answer=row["answer"],
                    answer_value=row.get("answer_value"),
                    choices=list(row.get("choices") or []),
                    image=images[0] if images else None,
                    depth=first_depth(row),
                    intrinsics=first_intrinsics(row),  # what training reads from the same image block
                    marker=tuple(row["marker"]) if row.get("marker") else None,
                )
            )
            splits[row.get("split") or "test"] += 1
    split = splits.most_common(1)[0][0] if splits else None
    info = DatasetInfo("Rendered RGB-D spatial VQA world", "rendered-rgbd-world", split=split)
    return BenchmarkData(samples, info)


CVBENCH_TASK_TYPES = {"depth": "cvbench_depth", "distance": "cvbench_distance"}


def read_cvbench3d(path: str | Path) -> BenchmarkData:
    """CV-Bench's 3D subset: depth order (Depth) and relative distance (Distance), two-way multiple choice."""
    files = find_data_files(path, ["test_3d.parquet", "test*.parquet", "*.parquet", "test_3d.jsonl", "*.jsonl"])
    samples, skipped = [], Counter()
    for file in files:
        for row in _read_table(file):
            if str(row.get("type", "3D")).upper() != "3D":
                skipped["not_3d"] += 1
                continue
            question_type = CVBENCH_TASK_TYPES.get(str(row.get("task", "")).lower())
            if question_type is None:
                skipped["unknown_task"] += 1
                continue
            choices = [str(choice) for choice in row["choices"]]
            answer_index = _letter_index(row.get("answer"), len(choices))
            if answer_index is None:
                skipped["no_answer"] += 1
                continue
            image = row.get("image")
            if isinstance(image, dict) and not image.get("bytes"):
                image = None
            if image is None:  # the jsonl release: images under img/, named by `filename`
                image = str(file.parent / row["filename"])
            samples.append(
                SpatialSample(
                    id=f"cvbench-{row.get('idx', len(samples))}",
                    question=row["question"],
                    question_type=question_type,
                    answer=choices[answer_index],
                    choices=choices,
                    options_lettered=True,
                    image=image,
                )
            )
    return BenchmarkData(samples, DatasetInfo("CV-Bench (3D)", "nyu-visionx/CV-Bench", "3D", "test"), skipped)


def read_blink_depth(path: str | Path) -> BenchmarkData:
    """BLINK's Relative_Depth: which of two marked points is closer. Only the val split has answers."""
    files = find_data_files(
        path, ["Relative_Depth/val-*.parquet", "val-*.parquet", "Relative_Depth/*.parquet", "*.parquet", "*.jsonl"]
    )
    samples, skipped, splits = [], Counter(), Counter()
    for file in files:
        for row in _read_table(file):
            if row.get("sub_task", "Relative_Depth") != "Relative_Depth":
                skipped["other_sub_task"] += 1
                continue
            choices = [str(choice) for choice in row["choices"]]
            answer_index = _letter_index(row.get("answer"), len(choices))
            if answer_index is None:
                skipped["answer_hidden"] += 1
                continue
            samples.append(
                SpatialSample(
                    id=str(row.get("idx", f"blink-{len(samples)}")),
                    question=row["question"],
                    question_type="blink_relative_depth",
                    answer=choices[answer_index],
                    choices=choices,
                    options_lettered=True,
                    image=row["image_1"],
                )
            )
        splits[file.name.split("-")[0]] += 1
    split = "+".join(sorted(splits)) or None
    return BenchmarkData(
        samples, DatasetInfo("BLINK Relative_Depth", "BLINK-Benchmark/BLINK", "Relative_Depth", split), skipped
    )


def read_qspatial(path: str | Path) -> BenchmarkData:
    """Q-Spatial-Bench: metric distances and sizes, answers converted to metres. Splits from the file names."""
    files = find_data_files(path, ["data/*.parquet", "*.parquet", "**/*.parquet", "*.jsonl"])
    root = Path(path) if Path(path).is_dir() else Path(path).parent
    samples, skipped, splits = [], Counter(), Counter()
    for file in files:
        split_match = re.match(r"(QSpatial_[A-Za-z]+)", file.name, re.IGNORECASE)
        split = split_match[1] if split_match else "qspatial"
        for row in _read_table(file):
            try:
                metres = float(row["answer_value"]) * unit_to_metres(row["answer_unit"])
            except (TypeError, ValueError, KeyError):
                skipped["unknown_unit"] += 1
                continue
            image = row.get("image")
            if isinstance(image, dict) and not image.get("bytes"):
                image = None  # a path alone names a file on the uploader's machine
            if image is None and row.get("image_path"):  # QSpatial_scannet: images fetched separately
                candidates = [base / row["image_path"] for base in (file.parent, root, root / "images")]
                image = next((str(c) for c in candidates if c.is_file()), None)
            if image is None:
                skipped["image_missing"] += 1
                continue
            unit_word = str(row["answer_unit"])
            samples.append(
                SpatialSample(
                    id=f"{split}-{len(samples)}",
                    question=row["question"],
                    question_type=split.lower(),
                    answer=f"{float(row['answer_value']):g} {unit_word}",
                    answer_value=metres,
                    image=image,
                )
            )
            splits[split] += 1
    split = "+".join(sorted(splits)) or None
    return BenchmarkData(samples, DatasetInfo("Q-Spatial-Bench", "andrewliao11/Q-Spatial-Bench", split=split), skipped)


BENCHMARK_READERS = {
    "world": read_world,
    "cvbench3d": read_cvbench3d,
    "blink_depth": read_blink_depth,
    "qspatial": read_qspatial,
}
BENCHMARK_ALIASES = {
    "cvbench": "cvbench3d",
    "cv-bench": "cvbench3d",
    "blink": "blink_depth",
    "blink_relative_depth": "blink_depth",
    "q-spatial": "qspatial",
    "qspatial_bench": "qspatial",
}


def read_benchmark(name: str, path: str | Path) -> BenchmarkData:
    """Read a set by name (`world`, `cvbench3d`, `blink_depth`, `qspatial`, or an alias) from local files."""
    key = BENCHMARK_ALIASES.get(name.lower(), name.lower())
    if key not in BENCHMARK_READERS:
        raise ValueError(f"Unknown benchmark {name!r}: expected one of {', '.join(BENCHMARK_READERS)}.")
    return BENCHMARK_READERS[key](path)


__all__ = [
    "BENCHMARK_READERS",
    "BenchmarkData",
    "DatasetInfo",
    "SpatialSample",
    "load_depth",
    "load_image",
    "read_benchmark",
]
