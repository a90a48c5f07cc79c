"""Reading the datasets the jobs train and evaluate on: the data files under a folder, and the rows of a dataset.

* `find_data_files`: parquet shards (or benchmark files) under a folder, never a writer's hidden temporary shard.
* `load_rows`: the rows of a parquet file or folder, a `save_to_disk` folder or a hub dataset.

Data only: nothing here imports a model (the writers' side is `training.dataset_files`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    from datasets import Dataset


PARQUET_PATTERNS = ("**/*.parquet",)


def find_data_files(path: str | Path, patterns: Sequence[str] = PARQUET_PATTERNS) -> list[Path]:
    """`path` itself when it is a file; else the files under the folder `path` that match the first of `patterns`
    matching any, sorted. Hidden files and folders are skipped: they are the writers' temporary shards, still being
    written (`.shard-00001.parquet.tmp-123`). The default finds every parquet file, at any depth."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist.")
    for pattern in patterns:
        found = sorted(
            file
            for file in path.glob(pattern)
            if file.is_file() and not any(part.startswith(".") for part in file.relative_to(path).parts)
        )
        if found:
            return found
    raise FileNotFoundError(f"No data files under {path} (looked for {', '.join(patterns)}).")


def load_rows(
    path: str | Path, split: str = "train", max_samples: int | None = None, question_types: list[str] | None = None
) -> Dataset:
    """Rows from a parquet file, a folder of parquet files (any depth), a `save_to_disk` folder (of a `Dataset`, or of
    a `DatasetDict`: its `split`, or its only split), or else a hub dataset id (its `split`); only those of
    `question_types` when given (before `max_samples`)."""
    import datasets

    local = Path(path)
    if local.is_dir() and any((local / name).exists() for name in ("state.json", "dataset_dict.json")):
        rows = datasets.load_from_disk(str(local))
        if isinstance(rows, datasets.DatasetDict):
            if split not in rows and len(rows) != 1:
                raise ValueError(f"{path} has no split {split!r}; its splits are {list(rows)}.")
            rows = rows[split] if split in rows else next(iter(rows.values()))
    elif local.exists():
        files = find_data_files(local)
        rows = datasets.load_dataset("parquet", data_files=[str(file) for file in files], split="train")
    else:
        rows = datasets.load_dataset(str(path), split=split)
    if question_types:
        # Reading only the type column: a row-wise filter would decode every image.
        keep = set(question_types)
        rows = rows.filter(lambda question_type: question_type in keep, input_columns="question_type")
        if len(rows) == 0:
            raise ValueError(f"No rows of question types {sorted(keep)} in {path}.")
    if max_samples is not None:
        rows = rows.select(range(min(max_samples, len(rows))))
    return rows
