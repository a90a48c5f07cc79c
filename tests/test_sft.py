"""Stage 2 spatial SFT: assistant-only labels, LoRA placement, loss drop, frozen modules, merged export, 2-process DDP.

Everything runs on CPU from the tiny random base, on a small dataset rendered into a temporary folder.
"""

import contextlib
import io
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, BitsAndBytesConfig, Qwen2_5_VLForConditionalGeneration

from configuration_depth import DEPTH_FUSION_MODES, DEPTH_FUSIONS
from modeling_qwen2_5_vl_depth import Qwen2_5_VLDepthForConditionalGeneration
from training.build_depth_model import build_depth_model
from training.checkpoints import resume_checkpoint
from training.collator import IGNORE_INDEX, DepthVLMCollator
from training.data_files import load_rows
from training.export import merged_model_from_adapter
from training.model_loading import kbit_device_map, load_starting_model
from training.sft import build_trainer, finish, make_parser, parse_args, train
from training.sft_policy import UNQUANTIZED_MODULES, is_depth_module_parameter
from training.trl_layout import first_depth, without_depth


REPO_ROOT = Path(__file__).resolve().parents[1]
NUM_LLM_LAYERS = 2  # training.tiny: 2 text layers
LLM_PROJECTIONS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
LORA_PARAMETER = re.compile(
    r"base_model\.model\.model\.language_model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+_proj)\.lora_[AB]\.default\.weight"
)
FULLY_TRAINED_PARAMETER = re.compile(
    r"base_model\.model\.model\.(depth_encoder\.merger|depth_gate|depth_patch_embed|depth_adapters)"
    r"\.modules_to_save\.default\..+"
)
FULLY_TRAINED_BY_FUSION = {
    "add": {"depth_encoder.merger", "depth_gate"},
    "concat": {"depth_encoder.merger"},
    "rgbd": {"depth_patch_embed"},
    "adapter": {"depth_adapters"},
    "none": set(),
}
# Short but decisive CPU training: a constant, high LoRA learning rate on 24 rows the eval then re-reads.
TRAINING_FLAGS = [
    "--max_train_samples", "24", "--max_eval_samples", "24", "--max_steps", "40", "--learning_rate", "3e-3",
    "--lr_scheduler_type", "constant", "--lora_dropout", "0", "--per_device_train_batch_size", "4",
    "--logging_steps", "10", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true",
]  # fmt: skip


@pytest.fixture(scope="module")
def rows(world_dir):
    return load_rows(str(world_dir))


@pytest.fixture(scope="module")
def sft_base(tiny_base, tmp_path_factory) -> Path:
    """The tiny base with its final norm scaled x4, i.e. with a pretrained-like logit scale.

    The random base's logits are about `0.16 * cos(hidden, embedding)` (norm weight 1, embeddings std 0.02, width 64),
    so even a perfect adapter could not move the answer loss far from ln(512): the frozen head caps it. Scaled x4 the
    start is still near-uniform (loss ~6.3) but a trained adapter can make confident predictions, as on a real model.
    """
    folder = tmp_path_factory.mktemp("sft_base")
    shutil.copytree(tiny_base, folder, dirs_exist_ok=True)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_base)
    with torch.no_grad():
        model.model.language_model.norm.weight.mul_(4.0)
    model.save_pretrained(folder)
    return folder


def sft_args(base, world_dir, output_dir, fusion, *extra):
    return parse_args(
        [
            "--model_name_or_path", str(base), "--depth_fusion", fusion, "--dataset_path", str(world_dir),
            "--eval_dataset_path", str(world_dir), "--output_dir", str(output_dir), *TRAINING_FLAGS, *extra,
        ]
    )  # fmt: skip


def answer_ids(tokenizer, answer: str) -> list[int]:
    """What must be trained for one assistant turn, tokenized on its own: the answer and the closing `<|im_end|>`."""
    return tokenizer(answer + "<|im_end|>", add_special_tokens=False)["input_ids"]


def two_rows_of_different_lengths(rows, tokenizer):
    first = rows[0]
    length = len(tokenizer(first["question"])["input_ids"])
    second = next(row for row in rows if len(tokenizer(row["question"])["input_ids"]) != length)
    return [first, second]


