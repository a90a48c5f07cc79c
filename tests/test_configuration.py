"""Config behaviour and real-size parameter counts (meta device: no memory, no weights)."""

from pathlib import Path

import pytest
import torch
from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation

from configuration_depth import Qwen2_5_VLDepthConfig, Qwen2_5_VLDepthEncoderConfig
from modeling_qwen2_5_vl_depth import Qwen2_5_VLDepthForConditionalGeneration


CONFIGS = Path(__file__).parent / "fixtures" / "configs"


def count(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def test_unknown_fusion_mode_is_a_config_error():
    with pytest.raises(ValueError, match="Unknown depth_fusion 'sum'"):
        Qwen2_5_VLDepthConfig(depth_fusion="sum")


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


def test_depth_anything_v2_small_parameter_count():
    config = DepthAnythingConfig.from_pretrained(CONFIGS / "depth_anything_v2_small")
    with torch.device("meta"):
        model = DepthAnythingForDepthEstimation(config)
    assert count(model) / 1e6 == pytest.approx(24.8, abs=0.1)
