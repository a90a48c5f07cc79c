"""Batch TRL conversational rows (``messages`` + ``images``, depth in the image blocks) into training inputs.

    from training.collator import DepthVLMCollator

    collator = DepthVLMCollator(processor, max_length=2048)
    batch = collator([dataset[0], dataset[1]])  # input_ids, attention_mask, pixel_values, ..., depth_values, labels
    loss = model(**batch).loss

Rows are what `python -m training.make_world` writes (`training.trl_layout`): ``messages`` (user turn with an image
block and a question, assistant turn with the answer; each image block's ``depth`` is a 16-bit millimetre PNG, or a
float array in metres) and ``images`` (one PIL image, or PNG bytes, per image block); an older row's ``depth`` column
is moved into its blocks on read. A batch is what TRL's vision collator builds (`prepare_multimodal_messages`, then
the processor's chat template, which reads depth from the image blocks) plus assistant-only labels. Depth is used only
when the processor's ``depth_fusion`` is not ``"none"`` (else it is taken out of the blocks), so the RGB-only baseline
is the same pipeline with one switch flipped; SpatialBot's arm (``training.spatialbot.DepthAsImageProcessor``) takes it
the same way and draws it as pictures.

Labels are ``-100`` everywhere except the assistant turns: the content of each assistant message and its closing
``<|im_end|>`` are trained; the system prompt, user turns, role headers, the newline after ``<|im_end|>``, image
placeholders (depth tokens included: ``concat`` gives an image with depth twice its placeholders) and padding are not.

Too-long samples raise instead of being truncated or dropped. Truncation could cut through an image's placeholder
tokens (the processor refuses that too), and silently dropping samples would change the batch size per rank under
DDP and hide a misconfigured ``max_length``/``max_pixels``. The error names the offending rows and their lengths.

Rows can also be processed once, ahead of training (`training.processed_cache.process_rows`): each row is then stored
as the tensors `process_row` returns, and the collator only pads and concatenates them into exactly the batch it would
have built from the raw rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import BatchFeature
from trl.data_utils import prepare_multimodal_messages

from training.depth_png import decode_depth_cell, decode_image_cell
from training.trl_layout import DEPTH_KEY, depth_into_messages, image_blocks, without_depth


IGNORE_INDEX = -100
# Tokens that are never a training target even inside an assistant turn: visual placeholders and their delimiters.
VISUAL_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
# What `process_row` keeps of a row's batch, flattened to 1-D (per token: input_ids, labels, mm_token_type_ids; per
# image: image_grid_thw, image_has_depth; per patch: pixel_values, depth_values), with the dtype each is stored in. The
# attention mask of a row alone is all ones, so it is rebuilt rather than stored.
PROCESSED_ROW_DTYPES = {
    "input_ids": torch.int64,
    "labels": torch.int64,
    "mm_token_type_ids": torch.int64,
    "pixel_values": torch.float32,
    "image_grid_thw": torch.int64,
    "depth_values": torch.float32,
    "image_has_depth": torch.bool,
    "depth_intrinsics": torch.float32,  # per image with depth: fx, fy, cx, cy (NaN: an unknown camera)
}


class DepthVLMCollator:
    """Rows in TRL conversational format to processor inputs plus assistant-only `labels`.

    Args:
        processor: a `Qwen2_5_VLDepthProcessor`; its `depth_fusion` decides whether depth is passed at all.
        max_length: longest allowed sample in tokens (image and depth placeholders included). `None`: no limit.
            A longer sample raises a `ValueError`; it is never truncated (see the module docstring).
    """

    def __init__(self, processor, max_length: int | None = None):
        self.processor = processor
        self.max_length = max_length
        tokenizer = processor.tokenizer
        self.im_start_id = tokenizer.convert_tokens_to_ids("<|im_start|>")
        self.im_end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        vocab = tokenizer.get_vocab()
        self.visual_token_ids = torch.tensor([vocab[token] for token in VISUAL_TOKENS if token in vocab])
        self._token_text: dict[int, str] = {}

    @property
    def uses_depth(self) -> bool:
        return self.processor.fusion.has_depth

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        processed = ["input_ids" in row for row in rows]
        if any(processed):
            if not all(processed):
                raise ValueError(
                    "The batch mixes processed rows (training.processed_cache) with raw rows: process every row of "
                    "a dataset, or none."
                )
            return self.collate_processed(rows)
        conversations = [self.conversation(row, index) for index, row in enumerate(rows)]
        batch = self.processor.apply_chat_template(
            conversations, tokenize=True, return_dict=True, return_tensors="pt", processor_kwargs={"padding": True}
        )
        self._check_lengths(batch["attention_mask"])
        batch["labels"] = self.assistant_labels(batch["input_ids"], batch["attention_mask"])
        return batch

    def conversation(self, row: dict, index: int = 0) -> list[dict]:
        """A row's `messages` as the chat template takes them: each image block holds its decoded image (TRL's
        `prepare_multimodal_messages`) and its depth map in metres, or no depth at all for an RGB-only processor."""
        row = depth_into_messages(row)  # an older row (a `depth` column) reads like a new one
        images = [decode_image_cell(image) for image in row["images"]]
        messages = prepare_multimodal_messages(row["messages"], images)
        if not self.uses_depth:
            return without_depth(messages)
        if (
            any(block.get(DEPTH_KEY) is None for block in image_blocks(messages))
            and not self.processor.depth_estimator
        ):
            raise ValueError(
                f"Row {index} has no depth for an image and the processor has no depth_estimator: with "
                f"depth_fusion={self.processor.depth_fusion!r} every image needs a depth map."
            )
        return [
            {
                **message,
                "content": [
                    {**block, DEPTH_KEY: decode_depth_cell(block[DEPTH_KEY])}
                    if block.get(DEPTH_KEY) is not None
                    else block
                    for block in message["content"]
                ],
            }
            for message in messages
        ]

    def _check_lengths(self, attention_mask: torch.Tensor) -> None:
        lengths = attention_mask.sum(dim=1)
        if self.max_length is not None and int(lengths.max()) > self.max_length:
            too_long = {i: int(n) for i, n in enumerate(lengths.tolist()) if n > self.max_length}
            raise ValueError(
                f"Samples {too_long} (batch index: tokens) are longer than max_length={self.max_length}. They are not "
                "truncated, which could cut through image/depth tokens: raise max_length, or lower the image "
                "processor's max_pixels."
            )

    def process_row(self, row: dict) -> dict[str, torch.Tensor]:
        """One raw row as the flat tensors of `PROCESSED_ROW_DTYPES`: its batch of one, unpadded, labels included.

        `collate_processed` pads and concatenates such rows into the batch `__call__` builds from the raw rows, bit for
        bit. Processing is deterministic (no random augmentation anywhere in it), which is what makes storing it valid.
        """
        batch = self([row])
        if "image_grid_thw" in batch:  # no depth in this row: say so per image, another row of a batch may have it
            batch.setdefault("image_has_depth", torch.zeros(len(batch["image_grid_thw"]), dtype=torch.bool))
            batch.setdefault("depth_values", torch.zeros(0, dtype=torch.float32))
            # No intrinsics: an unknown camera per image with depth, which a batch with other rows' cameras holds as
            # NaN too (the processor's own marking), and a batch without any camera leaves out (`collate_processed`).
            num_with_depth = int(batch["image_has_depth"].sum())
            batch.setdefault("depth_intrinsics", torch.full((num_with_depth, 4), float("nan")))
        if set(batch) != {*PROCESSED_ROW_DTYPES, "attention_mask"}:
            raise ValueError(
                f"The processor returned {sorted(batch)} for row {row.get('messages')!r}; processed rows store exactly "
                f"{sorted(PROCESSED_ROW_DTYPES)}. Train on the raw rows, or teach DepthVLMCollator.process_row the "
                "difference."
            )
        processed = {}
        for key, dtype in PROCESSED_ROW_DTYPES.items():
            if batch[key].dtype != dtype:
                raise TypeError(f"The processor returned {key} as {batch[key].dtype}; processed rows store {dtype}.")
            processed[key] = batch[key].reshape(-1)
        return processed

    def collate_processed(self, rows: Sequence[dict]) -> BatchFeature:
        """Rows made by `process_row` (tensors, arrays or lists) -> the batch `__call__` builds from their raw rows:
        per-token inputs padded on the tokenizer's side (pad token, attention 0, token type 0, label -100), images and
        patches concatenated in row order, `depth_values`/`image_has_depth` only when an image has depth."""
        rows = [{key: np.asarray(row[key]) for key in PROCESSED_ROW_DTYPES} for row in rows]
        tokenizer = self.processor.tokenizer
        lengths = [len(row["input_ids"]) for row in rows]
        longest = max(lengths)
        padding_values = {"input_ids": tokenizer.pad_token_id, "attention_mask": 0, "mm_token_type_ids": 0}
        padded = {key: np.full((len(rows), longest), value, dtype=np.int64) for key, value in padding_values.items()}
        padded["labels"] = np.full((len(rows), longest), IGNORE_INDEX, dtype=np.int64)
        for index, (row, length) in enumerate(zip(rows, lengths)):
            tokens = slice(longest - length, longest) if tokenizer.padding_side == "left" else slice(0, length)
            padded["attention_mask"][index, tokens] = 1
            for key in ("input_ids", "mm_token_type_ids", "labels"):
                padded[key][index, tokens] = row[key]

        grids = [row["image_grid_thw"].reshape(-1, 3) for row in rows]
        has_depth = np.concatenate([row["image_has_depth"] for row in rows]).astype(bool)
        patches = np.concatenate(
            [row["pixel_values"].reshape(int(grid.prod(-1).sum()), -1) for row, grid in zip(rows, grids)]
        )
        batch = {
            "input_ids": padded["input_ids"],
            "attention_mask": padded["attention_mask"],
            "mm_token_type_ids": padded["mm_token_type_ids"],
            "pixel_values": patches.astype(np.float32, copy=False),
            "image_grid_thw": np.concatenate(grids).astype(np.int64, copy=False),
        }
        if has_depth.any():
            depth = [
                row["depth_values"].reshape(int(grid[row["image_has_depth"].astype(bool)].prod(-1).sum()), -1)
                for row, grid in zip(rows, grids)
                if row["image_has_depth"].any()
            ]
            batch["depth_values"] = np.concatenate(depth).astype(np.float32, copy=False)
            batch["image_has_depth"] = has_depth
            cameras = np.concatenate([row["depth_intrinsics"].reshape(-1, 4) for row in rows]).astype(np.float32)
            if not np.isnan(cameras).all():  # the processor gives intrinsics only when some image has a camera
                batch["depth_intrinsics"] = cameras
        batch["labels"] = padded["labels"]
        batch = BatchFeature({key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in batch.items()})
        self._check_lengths(batch["attention_mask"])
        return batch

    def assistant_labels(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`input_ids` where a token belongs to an assistant turn's content or its closing `<|im_end|>`, else -100.

        Turns are found through the atomic special tokens, independent of how the tokenizer merges text: each
        `<|im_start|>` is followed by a role header that ends at the first token containing a newline.
        """
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        for row, ids in enumerate(input_ids.tolist()):
            position = 0
            while True:
                try:
                    turn_start = ids.index(self.im_start_id, position)
                except ValueError:
                    break
                role, content_start = self._read_role(ids, turn_start + 1)
                try:
                    turn_end = ids.index(self.im_end_id, content_start)
                except ValueError:
                    turn_end = len(ids) - 1  # an unfinished last turn: label it to the end
                if role == "assistant":
                    labels[row, content_start : turn_end + 1] = input_ids[row, content_start : turn_end + 1]
                position = turn_end + 1
        labels[torch.isin(input_ids, self.visual_token_ids)] = IGNORE_INDEX
        if attention_mask is not None:
            labels[attention_mask == 0] = IGNORE_INDEX
        return labels

    def _read_role(self, ids: list[int], start: int) -> tuple[str, int]:
        """The role named after `<|im_start|>` and the index of the first token after its header line."""
        header = ""
        for position in range(start, len(ids)):
            if ids[position] in (self.im_start_id, self.im_end_id):
                return header.strip(), position
            header += self._text_of(ids[position])
            if "\n" in header:
                return header.split("\n", 1)[0].strip(), position + 1
        return header.strip(), len(ids)

    def _text_of(self, token_id: int) -> str:
        if token_id not in self._token_text:
            self._token_text[token_id] = self.processor.tokenizer.decode([token_id])
        return self._token_text[token_id]
