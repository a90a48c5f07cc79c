"""Put each row's depth inside its image block of ``messages``: the layout in which depth reaches the model through
TRL's own vision collator, so that ``trl sft`` trains a depth model with depth, unchanged.

TRL's ``SFTTrainer`` keeps only the ``messages``/``prompt``/``completion``/``image``/``images`` columns of a vision
dataset, and its collator calls ``prepare_multimodal_messages`` (which fills each image block's ``"image"`` and keeps
every other key of the block) and then ``processor.apply_chat_template(messages, tokenize=True, ...)``. The depth
processor reads ``"depth"`` from image blocks on that path. So a row whose image block is
``{"type": "image", "depth": <16-bit PNG bytes in millimetres>}`` brings its depth map along, and a separate ``depth``
column (what ``training.make_world`` and ``training.make_rgbd_pairs`` write for this project's own collator) does not.

    python -m training.trl_layout --data data/world_train --out data/world_train_trl
    trl sft --model_name_or_path runs/depth_model --dataset_name data/world_train_trl --trust_remote_code ...

A depth model trained on images without depth logs a warning, so a dataset in the other layout does not go unnoticed.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from training.dataset_files import temporary_path, write_atomically


def depth_into_messages(row: dict[str, Any]) -> dict[str, Any]:
    """The row with its ``depth`` (one map, or one per image) moved into its image blocks, in order.

    Every block gets a ``depth`` key (``None`` outside image blocks), as a parquet column of structs needs one schema.
    """
    depth = row["depth"]
    maps = list(depth) if isinstance(depth, (list, tuple)) else [depth]
    image_blocks = [
        block
        for message in row["messages"]
        if isinstance(message.get("content"), list)
        for block in message["content"]
        if block.get("type") == "image"
    ]
    if len(maps) != len(image_blocks):
        raise ValueError(f"A row has {len(image_blocks)} image blocks but {len(maps)} depth maps: give one per image.")
    maps = iter(maps)
    messages = [
        {
            **message,
            "content": [
                {**block, "depth": next(maps) if block.get("type") == "image" else None}
                for block in message["content"]
            ],
        }
        if isinstance(message.get("content"), list)
        else message
        for message in row["messages"]
    ]
    return {**{key: value for key, value in row.items() if key != "depth"}, "messages": messages}


def convert(data: Path, out: Path) -> list[Path]:
    """Every parquet file under `data` rewritten to `out` (same relative paths) in the TRL depth layout."""
    from datasets import Dataset, disable_progress_bars

    disable_progress_bars()
    written = []
    for source in sorted(Path(data).rglob("*.parquet")):
        if source.name.startswith("."):  # a writer's temporary file
            continue
        target = Path(out) / source.relative_to(data)
        # `map` keeps the other columns' features (the images stay an Image column) and infers the new blocks'.
        rows = Dataset.from_parquet(str(source)).map(depth_into_messages, remove_columns=["depth"])
        temp = temporary_path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        rows.to_parquet(str(temp))
        temp.replace(target)
        written.append(target)
    if not written:
        raise FileNotFoundError(f"No parquet files under {data}.")
    write_atomically(Path(out) / "README.md", f"Converted from `{data}` by `python -m training.trl_layout`.\n")
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path, help="a folder of parquet rows with a `depth` column")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    written = convert(args.data, args.out)
    print(f"Wrote {len(written)} files to {args.out}")


if __name__ == "__main__":
    main()
