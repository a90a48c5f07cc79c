"""The commands a results folder gives are the project's own and still parse: results/explore_issue14/NOTES.md's stage-2
arms are run through bash with `python` recorded instead of executed, and each recorded command goes through its
module's own parser."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from training.evaluate import build_parser as evaluate_parser
from training.sft import parse_args as sft_parse_args


REPO_ROOT = Path(__file__).resolve().parents[1]
NOTES = REPO_ROOT / "results" / "explore_issue14" / "NOTES.md"
ISSUE14_TYPES = ["distance_to_camera", "point_depth", "closer"]
# `nice -n 5 CMD` runs CMD; `python ARGS` records ARGS, one per line, separated by the unit separator.
RECORDING_SHELL = """
nice() { shift 2; "$@"; }
python() { local IFS=$'\\x1f'; printf '%s\\n' "$*" >> "$CALLS"; }
"""


def shell_blocks(markdown: str) -> list[str]:
    return re.findall(r"```\n(.*?)```", markdown, flags=re.S)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_stage2_arms_of_issue14s_notes_are_training_sft_and_evaluate_commands(tmp_path):
    assert not list(NOTES.parent.glob("*.py")), "a results folder holds results and commands, not code"
    (arms,) = [block for block in shell_blocks(NOTES.read_text()) if "arm()" in block]
    calls = tmp_path / "calls"
    subprocess.run(["bash", "-c", RECORDING_SHELL + arms], check=True, env={"CALLS": str(calls), "PATH": "/bin"})
    commands = [line.split("\x1f") for line in calls.read_text().splitlines()]
    assert [command[:2] for command in commands] == [["-m", "training.sft"], ["-m", "training.evaluate"]] * 4

    parsed = [sft_parse_args(command[2:] + ["--output_dir", str(tmp_path / "trainer")]) for command in commands[::2]]
    for script_args, training_args, model_args in parsed:
        assert model_args.model_name_or_path == "runs/base_cpu/stage0/init"
        assert script_args.dataset_path == "runs/base_cpu/data/train"
        assert script_args.question_types == ISSUE14_TYPES and script_args.max_eval_samples == 200
        assert not model_args.use_peft  # full fine-tuning of the language model, as in cpu-full
        assert (training_args.max_steps, training_args.learning_rate, training_args.seed) == (300, 2e-3, 0)
        assert training_args.per_device_train_batch_size == 32
    fusions = [script_args.depth_fusion for script_args, _, _ in parsed]
    assert fusions == ["none", "add", "add", "add"]
    opened = [(args.depth_merger_zero_init, args.depth_gate_init, args.depth_lr) for args, _, _ in parsed]
    assert opened == [(False, None, None), (True, 1.0, None), (False, None, None), (True, 1.0, 2e-4)]

    for sft, evaluation in zip(commands[::2], commands[1::2]):
        export_dir = sft[sft.index("--export_dir") + 1]
        args = evaluate_parser().parse_args(evaluation[2:])
        assert args.model == export_dir and args.data == "runs/base_cpu/data/test"
        assert args.question_types == ISSUE14_TYPES and args.instruction == ""


def test_the_notes_table_command_parses():
    (compare,) = re.findall(r"`python -m training\.evaluate (compare [^`]+)`", NOTES.read_text())
    args = evaluate_parser().parse_args(compare.split())
    assert args.results == ["runs/explore/*/eval/results.json"] and args.markdown == "runs/explore/compare.md"