# --------------------------------------------------------------------------------------------------------------
# Collator
# --------------------------------------------------------------------------------------------------------------
class TestAssistantOnlyLabels:
    @pytest.mark.parametrize("fusion", DEPTH_FUSION_MODES)
    def test_only_the_answer_and_its_im_end_are_labelled_in_a_left_padded_batch(self, depth_models, rows, fusion):
        processor = depth_models[fusion][1]
        tokenizer = processor.tokenizer
        batch_rows = two_rows_of_different_lengths(rows, tokenizer)
        batch = DepthVLMCollator(processor)(batch_rows)
        input_ids, labels, attention_mask = batch["input_ids"], batch["labels"], batch["attention_mask"]

        assert (attention_mask[:, 0] == 0).sum() == 1, "exactly one sample is left-padded"
        newline_id = tokenizer("\n", add_special_tokens=False)["input_ids"]
        for index, row in enumerate(batch_rows):
            expected = answer_ids(tokenizer, row["answer"])
            # The template ends "...<|im_start|>assistant\n{answer}<|im_end|>\n": the labelled run is the answer and
            # <|im_end|>, right before the final newline; everything else is -100.
            wanted = torch.full_like(labels[index], IGNORE_INDEX)
            wanted[-1 - len(expected) : -1] = torch.tensor(expected)
            assert labels[index].tolist() == wanted.tolist()
            assert input_ids[index, -1 - len(expected) : -1].tolist() == expected
            assert input_ids[index, -1:].tolist() == newline_id

        def ids_of(token):
            return input_ids == tokenizer.convert_tokens_to_ids(token)

        image_tokens, padding = ids_of("<|image_pad|>"), attention_mask == 0
        assert padding.sum() > 0
        assert (labels[image_tokens | padding] == IGNORE_INDEX).all()
        # concat: every image has depth, so its run of placeholders holds its RGB tokens and then as many depth tokens.
        merged_tokens = (batch["image_grid_thw"].prod(-1) // 4).tolist()
        per_token = DEPTH_FUSIONS[fusion].tokens_per_image_with_depth
        assert image_tokens.sum(-1).tolist() == [per_token * n for n in merged_tokens]
        if fusion == "none":  # the RGB-only baseline ignores the depth column
            assert "depth_values" not in batch and "image_has_depth" not in batch
        else:
            assert batch["depth_values"].shape == (int(batch["image_grid_thw"].prod(-1).sum()), 14 * 14)
            assert batch["image_has_depth"].tolist() == [True, True]

    def test_two_turn_conversation_labels_both_answers_and_nothing_else(self, depth_models, rows):
        processor = depth_models["add"][1]
        tokenizer = processor.tokenizer
        row = dict(rows[0])
        row["messages"] = [
            {"role": "system", "content": [{"type": "text", "text": "Answer in metres."}]},
            {
                "role": "user",
                "content": [
                    {"type": "image", "depth": first_depth(rows[0])},
                    {"type": "text", "text": "How many objects are there?"},
                ],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "3"}]},
            {"role": "user", "content": [{"type": "text", "text": "Which is closer to the camera?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "the red cube"}]},
        ]
        batch = DepthVLMCollator(processor)([row, rows[1]])
        input_ids, labels = batch["input_ids"][0], batch["labels"][0]

        labelled = (labels != IGNORE_INDEX).nonzero().squeeze(-1).tolist()
        runs = [[labelled[0]]]
        for position in labelled[1:]:
            if position == runs[-1][-1] + 1:
                runs[-1].append(position)
            else:
                runs.append([position])
        header = tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
        for run, answer in zip(runs, ["3", "the red cube"], strict=True):
            assert labels[run].tolist() == input_ids[run].tolist() == answer_ids(tokenizer, answer)
            assert input_ids[run[0] - len(header) : run[0]].tolist() == header

    def test_too_long_samples_raise_instead_of_being_truncated(self, depth_models, rows):
        collator = DepthVLMCollator(depth_models["concat"][1], max_length=40)
        with pytest.raises(ValueError, match="longer than max_length=40"):
            collator([rows[0], rows[1]])

    def test_rows_without_depth_are_refused_by_a_depth_model(self, depth_models, rows):
        row = {**rows[0], "messages": without_depth(rows[0]["messages"])}
        with pytest.raises(ValueError, match="Row 0 has no depth for an image"):
            DepthVLMCollator(depth_models["add"][1])([row])
        assert "depth_values" not in DepthVLMCollator(depth_models["none"][1])([row])

    def test_depth_reaches_the_processor_in_metres(self, depth_models, rows):
        """The 16-bit millimetre PNG must arrive as metres: an image on the 112x112 grid keeps every value."""
        row = rows[0]
        batch = DepthVLMCollator(depth_models["add"][1])([row])
        millimetres = np.asarray(Image.open(io.BytesIO(first_depth(row))), dtype=np.float64)
        assert batch["image_grid_thw"].tolist() == [[1, 8, 8]]  # 112x112 is already on the grid: no resizing
        assert batch["depth_values"].double().sum().item() == pytest.approx(millimetres.sum() / 1000, rel=1e-6)


# --------------------------------------------------------------------------------------------------------------
# Model setup
# --------------------------------------------------------------------------------------------------------------
class TestModelSetup:
    def test_fusion_modes_built_from_one_base_share_every_base_weight(self, tiny_base, world_dir, tmp_path):
        states = {}
        for fusion in DEPTH_FUSION_MODES:
            script_args, training_args, model_args = sft_args(tiny_base, world_dir, tmp_path, fusion)
            states[fusion] = load_starting_model(script_args, model_args, training_args)[0].state_dict()
        base_names = set(states["none"])
        assert base_names and all(not name.startswith("model.depth_") for name in base_names)
        for fusion in DEPTH_FUSION_MODES:
            assert (base_names < set(states[fusion])) == DEPTH_FUSIONS[fusion].has_depth
            for name in base_names:
                assert torch.equal(states[fusion][name], states["none"][name]), (fusion, name)

    def test_an_aligned_folder_keeps_its_depth_encoder_when_the_fusion_changes(self, tiny_base, world_dir, tmp_path):
        script_args, training_args, model_args = sft_args(tiny_base, world_dir, tmp_path, "add")
        aligned, processor = load_starting_model(script_args, model_args, training_args)
        with torch.no_grad():  # stands in for Stage 1: a depth encoder that no longer equals the RGB tower copy
            for parameter in aligned.model.depth_encoder.parameters():
                parameter.add_(torch.randn_like(parameter) * 0.1)
            aligned.model.depth_gate.gate.fill_(0.3)
        aligned.save_pretrained(tmp_path / "aligned")
        processor.save_pretrained(tmp_path / "aligned")
        aligned_encoder = aligned.model.depth_encoder.state_dict()

        for fusion, gate in (("concat", None), ("add", 0.3)):
            script_args, training_args, model_args = sft_args(
                tiny_base, world_dir, tmp_path, fusion, "--aligned_depth_model", str(tmp_path / "aligned")
            )
            model, processor = load_starting_model(script_args, model_args, training_args)
            assert model.config.depth_fusion == processor.depth_fusion == fusion
            for name, value in model.model.depth_encoder.state_dict().items():
                assert torch.equal(value, aligned_encoder[name]), name
            if gate is None:
                assert not hasattr(model.model, "depth_gate")
            else:
                assert model.model.depth_gate.gate.tolist() == pytest.approx(
                    [gate] * model.config.text_config.hidden_size
                )

    @pytest.mark.parametrize("fusion", DEPTH_FUSION_MODES)
    def test_lora_sits_on_llm_projections_and_depth_modules_train_in_full(
        self, tiny_base, world_dir, tmp_path, fusion
    ):
        trainer = build_trainer(*sft_args(tiny_base, world_dir, tmp_path, fusion))
        trainable = [name for name, parameter in trainer.model.named_parameters() if parameter.requires_grad]
        lora = [LORA_PARAMETER.fullmatch(name) for name in trainable]
        fully_trained = [FULLY_TRAINED_PARAMETER.fullmatch(name) for name in trainable]
        assert all(a or b for a, b in zip(lora, fully_trained)), [
            n for n, a, b in zip(trainable, lora, fully_trained) if not (a or b)
        ]
        adapted = {(int(match[1]), match[2]) for match in lora if match}
        assert adapted == {(layer, projection) for layer in range(NUM_LLM_LAYERS) for projection in LLM_PROJECTIONS}
        assert sum(match is not None for match in lora) == 2 * len(adapted)  # an A and a B each
        assert {match[1] for match in fully_trained if match} == FULLY_TRAINED_BY_FUSION[fusion]

    def test_without_lora_the_llm_trains_and_the_encoders_stay_frozen(self, tiny_base, world_dir, tmp_path):
        trainer = build_trainer(*sft_args(tiny_base, world_dir, tmp_path, "add", "--use_peft", "false"))
        for name, parameter in trainer.model.named_parameters():
            frozen = name.startswith(
                ("model.visual.", "model.depth_encoder.blocks.", "model.depth_encoder.patch_embed.")
            )
            assert parameter.requires_grad != frozen, name

    def test_processing_rows_ahead_gives_the_same_batches(self, tiny_base, world_dir, tmp_path):
        fresh = build_trainer(*sft_args(tiny_base, world_dir, tmp_path / "fresh", "concat"))
        ahead = build_trainer(*sft_args(tiny_base, world_dir, tmp_path / "ahead", "concat", "--process_rows_ahead"))
        assert "input_ids" in ahead.train_dataset.column_names  # processed once, before training
        rows = [fresh.train_dataset[i] for i in range(3)]
        processed = [ahead.train_dataset[i] for i in range(3)]
        expected, actual = fresh.data_collator(rows), ahead.data_collator(processed)
        assert expected.keys() == actual.keys() and "depth_values" in actual
        for key in expected:
            assert torch.equal(expected[key], actual[key]), key

    def test_cpu_defaults(self):
        if torch.cuda.is_available():
            pytest.skip("the CPU defaults apply only without CUDA")
        _, training_args, model_args = make_parser().parse_args_and_config(args=["--output_dir", "unused"])
        assert (training_args.bf16, training_args.gradient_checkpointing, training_args.use_cpu) == (
            False,
            False,
            True,
        )
        assert (model_args.dtype, model_args.use_peft, training_args.remove_unused_columns) == ("float32", True, False)


class CapturedLoad(Exception):
    """Raised by a stand-in `from_pretrained` once it has recorded its arguments (no weights are loaded)."""


class TestLoadingFlags:
    @pytest.mark.parametrize("start", ["base", "aligned"])
    def test_quantization_revision_attention_and_init_flags_reach_from_pretrained(
        self, tiny_base, world_dir, tmp_path, monkeypatch, start
    ):
        """bitsandbytes is not installed here, so the model's `from_pretrained` records what it is given instead."""
        source = ["--model_name_or_path", str(tiny_base)]
        if start == "aligned":
            model, processor = build_depth_model(tiny_base, "add")
            model.save_pretrained(tmp_path / "aligned")
            processor.save_pretrained(tmp_path / "aligned")
            source = ["--aligned_depth_model", str(tmp_path / "aligned")]
        calls = []

        def record(name_or_path, **kwargs):
            calls.append((str(name_or_path), kwargs))
            raise CapturedLoad

        monkeypatch.setattr(Qwen2_5_VLDepthForConditionalGeneration, "from_pretrained", record)
        script_args, training_args, model_args = sft_args(
            tiny_base, world_dir, tmp_path, "add", *source, "--load_in_4bit", "true", "--dtype", "bfloat16",
            "--model_revision", "v1.0", "--attn_implementation", "eager", "--trust_remote_code", "true",
            "--model_init_kwargs", '{"low_cpu_mem_usage": true}',
        )  # fmt: skip
        with pytest.raises(CapturedLoad):
            load_starting_model(script_args, model_args, training_args)
        ((name, kwargs),) = calls
        assert name == str(tmp_path / "aligned" if start == "aligned" else tiny_base)
        passed = {key: kwargs[key] for key in ("revision", "trust_remote_code", "attn_implementation", "dtype")}
        assert passed == {
            "revision": "v1.0",
            "trust_remote_code": True,
            "attn_implementation": "eager",
            "dtype": "bfloat16",
        }
        assert kwargs["low_cpu_mem_usage"] is True  # --model_init_kwargs
        quantization = kwargs["quantization_config"]
        assert isinstance(quantization, BitsAndBytesConfig)
        assert (quantization.load_in_4bit, quantization.load_in_8bit) == (True, False)
        assert (quantization.bnb_4bit_compute_dtype, quantization.bnb_4bit_quant_type) == (torch.bfloat16, "nf4")
        assert quantization.llm_int8_skip_modules == list(UNQUANTIZED_MODULES)  # the language model only
        assert "device_map" in kwargs and kwargs["device_map"] == kbit_device_map()

    def test_quantized_models_go_whole_to_each_process_accelerator(self, monkeypatch):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        monkeypatch.setattr(torch.xpu, "is_available", lambda: False)
        assert kbit_device_map() is None
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        assert kbit_device_map() == {"": 0}  # PartialState().local_process_index of this single process

    def test_without_quantization_flags_nothing_is_quantized(self, tiny_base, world_dir, tmp_path, monkeypatch):
        calls = []

        def record(name_or_path, **kwargs):
            calls.append(kwargs)
            raise CapturedLoad

        monkeypatch.setattr(Qwen2_5_VLDepthForConditionalGeneration, "from_pretrained", record)
        script_args, training_args, model_args = sft_args(tiny_base, world_dir, tmp_path, "add")
        with pytest.raises(CapturedLoad):
            load_starting_model(script_args, model_args, training_args)
        assert "quantization_config" not in calls[0] and "device_map" not in calls[0]
        assert (calls[0]["dtype"], calls[0]["attn_implementation"]) == ("float32", None)

    def test_attn_implementation_is_set_on_every_part_of_a_real_model(self, tiny_base, world_dir, tmp_path):
        implementations = {}
        for flags in ([], ["--attn_implementation", "eager"]):
            script_args, training_args, model_args = sft_args(tiny_base, world_dir, tmp_path, "add", *flags)
            config = load_starting_model(script_args, model_args, training_args)[0].config
            parts = (config, config.text_config, config.vision_config, config.depth_config)
            implementations[tuple(flags)] = [part._attn_implementation for part in parts]
        assert implementations == {(): ["sdpa"] * 4, ("--attn_implementation", "eager"): ["eager"] * 4}


class TestMixedPrecision:
    def test_bf16_keeps_the_trained_depth_modules_in_fp32_so_the_gate_moves(self, tiny_base, world_dir, tmp_path):
        """A bf16 gate at 0.1 cannot take an AdamW step of lr 2e-4 (bf16's spacing there is 2^-11 ≈ 5e-4): it would
        stay at 0.1 for ever. In fp32 every channel moves on the first step."""
        trainer = build_trainer(
            *sft_args(
                tiny_base, world_dir, tmp_path, "add", "--bf16", "true", "--dtype", "bfloat16", "--max_steps", "3",
                "--learning_rate", "2e-4", "--lr_scheduler_type", "constant", "--logging_steps", "3",
            )
        )  # fmt: skip
        dtypes = {"depth": set(), "lora": set(), "frozen": set()}
        depth_names = set()
        for name, parameter in trainer.model.named_parameters():
            if parameter.requires_grad and is_depth_module_parameter(name):
                dtypes["depth"].add(parameter.dtype)
                depth_names.add(name)
            elif parameter.requires_grad:
                assert ".lora_" in name, name
                dtypes["lora"].add(parameter.dtype)
            else:
                dtypes["frozen"].add(parameter.dtype)
        assert dtypes == {"depth": {torch.float32}, "lora": {torch.float32}, "frozen": {torch.bfloat16}}
        assert any("depth_gate" in name for name in depth_names)
        assert any("depth_encoder.merger" in name for name in depth_names)

        gate = trainer.model.base_model.model.model.depth_gate.modules_to_save.default.gate
        with torch.no_grad():
            gate.fill_(0.1)
        with one_torch_thread():
            trainer.train()
        assert gate.dtype == torch.float32
        assert bool((gate.detach() != 0.1).all()), "every channel of the gate moved"


# --------------------------------------------------------------------------------------------------------------
# Training, export
# --------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def one_torch_thread():
    """Tiny matrices gain nothing from threads, and spinning OpenMP threads slow ~10x when other jobs share the CPUs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def original_name(peft_name: str) -> str:
    """A PEFT parameter name back to the plain model's (LoRA layers wrap the original as `base_layer`)."""
    name = peft_name.removeprefix("base_model.model.")
    return name.replace(".base_layer.", ".").replace(".original_module.", ".")


@pytest.fixture(scope="module", params=DEPTH_FUSION_MODES)
def trained(request, sft_base, world_dir, rows, tmp_path_factory):
    """One short SFT run per fusion mode, then the CLI's `finish` (adapter, merged export, loss curve)."""
    fusion = request.param
    output_dir = tmp_path_factory.mktemp(f"sft_{fusion}")
    script_args, training_args, model_args = sft_args(sft_base, world_dir, output_dir, fusion)
    initial = load_starting_model(script_args, model_args, training_args)[0].state_dict()
    with one_torch_thread():
        trainer, summary = train(script_args, training_args, model_args)
    peft_model = trainer.model.eval()

    frozen_checked, frozen_changed, trained_unchanged = [], [], []
    for name, parameter in peft_model.named_parameters():
        if ".modules_to_save." in name:
            start = initial[original_name(name.replace(".modules_to_save.default.", ".original_module."))]
            if torch.equal(parameter, start):
                trained_unchanged.append(name)
        elif ".lora_B." in name:  # B starts at zero
            if not parameter.detach().abs().sum() > 0:
                trained_unchanged.append(name)
        elif ".lora_A." not in name:
            frozen_checked.append(original_name(name))
            if not torch.equal(parameter, initial[original_name(name)]):
                frozen_changed.append(name)
    gate = (
        peft_model.base_model.model.model.depth_gate.modules_to_save.default.gate.detach().clone()
        if fusion == "add"
        else None
    )
    depth_channel_norm = (
        float(peft_model.base_model.model.model.depth_patch_embed.modules_to_save.default.weight.detach().norm())
        if fusion == "rgbd"
        else None
    )
    adapter_up_norm = (
        math.hypot(
            *(
                float(adapter.up.weight.detach().norm())
                for adapter in peft_model.base_model.model.model.depth_adapters.modules_to_save.default.adapters
            )
        )
        if fusion == "adapter"
        else None
    )

    batch = DepthVLMCollator(trainer.processing_class)([rows[i] for i in range(4)])
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    with torch.no_grad():
        peft_logits = peft_model(**inputs).logits
    finish(trainer, summary, script_args, model_args)  # merges `peft_model` in place
    exported = AutoModelForImageTextToText.from_pretrained(script_args.export_dir, trust_remote_code=True).eval()
    rebuilt = merged_model_from_adapter(training_args.output_dir, script_args, model_args, training_args).eval()
    with torch.no_grad():
        exported_logits, rebuilt_logits = exported(**inputs).logits, rebuilt(**inputs).logits
    return {
        "fusion": fusion,
        "summary": summary,
        "frozen_checked": frozen_checked,
        "frozen_changed": frozen_changed,
        "trained_unchanged": trained_unchanged,
        "gate": gate,
        "trained_depth_channel_norm": depth_channel_norm,
        "trained_adapter_up_norm": adapter_up_norm,
        "peft_logits": peft_logits,
        "exported": exported,
        "exported_logits": exported_logits,
        "rebuilt_logits": rebuilt_logits,
        "script_args": script_args,
        "log_history": trainer.state.log_history,
        "base": sft_base,
    }


class TestTraining:
    def test_a_short_run_lowers_the_answer_loss(self, trained):
        before, after = trained["summary"]["eval_loss_before"], trained["summary"]["eval_loss_after"]
        assert abs(before - math.log(512)) < 0.5, "starts near a uniform guess over the 512-token vocabulary"
        assert after < 0.7 * before, (before, after)
        train_losses = [entry["loss"] for entry in trained["log_history"] if "loss" in entry]
        assert len(train_losses) == 4 and all(math.isfinite(loss) for loss in train_losses)
        assert train_losses[-1] < train_losses[0]

    def test_only_lora_and_depth_modules_change(self, trained):
        checked = trained["frozen_checked"]
        frozen_parts = ["model.visual.blocks.", "model.language_model.layers.", "model.language_model.embed_tokens."]
        if DEPTH_FUSIONS[trained["fusion"]].has_depth_encoder:
            frozen_parts += [
                "model.depth_encoder.blocks.",
                "model.depth_encoder.patch_embed.",
                "model.depth_encoder.merger.",
            ]
        assert all(any(name.startswith(part) for name in checked) for part in frozen_parts)
        assert trained["frozen_changed"] == []
        assert trained["trained_unchanged"] == []
        if trained["fusion"] == "rgbd":  # the only depth weights: the zero-initialised channel, trained in full
            assert trained["trained_depth_channel_norm"] > 0
        if trained["fusion"] == "adapter":  # the zero-initialised up-projections opened; the encoder stayed frozen
            assert trained["trained_adapter_up_norm"] > 0
        if trained["fusion"] == "add":
            gate = trained["gate"]
            assert bool((gate != 0).all()), "every channel's gate moved off zero"
            assert gate.abs().mean() > 1e-3, "the depth gates opened"

    def test_merged_export_reloads_as_remote_code_with_the_adapters_logits(self, trained):
        export_dir = Path(trained["script_args"].export_dir)
        assert type(trained["exported"]).__module__.startswith("transformers_modules.")
        assert trained["exported"].config.depth_fusion == trained["fusion"]
        # Its base is still named, for the model card (`training.export`).
        assert trained["exported"].config.base_model_name_or_path == str(Path(trained["base"]).resolve())
        assert not (export_dir / "adapter_config.json").exists()
        assert all((export_dir / name).is_file() for name in ("modeling_qwen2_5_vl_depth.py", "processor_config.json"))
        assert trained["peft_logits"].abs().max() > 1  # not a degenerate comparison
        torch.testing.assert_close(trained["exported_logits"], trained["peft_logits"], rtol=0, atol=1e-5)
        # The path FSDP/DeepSpeed runs take: rebuild the starting model, load the saved adapter, merge.
        torch.testing.assert_close(trained["rebuilt_logits"], trained["peft_logits"], rtol=0, atol=1e-5)

    def test_loss_curve_and_history_are_written(self, trained):
        png = Path(trained["script_args"].loss_curve)
        with Image.open(png) as image:
            assert image.format == "PNG" and image.width > 300
        history = json.loads(png.with_suffix(".json").read_text())
        assert [entry.get("eval_loss") for entry in history if "eval_loss" in entry] == pytest.approx(
            [trained["summary"]["eval_loss_before"], trained["summary"]["eval_loss_after"]]
        )


# --------------------------------------------------------------------------------------------------------------
# Resuming
# --------------------------------------------------------------------------------------------------------------
def fake_checkpoint(folder: Path, state: str | None = "{}", weights=True, optimizer=True) -> Path:
    """A `checkpoint-N` folder with the files `Trainer._save_checkpoint` writes (empty stand-ins), `trainer_state.json`
    last: `state=None` is a save killed before it, a truncated string one killed while writing it."""
    folder.mkdir(parents=True)
    if weights:
        (folder / "adapter_model.safetensors").write_bytes(b"")
    if optimizer:
        (folder / "optimizer.pt").write_bytes(b"")
        (folder / "scheduler.pt").write_bytes(b"")
    if state is not None:
        (folder / "trainer_state.json").write_text(state)
    return folder


def resume_args(output_dir: Path, value, save_only_model: bool = False) -> SimpleNamespace:
    return SimpleNamespace(output_dir=str(output_dir), resume_from_checkpoint=value, save_only_model=save_only_model)


def test_resume_picks_the_newest_complete_checkpoint(tmp_path):
    complete = fake_checkpoint(tmp_path / "checkpoint-2")
    fake_checkpoint(tmp_path / "checkpoint-10", state='{"global_step": 1')  # killed while writing the state
    fake_checkpoint(tmp_path / "checkpoint-12", state=None)  # killed before the state
    fake_checkpoint(tmp_path / "checkpoint-14", optimizer=False)  # a model-only save
    fake_checkpoint(tmp_path / "checkpoint-16", weights=False)
    (tmp_path / "checkpoint-last").mkdir()  # not a step folder
    for value in (True, "true", "latest", "last", "auto"):
        assert resume_checkpoint(resume_args(tmp_path, value)) == str(complete), value
    # Without optimizer states in every checkpoint (`--save_only_model`), the model-only one is complete.
    assert resume_checkpoint(resume_args(tmp_path, "latest", save_only_model=True)) == str(tmp_path / "checkpoint-14")
    assert resume_checkpoint(resume_args(tmp_path, str(complete))) == str(complete)
    with pytest.raises(ValueError, match="checkpoint-12: it has no trainer_state.json"):
        resume_checkpoint(resume_args(tmp_path, str(tmp_path / "checkpoint-12")))
    with pytest.raises(ValueError, match="checkpoint-10: its trainer_state.json is truncated"):
        resume_checkpoint(resume_args(tmp_path, str(tmp_path / "checkpoint-10")))
    for value in (None, False, "false", ""):
        assert resume_checkpoint(resume_args(tmp_path, value)) is None


def test_resume_without_a_complete_checkpoint(tmp_path):
    fake_checkpoint(tmp_path / "checkpoint-4", state=None)
    assert resume_checkpoint(resume_args(tmp_path, "auto")) is None  # a fresh start
    assert resume_checkpoint(resume_args(tmp_path / "not-yet-created", "auto")) is None
    with pytest.raises(ValueError, match="no complete checkpoint"):
        resume_checkpoint(resume_args(tmp_path, "latest"))


def test_a_killed_save_is_skipped_when_training_resumes(tiny_base, world_dir, tmp_path):
    """Two steps saved as checkpoint-1 and -2, then -2 loses its trainer_state.json (a kill during its save): the
    Trainer's own `True` would pick checkpoint-2 and crash; `latest` resumes from checkpoint-1 and finishes."""
    flags = ["--save_strategy", "steps", "--save_steps", "1", "--logging_steps", "1", "--max_eval_samples", "4"]
    with one_torch_thread():
        train(*sft_args(tiny_base, world_dir, tmp_path, "add", *flags, "--max_steps", "2"))
    (tmp_path / "checkpoint-2" / "trainer_state.json").unlink()
    script_args, training_args, model_args = sft_args(
        tiny_base, world_dir, tmp_path, "add", *flags, "--max_steps", "3", "--resume_from_checkpoint", "latest"
    )
    assert resume_checkpoint(training_args) == str(tmp_path / "checkpoint-1")
    with one_torch_thread():
        trainer, summary = train(script_args, training_args, model_args)
    assert summary["train_steps"] == 3
    assert [entry["step"] for entry in trainer.state.log_history if "loss" in entry] == [1, 2, 3]
    assert json.loads((tmp_path / "checkpoint-3" / "trainer_state.json").read_text())["global_step"] == 3


# --------------------------------------------------------------------------------------------------------------
# Two processes under accelerate launch
# --------------------------------------------------------------------------------------------------------------
RANK_REPORT_SCRIPT = r"""
import hashlib, json, sys
from training.sft import finish, parse_args, train

report_dir = sys.argv[1]
script_args, training_args, model_args = parse_args(sys.argv[2:])
trainer, summary = train(script_args, training_args, model_args)
digest = hashlib.sha256()
for name, parameter in sorted(trainer.model.named_parameters()):
    if parameter.requires_grad:
        digest.update(name.encode() + parameter.detach().cpu().numpy().tobytes())
report = {
    "world_size": trainer.accelerator.num_processes,
    "wrapped_model": type(trainer.model_wrapped).__name__,
    "losses": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry],
    "summary": summary,
    "trainable_sha256": digest.hexdigest(),
}
with open(f"{report_dir}/rank{trainer.accelerator.process_index}.json", "w") as file:
    json.dump(report, file)
finish(trainer, summary, script_args, model_args)
trainer.end()
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_cpu_processes_under_accelerate_launch_agree(sft_base, world_dir, tmp_path):
    script = tmp_path / "sft_with_rank_reports.py"
    script.write_text(RANK_REPORT_SCRIPT)
    config = REPO_ROOT / "training" / "accelerate_configs" / "ddp_cpu.yaml"
    # `--cpu` would pick accelerate's single-process launcher; torchrun's (multi_gpu) plus `use_cpu` gives gloo DDP.
    launcher = ["--config_file", str(config)] if config.is_file() else [
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
    ]  # fmt: skip
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    output_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", *launcher, "--main_process_port", str(free_port()),
         str(script), str(tmp_path),
         "--model_name_or_path", str(sft_base), "--depth_fusion", "add", "--dataset_path", str(world_dir),
         "--max_train_samples", "16", "--eval_dataset_path", str(world_dir), "--max_eval_samples", "8",
         "--output_dir", str(output_dir), "--max_steps", "4", "--per_device_train_batch_size", "2",
         "--learning_rate", "3e-3", "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none"],
        cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [report["world_size"] for report in reports] == [2, 2], f"{config} did not start 2 connected processes"
    assert [report["wrapped_model"] for report in reports] == ["DistributedDataParallel"] * 2
    rank0, rank1 = reports
    assert len(rank0["losses"]) == 4 and all(math.isfinite(loss) for loss in rank0["losses"])
    assert rank0["losses"] == rank1["losses"]
    assert rank0["summary"]["eval_loss_after"] == rank1["summary"]["eval_loss_after"]
    assert rank0["trainable_sha256"] == rank1["trainable_sha256"]
    # 4 steps x 2 ranks x 2 rows = one pass over the 16 rows: the ranks read different halves of each batch.
    summary = json.loads((output_dir / "sft_summary.json").read_text())
    assert summary["train_steps"] == 4
    assert json.loads((output_dir / "loss_curve.json").read_text())[-1]["epoch"] == pytest.approx(1.0)
    assert (output_dir / "merged" / "model.safetensors").is_file()


# --------------------------------------------------------------------------------------------------------------
# Depth-path options: zero-initialised projector with an open gate, depth learning rate, what trains, norms logged
# --------------------------------------------------------------------------------------------------------------
class TestDepthPathOptions:
    def test_a_zero_initialised_projector_with_an_open_gate_leaves_the_model_exactly_the_base(
        self, sft_base, world_dir, rows, tmp_path
    ):
        extra = ["--use_peft", "false", "--depth_merger_zero_init", "true", "--depth_gate_init", "1.0"]
        script_args, training_args, model_args = sft_args(sft_base, world_dir, tmp_path / "add", "add", *extra)
        trainer = build_trainer(script_args, training_args, model_args)
        model = trainer.model.eval()
        assert torch.all(model.model.depth_gate.gate == 1.0)
        assert model.model.depth_encoder.merger.mlp[2].weight.abs().sum() == 0
        base_args = sft_args(sft_base, world_dir, tmp_path / "none", "none")
        base = load_starting_model(base_args[0], base_args[2], base_args[1])[0].eval()
        add_batch = DepthVLMCollator(trainer.processing_class)([rows[i] for i in range(3)])
        none_batch = DepthVLMCollator(load_starting_model(base_args[0], base_args[2], base_args[1])[1])(
            [rows[i] for i in range(3)]
        )
        with torch.no_grad():
            add_logits = model(**{k: v for k, v in add_batch.items() if k != "labels"}).logits
            none_logits = base(**{k: v for k, v in none_batch.items() if k != "labels"}).logits
        torch.testing.assert_close(add_logits, none_logits, rtol=0, atol=0)

    def test_depth_lr_puts_the_depth_modules_in_their_own_group_and_norms_are_logged(
        self, sft_base, world_dir, tmp_path
    ):
        extra = [
            "--use_peft", "false", "--depth_lr", "0.05", "--depth_merger_zero_init", "true", "--depth_gate_init", "1",
            "--max_steps", "4", "--logging_steps", "2",
        ]  # fmt: skip
        script_args, training_args, model_args = sft_args(sft_base, world_dir, tmp_path, "add", *extra)
        with one_torch_thread():
            trainer, _ = train(script_args, training_args, model_args)
        names = {id(p): n for n, p in trainer.model.named_parameters()}
        by_lr = {}
        for group in trainer.optimizer.param_groups:
            by_lr.setdefault(group["initial_lr"], set()).update(names[id(p)] for p in group["params"])
        assert set(by_lr) == {3e-3, 0.05}
        assert all(n.startswith(("model.depth_encoder.merger.", "model.depth_gate.")) for n in by_lr[0.05])
        assert not any("depth" in n for n in by_lr[3e-3])
        logged = [entry for entry in trainer.state.log_history if "loss" in entry]
        keys = ("depth_gate_abs_mean", "depth_merger_out_norm", "rgb_token_norm", "depth_to_rgb_norm_ratio")
        assert logged and all(key in logged[-1] for key in keys)
        assert logged[-1]["depth_merger_out_norm"] > 0, "the zeroed projector layer learned"

    def test_train_only_depth_and_train_depth_encoder_choose_what_trains(self, sft_base, world_dir, tmp_path):
        extra = ["--use_peft", "false", "--train_only_depth", "true", "--train_depth_encoder", "true"]
        script_args, training_args, model_args = sft_args(sft_base, world_dir, tmp_path, "add", *extra)
        trainer = build_trainer(script_args, training_args, model_args)
        trains = {name for name, p in trainer.model.named_parameters() if p.requires_grad}
        assert trains and all(name.startswith(("model.depth_encoder.", "model.depth_gate.")) for name in trains)
        assert any(name.startswith("model.depth_encoder.blocks.") for name in trains)

    def test_question_types_filter_the_rows(self, world_dir):
        rows = load_rows(str(world_dir), question_types=["distance_to_camera", "closer"])
        assert len(rows) > 0 and set(rows["question_type"]) <= {"distance_to_camera", "closer"}
