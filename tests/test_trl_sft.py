"""The installed `trl sft` command, unchanged, fine-tunes an exported depth model with the depth `make_world` writes
inside the image blocks; older datasets (a `depth` column) convert on read, or with `python -m training.trl_layout`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import with_open_depth_path
from training.collator import DepthVLMCollator
from training.trl_layout import DEPTH_KEY, convert, depth_into_messages, first_depth, row_depths, without_depth


def test_an_older_depth_column_moves_into_the_image_blocks():
    row = {
        "messages": [
            {"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": "How far?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "2 m"}]},
        ],
        "images": ["rgb"],
        "depth": b"png",
        "answer": "2 m",
    }
    moved = depth_into_messages(row)
    assert "depth" not in moved and moved["answer"] == "2 m" and moved["images"] == ["rgb"]
    assert moved["messages"][0]["content"] == [
        {"type": "image", "text": None, "depth": b"png"},
        {"type": "text", "text": "How far?", "depth": None},
    ]
    assert row_depths(row) == row_depths(moved) == [b"png"]
    assert depth_into_messages(moved) is moved  # the written layout passes unchanged
    with pytest.raises(ValueError, match="1 image blocks but 2 depth maps"):
        depth_into_messages({**row, "depth": [b"a", b"b"]})


def older_layout(row: dict) -> dict:
    """A row as the writers wrote it before depth moved into the image blocks: a `depth` column (the blocks keep the
    rest, intrinsics included, which the conversion leaves as they are)."""
    messages = [
        {**message, "content": [{k: v for k, v in block.items() if k != DEPTH_KEY} for block in message["content"]]}
        for message in row["messages"]
    ]
    return {**row, "messages": messages, "depth": first_depth(row)}


def test_an_older_dataset_converts_to_what_make_world_writes_and_batches_the_same(depth_models, world_dir, tmp_path):
    from datasets import Dataset

    written = Dataset.from_parquet(sorted(str(path) for path in world_dir.glob("*.parquet")))
    old = written.map(older_layout)
    assert "depth" in old.column_names and all(
        block.get("depth") is None for block in old[0]["messages"][0]["content"]
    )
    old.to_parquet(str(tmp_path / "old" / "train-00000-of-00001.parquet"))
    convert(tmp_path / "old", tmp_path / "converted")
    converted = Dataset.from_parquet(str(tmp_path / "converted" / "train-00000-of-00001.parquet"))
    assert "depth" not in converted.column_names
    assert converted["messages"] == written["messages"]  # depth bytes included
    # The collator reads an older row on the fly, into exactly the batch of the new row.
    collator = DepthVLMCollator(depth_models["add"][1])
    new_batch, old_batch = collator([written[0], written[1]]), collator([old[0], old[1]])
    assert list(new_batch) == list(old_batch) and "depth_values" in new_batch
    assert all(torch.equal(new_batch[key], old_batch[key]) for key in new_batch)


def run_trl_sft(model_folder: Path, dataset: Path, out: Path) -> tuple[list[float], str]:
    """`trl sft` in a fresh offline process; returns the logged training losses and stderr."""
    trl = Path(sys.executable).parent / "trl"
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    environment.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(out / "hf_home"))
    environment.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    arguments = [
        "sft",
        *("--model_name_or_path", str(model_folder), "--dataset_name", str(dataset), "--trust_remote_code"),
        *("--output_dir", str(out / "run"), "--max_steps", "3", "--per_device_train_batch_size", "2"),
        *("--logging_steps", "1", "--report_to", "none", "--save_strategy", "steps", "--save_steps", "3"),
        *("--seed", "0", "--learning_rate", "1e-3", "--dataloader_num_workers", "0", "--use_cpu"),
    ]
    result = subprocess.run(
        [str(trl), *arguments], cwd=out, env=environment, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    state = json.loads((out / "run" / "checkpoint-3" / "trainer_state.json").read_text())  # its log history
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry], result.stderr


@pytest.mark.parametrize("fusion", ["add", "adapter"])
def test_trl_sft_on_make_world_output_trains_with_depth(depth_models, world_dir, tmp_path, fusion):
    """Stock `trl sft` on `make_world`'s folder as written, against the same rows with the depth path closed."""
    from datasets import Dataset

    model, processor = depth_models[fusion]
    model = with_open_depth_path(model)  # so depth changes the loss
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    # The same rows with no depth in any block: what an RGB-only dataset of the same questions looks like.
    closed = tmp_path / "closed_rows"
    rows = Dataset.from_parquet(sorted(str(path) for path in world_dir.glob("*.parquet")))
    rows.map(lambda row: {"messages": without_depth(row["messages"])}).to_parquet(str(closed / "train.parquet"))

    runs = {}
    for name, dataset in (("make_world output", world_dir), ("depth closed", closed)):
        out = tmp_path / name.replace(" ", "_")
        out.mkdir()
        runs[name] = run_trl_sft(folder, dataset, out)

    losses_with_depth, stderr_with_depth = runs["make_world output"]
    losses_closed, stderr_closed = runs["depth closed"]
    assert len(losses_with_depth) == len(losses_closed) == 3
    # The same rows, seeds and steps: only depth differs, so the losses differ from the first step on.
    assert abs(losses_with_depth[0] - losses_closed[0]) > 1e-4
    # Without depth the model trained RGB-only and said so; on make_world's output depth reached it.
    assert "depth did not reach the model" in stderr_closed
    assert "depth did not reach the model" not in stderr_with_depth
