"""The project's one depth layout: each image's depth map inside its image block of ``messages``.

    {"messages": [{"role": "user", "content": [{"type": "image", "text": None, "depth": <16-bit PNG bytes, mm>},
                                               {"type": "text", "text": "How far is the cube?", "depth": None}]},
                  {"role": "assistant", "content": [{"type": "text", "text": "2.1 m", "depth": None}]}],
     "images": [<the RGB image of the image block>], ...}

Every dataset writer (`training.make_world`, `training.make_rgbd_pairs`, sensor ingest) writes rows this way, and this
is where depth reaches the model through TRL's own vision collator: TRL's ``SFTTrainer`` keeps only the
``messages``/``images`` columns of a vision dataset, its collator calls ``prepare_multimodal_messages`` (which fills
each image block's ``"image"`` and keeps every other key of the block) and then ``processor.apply_chat_template(
messages, tokenize=True, ...)``, and the depth processor reads ``"depth"`` from image blocks on that path. So stock
``trl sft --dataset_name <make_world output> --trust_remote_code ...`` trains a depth model with depth, and this
project's collator (`training.collator`) is the same chat template plus assistant-only labels.

Every block of a parquet file has a ``depth`` field, as a list of structs has one schema: ``null`` outside image blocks
(and for an image without depth). A pair table (`make_rgbd_pairs`) has one user turn holding one image block and no
text.

Older datasets kept depth in a separate ``depth`` column (one map, or one per image). The readers here convert such a
row on read (`depth_into_messages`); for stock ``trl sft``, which drops that column, convert the files once:

    python -m training.trl_layout --data data/world_train_old --out data/world_train
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from training.dataset_files import temporary_path, write_atomically


# The key of an image block (and, in older datasets, the column) that holds its depth map.
DEPTH_KEY = "depth"
# The key of an image block that holds its camera intrinsics, [fx, fy, cx, cy] in the image's pixels (null: unknown).
# The depth processor reads it from image blocks as it reads depth; a `depth_input="points"` model uses it.
INTRINSICS_KEY = "intrinsics"


def message_features():
    """The `messages` feature of every dataset the project writes: turns of text and image blocks, depth included."""
    from datasets import List, Value

    block = {
        "type": Value("string"),
        "text": Value("string"),
        DEPTH_KEY: Value("binary"),
        INTRINSICS_KEY: List(Value("float64")),
    }
    return List({"role": Value("string"), "content": List(block)})


def image_turn(
    depth: bytes | None,
    text: str | None = None,
    role: str = "user",
    intrinsics: tuple[float, float, float, float] | None = None,
) -> dict[str, Any]:
    """One turn with an image block carrying `depth` and its camera's `intrinsics` (fx, fy, cx, cy; None: unknown),
    then the text block, if any, in the written layout."""
    camera = [float(value) for value in intrinsics] if intrinsics is not None else None
    content = [{"type": "image", "text": None, DEPTH_KEY: depth, INTRINSICS_KEY: camera}]
    if text is not None:
        content.append({"type": "text", "text": text, DEPTH_KEY: None, INTRINSICS_KEY: None})
    return {"role": role, "content": content}


def text_turn(text: str, role: str = "assistant") -> dict[str, Any]:
    return {"role": role, "content": [{"type": "text", "text": text, DEPTH_KEY: None, INTRINSICS_KEY: None}]}


def image_blocks(messages: Iterable[dict]) -> list[dict]:
    """The image blocks of a conversation, in order (one per entry of the row's `images`)."""
    return [
        block
        for message in messages
        if isinstance(message.get("content"), list)
        for block in message["content"]
        if block.get("type") == "image"
    ]


def row_depths(row: dict[str, Any]) -> list:
    """One depth cell per image of a row, `None` for an image without depth; either layout (older rows: `depth`)."""
    if "messages" not in row:  # an older pair table: `image` and `depth` columns, no conversation
        depth = row.get(DEPTH_KEY)
        return list(depth) if isinstance(depth, (list, tuple)) else [depth]
    row = depth_into_messages(row)
    return [block.get(DEPTH_KEY) for block in image_blocks(row.get("messages") or [])]


def first_depth(row: dict[str, Any]):
    """The depth cell of a row's first image (a pair's, a world question's), or `None`."""
    depths = row_depths(row)
    return depths[0] if depths else None


def first_intrinsics(row: dict[str, Any]) -> tuple[float, float, float, float] | None:
    """The camera of a row's first image block, (fx, fy, cx, cy) in its image's pixels, or `None` (unknown)."""
    blocks = image_blocks(row.get("messages") or [])
    camera = blocks[0].get(INTRINSICS_KEY) if blocks else None
    return None if camera is None else tuple(float(value) for value in camera)


def has_depth_layout(column_names: Iterable[str]) -> bool:
    """Whether a table can carry depth: `messages` with image blocks, or an older `depth` column."""
    return bool({"messages", DEPTH_KEY} & set(column_names))


def depth_into_messages(row: dict[str, Any]) -> dict[str, Any]:
    """An older row (a `depth` column: one map, or one per image) in the written layout: its depth in its image
    blocks, in order, and every block with a `depth` key (`None` outside image blocks). Other rows pass unchanged."""
    if DEPTH_KEY not in row:
        return row
    depth = row[DEPTH_KEY]
    maps = list(depth) if isinstance(depth, (list, tuple)) else [depth]
    blocks = image_blocks(row["messages"])
    if depth is None:
        maps = [None] * len(blocks)
    if len(maps) != len(blocks):
        raise ValueError(f"A row has {len(blocks)} image blocks but {len(maps)} depth maps: give one per image.")
    maps = iter(maps)
    messages = [
        {
            **message,
            "content": [
                {**block, DEPTH_KEY: next(maps) if block.get("type") == "image" else None}
                for block in message["content"]
            ],
        }
        if isinstance(message.get("content"), list)
        else message
        for message in row["messages"]
    ]
    return {**{key: value for key, value in row.items() if key != DEPTH_KEY}, "messages": messages}


def map_row_depths(row: dict[str, Any], transform: Callable[[Any], Any]) -> dict[str, Any]:
    """The columns of `row` that hold depth, rewritten with `transform` applied to each depth cell (`None`, an image
    without depth, stays `None`): `messages` when its image blocks carry depth, and an older row's `depth` column.
    Cells are transformed in the row's image order. For `datasets.Dataset.map`, which updates just these columns."""

    def apply(cell):
        return None if cell is None else transform(cell)

    out = {}
    if DEPTH_KEY in row:
        depth = row[DEPTH_KEY]
        out[DEPTH_KEY] = [apply(d) for d in depth] if isinstance(depth, (list, tuple)) else apply(depth)
    messages = row.get("messages") or []
    if any(isinstance(m.get("content"), list) and any(DEPTH_KEY in b for b in m["content"]) for m in messages):
        out["messages"] = [
            {
                **message,
                "content": [
                    {**block, DEPTH_KEY: apply(block[DEPTH_KEY])} if block.get(DEPTH_KEY) is not None else block
                    for block in message["content"]
                ],
            }
            if isinstance(message.get("content"), list)
            else message
            for message in messages
        ]
    return out


def without_depth(messages: list[dict]) -> list[dict]:
    """The conversation with the depth path closed: no block keeps a `depth` (or `intrinsics`, which only place depth
    in 3D) key: an RGB-only model's input."""
    dropped = (DEPTH_KEY, INTRINSICS_KEY)
    return [
        {**message, "content": [{k: v for k, v in block.items() if k not in dropped} for block in message["content"]]}
        if isinstance(message.get("content"), list)
        else message
        for message in messages
    ]


def convert(data: Path, out: Path) -> list[Path]:
    """Every parquet file of an older dataset under `data` rewritten to `out` (same relative paths) in this layout."""
    from datasets import Dataset, disable_progress_bars

    disable_progress_bars()
    written = []
    for source in sorted(Path(data).rglob("*.parquet")):
        if source.name.startswith("."):  # a writer's temporary file
            continue
        target = Path(out) / source.relative_to(data)
        rows = Dataset.from_parquet(str(source))
        if DEPTH_KEY in rows.column_names:
            # `map` keeps the other columns' features (the images stay an Image column) and infers the new blocks'.
            rows = rows.map(depth_into_messages, remove_columns=[DEPTH_KEY])
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
    parser = argparse.ArgumentParser(description="Move an older dataset's `depth` column into its image blocks.")
    parser.add_argument("--data", required=True, type=Path, help="a folder of parquet rows with a `depth` column")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    written = convert(args.data, args.out)
    print(f"Wrote {len(written)} files to {args.out}")


if __name__ == "__main__":
    main()
