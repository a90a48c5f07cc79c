"""The installed `trl sft` command, unchanged, fine-tunes an exported depth model with the dataset's depth."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import with_open_depth_path
from training.trl_layout import convert, depth_into_messages


def test_depth_moves_into_the_image_blocks():
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
    with pytest.raises(ValueError, match="1 image blocks but 2 depth maps"):
        depth_into_messages({**row, "depth": [b"a", b"b"]})


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
def test_trl_sft_command_trains_with_depth(depth_models, world_dir, tmp_path, fusion):
    model, processor = depth_models[fusion]
    model = with_open_depth_path(model)  # so depth changes the loss
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    with_depth_data = tmp_path / "with_depth"
    convert(world_dir, with_depth_data)

    runs = {}
    for name, dataset in (("depth in the image blocks", with_depth_data), ("depth column", world_dir)):
        out = tmp_path / name.replace(" ", "_")
        out.mkdir()
        runs[name] = run_trl_sft(folder, dataset, out)

    losses_with_depth, stderr_with_depth = runs["depth in the image blocks"]
    losses_column, stderr_column = runs["depth column"]
    assert len(losses_with_depth) == len(losses_column) == 3
    # The same rows, seeds and steps: only depth differs, so the losses differ from the first step on.
    assert abs(losses_with_depth[0] - losses_column[0]) > 1e-4
    # TRL drops the separate `depth` column: that run trained RGB-only, and the model said so.
    assert "depth did not reach the model" in stderr_column
    assert "depth did not reach the model" not in stderr_with_depth
