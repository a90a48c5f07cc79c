"""What every dataset writer of this project does the same way: atomic files, clean-up after a kill, the dataset card.

* `write_atomically` / `temporary_path`: a file is written under a hidden temporary name and renamed into place, so
  a reader (or a resuming run) sees the whole file or none of it.
* `remove_stale_temporary_files`: what a killed run left behind (`.NAME.tmp-PID`), removed when the next run starts.
* `card_front_matter` / `columns_table` / `skipped_section`: the dataset card (`README.md`) that makes an output
  folder loadable with `datasets.load_dataset(folder)` and publishable as is. The YAML front matter is built the way
  `Dataset.push_to_hub` builds it (`DatasetCardData` + `DatasetInfosDict` + `MetadataConfigs`), from the features the
  writer declares and the row counts of the parquet files it actually wrote.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path


SIZE_CATEGORY_BOUNDS = ("1K", "10K", "100K", "1M", "10M", "100M", "1B", "10B", "100B", "1T")
SKIPPED_LISTED_IN_CARD = 200


# --------------------------------------------------------------------------------------------------------------
# Atomic files
# --------------------------------------------------------------------------------------------------------------
def temporary_path(final_path: Path) -> Path:
    """Where `final_path` is written before it is renamed into place.

    Hidden and suffixed, so that neither a card's `data_files` glob nor `datasets`' own file discovery picks it up, and
    with this process's id, so that two processes never write the same temporary file.
    """
    final_path = Path(final_path)
    return final_path.with_name(f".{final_path.name}.tmp-{os.getpid()}")


def write_atomically(path: Path, content: str | bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp_path = temporary_path(path)
    if isinstance(content, bytes):
        temp_path.write_bytes(content)
    else:
        temp_path.write_text(content)
    os.replace(temp_path, path)


def remove_stale_temporary_files(final_paths: Iterable[Path]) -> list[Path]:
    """Delete the temporary files of `final_paths` that killed runs left behind; returns what was removed.

    Pass only the files this process is about to write: another process may be writing the others right now.
    """
    removed = []
    for final_path in map(Path, final_paths):
        if final_path.parent.is_dir():
            for temp_path in final_path.parent.glob(f".{final_path.name}.tmp-*"):
                temp_path.unlink(missing_ok=True)
                removed.append(temp_path)
    return removed


# --------------------------------------------------------------------------------------------------------------
# Dataset card
# --------------------------------------------------------------------------------------------------------------
def size_category(num_rows: int) -> str:
    """The Hub's `size_categories` value for `num_rows`: "n<1K", "1K<n<10K", ..., "n>1T"."""
    if num_rows < 1000:
        return "n<1K"
    band = min(int(math.log10(num_rows)) - 3, len(SIZE_CATEGORY_BOUNDS) - 1)
    if band == len(SIZE_CATEGORY_BOUNDS) - 1:
        return "n>1T"
    return f"{SIZE_CATEGORY_BOUNDS[band]}<n<{SIZE_CATEGORY_BOUNDS[band + 1]}"


def card_front_matter(
    features,
    split_files: Mapping[str, list[Path]],
    data_files: Mapping[str, str],
    license_id: str,
    pretty_name: str,
    task_categories: list[str],
    tags: list[str],
) -> str:
    """The YAML front matter of a dataset card, `---` lines included.

    `features` are the written columns (`datasets.Features`), `split_files` the parquet files of each split (row counts
    and sizes are read from their footers), `data_files` the glob of each split relative to the card's folder.
    """
    import pyarrow.parquet as pq
    from datasets import DatasetInfo, SplitDict, SplitInfo
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCardData

    splits = SplitDict()
    download_size = 0
    for split, files in split_files.items():
        num_examples = num_bytes = 0
        for file in files:
            metadata = pq.read_metadata(file)
            num_examples += metadata.num_rows
            num_bytes += sum(metadata.row_group(index).total_byte_size for index in range(metadata.num_row_groups))
            download_size += Path(file).stat().st_size
        splits.add(SplitInfo(name=split, num_bytes=num_bytes, num_examples=num_examples))
    num_rows = sum(split.num_examples for split in splits.values())
    card_data = DatasetCardData(
        license=license_id,
        pretty_name=pretty_name,
        task_categories=list(task_categories),
        tags=list(tags),
        size_categories=[size_category(num_rows)],
    )
    dataset_size = sum(split.num_bytes for split in splits.values())
    info = DatasetInfo(features=features, splits=splits, download_size=download_size, dataset_size=dataset_size)
    DatasetInfosDict({"default": info}).to_dataset_card_data(card_data)
    configs = [{"split": split, "path": pattern} for split, pattern in data_files.items()]
    MetadataConfigs({"default": {"data_files": configs}}).to_dataset_card_data(card_data)
    return f"---\n{card_data.to_yaml()}\n---\n"


def feature_type_name(feature) -> str:
    """A short, readable type of one column: `string`, `int32`, `image`, `list of image`, `struct`."""
    from datasets import Image, LargeList, List, Sequence, Value

    if isinstance(feature, Value):
        return feature.dtype
    if isinstance(feature, Image):
        return "image"
    if isinstance(feature, (List, LargeList, Sequence)):
        return f"list of {feature_type_name(feature.feature)}"
    if isinstance(feature, (dict, list)):
        return "struct"
    return type(feature).__name__


def columns_table(features, descriptions: Mapping[str, str]) -> str:
    """A markdown table of every column: name, type, and what it holds. Every column must be described."""
    undescribed = [name for name in features if name not in descriptions]
    unknown = [name for name in descriptions if name not in features]
    if undescribed or unknown:
        raise ValueError(
            f"Column descriptions do not match the features: undescribed {undescribed}, unknown {unknown}."
        )
    lines = ["| column | type | content |", "|---|---|---|"]
    lines += [
        f"| `{name}` | {feature_type_name(feature)} | {descriptions[name]} |" for name, feature in features.items()
    ]
    return "\n".join(lines)


def skipped_section(skipped: list[dict], limit: int = SKIPPED_LISTED_IN_CARD) -> str:
    """Markdown: skipped inputs counted by reason, then the first `limit` listed (`source_id`, `reason`, `detail`)."""
    if not skipped:
        return "None."
    counts = Counter(record["reason"] for record in skipped)
    parts = ["| reason | count |", "|---|---|"]
    parts += [f"| `{reason}` | {count} |" for reason, count in sorted(counts.items())]
    parts += ["", "| source_id | reason | detail |", "|---|---|---|"]
    for record in skipped[:limit]:
        detail = record.get("detail", "")[:120].replace("|", "/")
        parts.append(f"| `{record['source_id']}` | `{record['reason']}` | {detail} |")
    if len(skipped) > limit:
        parts += ["", f"... and {len(skipped) - limit} more: see `skipped.jsonl`."]
    return "\n".join(parts)
