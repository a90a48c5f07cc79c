"""Process a dataset's rows once, ahead of training, instead of at every step in the collator.

    from training.processed_cache import process_rows

    collator = DepthVLMCollator(processor)
    processed = process_rows(rows, collator, num_proc=4)  # one pass, progress bar, an Arrow file
    trainer = SFTTrainer(..., train_dataset=processed, data_collator=collator)

Without it every training step renders the chat template, decodes the PNGs, runs the image processor and patchifies
depth for its rows again, on the training loop's time. `process_rows` stores each row as `DepthVLMCollator.process_row`
returns it (`datasets.Dataset.map`, optionally in `num_proc` processes); the collator then only pads and concatenates,
and its batches are bit-identical to those it builds from the raw rows. Processing is deterministic (there is no random
augmentation in the collator or the processor), so nothing is frozen that should vary from epoch to epoch.

The result is cached under a key (`processed_rows_fingerprint`) made of the source rows' fingerprint (`datasets` derives
it from the data files and every `select`/`map` since), the processor's settings (class, `depth_fusion`, depth
estimator, invalid-depth policy, every image-processor setting such as `min_pixels`/`max_pixels`, the tokenizer and the
chat template) and the source of the code that builds the tensors: change any of them and the rows are processed again.
A depth estimator is keyed by its name, not its weights.

Memory: the rows live in an Arrow file that is memory-mapped, so RAM stays bounded whatever its size. Its size on disk
is about 4 bytes x (patches x 1176 + depth patches x 196) per row: 350 KB for a 112-px image with depth, 1.4 MB at
224 px. Rows of an in-memory dataset stay in memory unless `cache_dir` is given.
"""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import transformers
from datasets import Features, List, Value
from datasets.fingerprint import Hasher

from training.collator import PROCESSED_ROW_DTYPES, DepthVLMCollator


if TYPE_CHECKING:
    from datasets import Dataset


# Bump when what a processed row holds changes in a way the hashed sources below do not show.
PROCESSED_ROWS_FORMAT = 2  # 2: rows built through the chat template, depth read from the image blocks
# The columns the collator reads from a raw row (`depth`: an older dataset's); the others (answers, scene JSON, ...) are
# never decoded.
RAW_COLUMNS = ("messages", "images", "depth")
ARROW_TYPES = {"int64": Value("int64"), "float32": Value("float32"), "bool": Value("bool")}
# Rows per `map` batch: how often the progress bar moves and what a worker holds in memory before it writes.
MAP_BATCH_SIZE = 64


def processed_rows_features() -> Features:
    """Each stored tensor as a flat list (a reshape away from its batch shape; nested lists read back far slower)."""
    return Features(
        {key: List(ARROW_TYPES[str(dtype).removeprefix("torch.")]) for key, dtype in PROCESSED_ROW_DTYPES.items()}
    )


def processor_settings(processor) -> dict:
    """Everything about `processor` that shapes a processed row (its `to_dict` leaves `depth_fusion` out)."""
    tokenizer = processor.tokenizer
    return {
        "class": f"{type(processor).__module__}.{type(processor).__qualname__}",
        "depth_fusion": processor.depth_fusion,
        "depth_estimator": processor.depth_estimator,
        "invalid_depth": processor.invalid_depth,
        "fill_depth_holes": processor.fill_depth_holes,
        "relative_depth_median": getattr(processor, "relative_depth_median", None),  # scales relative estimates
        "image_processor": processor.image_processor.to_dict(),
        "tokenizer": tokenizer_definition(tokenizer),
        "chat_template": processor.chat_template,
    }


def tokenizer_definition(tokenizer) -> dict:
    """What the tokenizer encodes text with (vocabulary, merges, added tokens, normalizer, pre-tokenizer, ...), without
    the padding and truncation state that each call sets on a fast tokenizer's backend."""
    if not tokenizer.is_fast:
        return {"vocab": sorted(tokenizer.get_vocab().items())}
    definition = json.loads(tokenizer.backend_tokenizer.to_str())
    definition.pop("padding", None)
    definition.pop("truncation", None)
    return definition


def processing_sources(processor) -> list[str]:
    """The source of every module of ours that builds a processed row: the collator, the cell decoders and the
    processor's class hierarchy up to transformers (whose code `transformers.__version__` stands for)."""
    modules = {"training.collator", "training.depth_png", "training.trl_layout"}
    modules.update(
        cls.__module__
        for cls in type(processor).__mro__
        if cls.__module__.split(".")[0] not in ("transformers", "builtins")  # remote code is `transformers_modules`
    )
    return [inspect.getsource(sys.modules[name]) for name in sorted(modules)]


def processed_rows_fingerprint(rows: Dataset, processor) -> str:
    """The cache key of `rows` processed by `processor` (see the module docstring)."""
    return Hasher.hash(
        {
            "format": PROCESSED_ROWS_FORMAT,
            "rows": rows._fingerprint,
            "processor": processor_settings(processor),
            "transformers": transformers.__version__,
            "sources": processing_sources(processor),
        }
    )


def process_rows(
    rows: Dataset,
    collator: DepthVLMCollator,
    num_proc: int | None = None,
    cache_dir: str | Path | None = None,
    desc: str = "Processing rows for training",
) -> Dataset:
    """`rows` (raw TRL conversational rows) processed by `collator` once, as a numpy-formatted `Dataset` of the
    tensors `DepthVLMCollator.process_row` returns; the same collator batches them.

    Args:
        rows: a `datasets.Dataset` with `messages` (depth in the image blocks, `training.trl_layout`) and `images`.
        collator: the collator training uses (its processor decides everything; its `max_length` is checked again at
            batching time, so it may differ later).
        num_proc: processes to share the work (`datasets.Dataset.map`); `None`: this one.
        cache_dir: folder of the Arrow file (`processed-<fingerprint>.arrow`), reused while its key holds. `None`:
            `datasets`' own cache, next to the source rows' files (in memory for an in-memory dataset).
    """
    if not isinstance(collator, DepthVLMCollator):
        raise TypeError(f"process_rows needs a DepthVLMCollator; got {type(collator).__name__}.")
    missing = {"messages", "images"} - set(rows.column_names)
    if missing:
        raise ValueError(f"The rows have no {sorted(missing)} column: process_rows takes raw TRL conversational rows.")
    fingerprint = processed_rows_fingerprint(rows, collator.processor)
    cache_file_name = None
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        cache_file_name = str(Path(cache_dir) / f"processed-{fingerprint}.arrow")
    raw = rows.select_columns([column for column in RAW_COLUMNS if column in rows.column_names])
    processed = raw.map(
        process_batch,
        fn_kwargs={"collator": collator},
        batched=True,
        batch_size=MAP_BATCH_SIZE,
        remove_columns=raw.column_names,
        features=processed_rows_features(),
        num_proc=num_proc,
        cache_file_name=cache_file_name,
        new_fingerprint=fingerprint,
        desc=desc,
    )
    return processed.with_format("numpy")


def process_batch(batch: dict[str, Sequence], collator: DepthVLMCollator) -> dict[str, list]:
    """`map` function: a batch of raw columns -> the processed rows' columns."""
    rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
    processed = [collator.process_row(row) for row in rows]
    return {key: [row[key].numpy() for row in processed] for key in PROCESSED_ROW_DTYPES}
