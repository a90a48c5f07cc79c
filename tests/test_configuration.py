"""Config behaviour and real-size parameter counts (meta device: no memory, no weights)."""

from pathlib import Path

import pytest
import torch
from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation

from configuration_depth import (
    DEPTH_ENCODER,
    DEPTH_FUSION_MODES,
    DEPTH_FUSIONS,
    DEPTH_MODULE_NAMES,
    Qwen2_5_VLDepthConfig,
    Qwen2_5_VLDepthEncoderConfig,
)
from modeling_qwen2_5_vl_depth import Qwen2_5_VLDepthForConditionalGeneration


CONFIGS = Path(__file__).parent / "fixtures" / "configs"


def count(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def test_unknown_fusion_mode_is_a_config_error():
    with pytest.raises(ValueError, match="Unknown depth_fusion 'sum'"):
        Qwen2_5_VLDepthConfig(depth_fusion="sum")


@pytest.mark.parametrize("name", DEPTH_FUSION_MODES)
def test_fusion_table_rows_are_consistent(name):
    fusion = DEPTH_FUSIONS[name]
    assert fusion.name == name and fusion.summary and fusion.details
    assert set(fusion.modules) <= set(DEPTH_MODULE_NAMES)
    assert fusion.has_depth == bool(fusion.modules)
    # What Stage 2 trains in full is one of the mode's modules or a part of one (the depth encoder's merger).
    assert all(module.split(".")[0] in fusion.modules for module in fusion.trained_in_sft)
    assert fusion.trained_in_alignment == ((DEPTH_ENCODER,) if DEPTH_ENCODER in fusion.modules else ())
    assert fusion.tokens_per_image_with_depth in (1, 2)
    assert Qwen2_5_VLDepthConfig(depth_fusion=name).fusion is fusion


def test_checkpoint_conversion_between_modes_starts_only_the_missing_modules_fresh():
    add, concat, adapter, rgbd = (DEPTH_FUSIONS[name] for name in ("add", "concat", "adapter", "rgbd"))
    assert adapter.new_modules_from(None) == adapter.modules  # a base Qwen2.5-VL checkpoint
    assert adapter.new_modules_from(add) == ("depth_adapters",)  # the aligned encoder is kept
    assert add.new_modules_from(concat) == ("depth_gate",)
    assert add.new_modules_from(rgbd) == ("depth_encoder", "depth_gate")
    assert concat.new_modules_from(adapter) == ()


def test_bad_depth_range_is_a_config_error():
    with pytest.raises(ValueError, match="depth_min_meters < depth_max_meters"):
        Qwen2_5_VLDepthConfig(depth_min_meters=5.0, depth_max_meters=1.0)


def test_depth_encoder_refuses_window_attention():
    with pytest.raises(ValueError, match="full attention in every block"):
        Qwen2_5_VLDepthEncoderConfig(depth=4, fullatt_block_indexes=[3])


def test_flat_base_config_loads_with_own_model_type_and_rgb_derived_depth_encoder():
    config = Qwen2_5_VLDepthConfig.from_pretrained(CONFIGS / "qwen2_5_vl_3b_instruct")
    assert config.model_type == "qwen2_5_vl_depth"
    assert config.to_dict()["model_type"] == "qwen2_5_vl_depth"
    assert config.text_config.hidden_size == 2048 and config.vision_config.depth == 32
    encoder = config.depth_config
    # The RGB MLP width 3420 rounded up to a multiple of 64 (an aligned width for GPU matmuls; see MLP_WIDTH_MULTIPLE).
    assert config.vision_config.intermediate_size == 3420
    assert (encoder.hidden_size, encoder.num_heads, encoder.intermediate_size) == (1280, 16, 3456)
    assert (encoder.depth, encoder.in_channels, encoder.temporal_patch_size) == (8, 1, 1)
    assert encoder.out_hidden_size == 2048 and encoder.fullatt_block_indexes == list(range(8))
    assert config.depth_fusion == "add"


@pytest.mark.parametrize(
    "attn_implementation, expected", [("eager", "eager"), ({"": "sdpa", "depth_config": "eager"}, "eager")]
)
def test_attn_implementation_reaches_the_depth_encoder(attn_implementation, expected):
    config = Qwen2_5_VLDepthConfig.from_pretrained(
        CONFIGS / "qwen2_5_vl_3b_instruct", attn_implementation=attn_implementation
    )
    assert config.depth_config._attn_implementation == expected
    built = Qwen2_5_VLDepthConfig(attn_implementation=attn_implementation)
    assert built.depth_config._attn_implementation == expected


def test_explicit_depth_mlp_width_is_kept_unpadded():
    config = Qwen2_5_VLDepthConfig.from_pretrained(
        CONFIGS / "qwen2_5_vl_3b_instruct", depth_config={"intermediate_size": 3420}
    )
    assert config.depth_config.intermediate_size == 3420 and config.depth_config.depth == 8
    assert config.default_depth_config(intermediate_size=1000).intermediate_size == 1000


def test_partial_depth_override_and_round_trip(tmp_path):
    config = Qwen2_5_VLDepthConfig.from_pretrained(
        CONFIGS / "qwen2_5_vl_7b_instruct", depth_config={"depth": 4}, depth_fusion="concat"
    )
    assert config.depth_config.depth == 4 and config.depth_config.out_hidden_size == 3584
    assert config.depth_config.intermediate_size == 3456  # a partial override still gets the padded default width
    config.save_pretrained(tmp_path)
    reloaded = Qwen2_5_VLDepthConfig.from_pretrained(tmp_path)
    assert reloaded.to_dict() == config.to_dict()
    assert reloaded.auto_map["AutoModelForImageTextToText"].endswith("Qwen2_5_VLDepthForConditionalGeneration")


@pytest.mark.parametrize(
    "name, total_billions, vision_millions, depth_millions",
    [("qwen2_5_vl_3b_instruct", 3.755, 668.7, 195.7), ("qwen2_5_vl_7b_instruct", 8.292, 676.6, 203.5)],
)
def test_real_size_parameter_counts_on_meta_device(name, total_billions, vision_millions, depth_millions):
    config = Qwen2_5_VLDepthConfig.from_pretrained(CONFIGS / name)
    with torch.device("meta"):
        model = Qwen2_5_VLDepthForConditionalGeneration(config)
    depth = count(model.model.depth_encoder) + count(model.model.depth_gate)
    base = count(model) - depth
    assert base / 1e9 == pytest.approx(total_billions, abs=0.001)
    assert count(model.model.visual) / 1e6 == pytest.approx(vision_millions, abs=0.1)
    assert depth / 1e6 == pytest.approx(depth_millions, abs=0.1)
    # 8 full-width blocks (~19.8 M each) and a merger: about 30% of the RGB tower. A depth block is an RGB block with
    # its MLP padded from 3420 to 3456 units: 36 more gate/up rows (weights and biases) and down_proj columns.
    block = count(model.model.depth_encoder.blocks[0])
    width = config.vision_config.hidden_size
    width_llm = config.text_config.hidden_size  # the `add` gate: one per LLM channel
    assert block == count(model.model.visual.blocks[0]) + 36 * (2 * (width + 1) + width)
    assert (
        depth
        == count(model.model.depth_encoder.patch_embed)
        + 8 * block
        + count(model.model.depth_encoder.merger)
        + width_llm
    )
    assert 0.25 < depth / count(model.model.visual) < 0.35


def test_adapter_fusion_adds_one_small_side_adapter_per_depth_block_at_real_size():
    config = Qwen2_5_VLDepthConfig.from_pretrained(CONFIGS / "qwen2_5_vl_3b_instruct", depth_fusion="adapter")
    with torch.device("meta"):
        model = Qwen2_5_VLDepthForConditionalGeneration(config)
    width, bottleneck = config.vision_config.hidden_size, config.depth_adapter_width
    assert (width, bottleneck) == (1280, 320)  # a quarter of the RGB tower's width
    assert count(model.model.depth_adapters) == 8 * (2 * width * bottleneck + bottleneck + width)  # 6.6 M
    assert not hasattr(model.model, "depth_gate")


def test_depth_anything_v2_small_parameter_count():
    config = DepthAnythingConfig.from_pretrained(CONFIGS / "depth_anything_v2_small")
    with torch.device("meta"):
        model = DepthAnythingForDepthEstimation(config)
    assert count(model) / 1e6 == pytest.approx(24.8, abs=0.1)
