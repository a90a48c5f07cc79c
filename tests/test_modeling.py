"""Qwen2_5_VLDepthForConditionalGeneration on tiny random configs: equivalences, gradients, generation, positions."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
    Qwen2_5_VisionPatchEmbed,
    Qwen2_5_VisionTransformerPretrainedModel,
)
from transformers.vision_utils import get_vision_window_index

from configuration_depth import DEPTH_FUSION_MODES, DEPTH_FUSIONS, DEPTH_MODULE_NAMES, Qwen2_5_VLDepthConfig
from fast_qwen2_5_vl import FastQwen2_5_VisionTransformer
from modeling_qwen2_5_vl_depth import (
    DEPTH_MODULE_PREFIXES,
    Qwen2_5_VLDepthEncoder,
    Qwen2_5_VLDepthForConditionalGeneration,
    Qwen2_5_VLDepthModel,
)
from tests.conftest import make_inputs, random_depth, random_image, with_open_depth_path


IMAGES = [[random_image(100, 140, 0)], [random_image(140, 84, 1)]]  # two sizes: 3x4 and 5x3 merged tokens
DEPTHS = [[random_depth(100, 140, 0)], [random_depth(140, 84, 1)]]
DEPTH_MODES = [name for name in DEPTH_FUSION_MODES if DEPTH_FUSIONS[name].has_depth]


def rgb_inputs(inputs):
    return {key: value for key, value in inputs.items() if key not in ("depth_values", "image_has_depth")}


def sharpen(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Re-draw every weight with a larger std, so tiny-model logits are far from uniform and greedy text varies."""
    model = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim >= 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
        if getattr(model.model, "depth_gate", None) is not None:
            model.model.depth_gate.gate.fill_(1.0)
    return model


@pytest.fixture(scope="module")
def base_model(tiny_base):
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_base).eval()


@pytest.mark.parametrize("fusion", DEPTH_FUSION_MODES)
def test_a_model_has_exactly_the_depth_modules_of_its_fusion_row(depth_models, fusion):
    model, _ = depth_models[fusion]
    modules = DEPTH_FUSIONS[fusion].modules
    assert {name for name in DEPTH_MODULE_NAMES if hasattr(model.model, name)} == set(modules)
    depth_parameters = {name for name, _ in model.named_parameters() if name.startswith(DEPTH_MODULE_PREFIXES)}
    assert {name.split(".")[1] for name in depth_parameters} == set(modules)
    assert type(model.model.visual).__name__ == "Qwen2_5_VLDepthAwareVisionTransformer"


class TestEquivalenceWithBase:
    @pytest.mark.parametrize("fusion", DEPTH_FUSION_MODES)
    def test_no_depth_gives_base_logits(self, depth_models, base_model, fusion):
        model, processor = depth_models[fusion]
        inputs = make_inputs(processor, IMAGES)
        assert "depth_values" not in inputs and "image_has_depth" not in inputs
        with torch.no_grad():
            torch.testing.assert_close(model(**inputs).logits, base_model(**inputs).logits, rtol=0, atol=0)

    def test_add_with_gate_at_zero_gives_base_logits_exactly(self, depth_models, base_model):
        model, processor = depth_models["add"]
        assert model.model.depth_gate.gate.shape == (model.config.text_config.hidden_size,)
        assert not model.model.depth_gate.gate.any()
        inputs = make_inputs(processor, IMAGES, DEPTHS)
        assert inputs["image_has_depth"].tolist() == [True, True]
        with torch.no_grad():
            torch.testing.assert_close(model(**inputs).logits, base_model(**rgb_inputs(inputs)).logits, rtol=0, atol=0)

    def test_rgbd_with_its_zero_depth_channel_gives_base_logits_exactly(self, depth_models, base_model):
        model, processor = depth_models["rgbd"]
        assert not hasattr(model.model, "depth_encoder") and not hasattr(model.model, "depth_gate")
        assert not model.model.depth_patch_embed.weight.any()
        inputs = make_inputs(processor, IMAGES, DEPTHS)
        assert inputs["image_has_depth"].tolist() == [True, True]
        with torch.no_grad():
            torch.testing.assert_close(model(**inputs).logits, base_model(**rgb_inputs(inputs)).logits, rtol=0, atol=0)

    def test_rgbd_is_the_rgb_tower_with_a_fourth_input_channel(self, depth_models):
        """The `rgbd` features equal a stock tower whose patch embedding is a 4-channel Conv3d: RGB weights on the
        first three channels, and the depth channel over the depth map repeated on the 2 frames (half the depth
        kernel per frame)."""
        model, processor = depth_models["rgbd"]
        model = sharpen(model)
        inputs = make_inputs(processor, IMAGES, DEPTHS)
        grid = inputs["image_grid_thw"]
        vision = model.config.vision_config
        frames, patch = vision.temporal_patch_size, vision.patch_size
        widened = copy.deepcopy(model.model.visual)
        rgb_weight = widened.patch_embed.proj.weight
        depth_weight = model.model.depth_patch_embed.weight  # (width, 1, 1, patch, patch)
        widened.patch_embed = Qwen2_5_VisionPatchEmbed(patch, frames, 4, vision.hidden_size)
        with torch.no_grad():
            widened.patch_embed.proj.weight.copy_(
                torch.cat([rgb_weight, (depth_weight / frames).expand(-1, -1, frames, -1, -1)], dim=1)
            )
        encoded_depth = model.model.encode_depth(inputs["depth_values"]).view(-1, 1, 1, patch, patch)
        four_channels = torch.cat(
            [inputs["pixel_values"].view(-1, 3, frames, patch, patch), encoded_depth.expand(-1, 1, frames, -1, -1)],
            dim=1,
        ).flatten(1)
        with torch.no_grad():
            expected = widened(four_channels, grid_thw=grid).pooler_output
            fused = model.model.get_image_features(
                inputs["pixel_values"], grid, depth_values=inputs["depth_values"]
            ).pooler_output
            rgb_only = model.model.get_image_features(inputs["pixel_values"], grid).pooler_output
        torch.testing.assert_close(torch.cat(fused), expected, rtol=1e-4, atol=1e-4)  # float order only
        assert (torch.cat(fused) - torch.cat(rgb_only)).abs().max() > 1e-2  # depth really entered the tower

    def test_adapter_with_its_zero_up_projections_gives_base_logits_exactly(self, depth_models, base_model):
        model, processor = depth_models["adapter"]
        adapters = model.model.depth_adapters.adapters
        assert len(adapters) == model.config.depth_config.depth == 2  # one per depth-encoder block
        assert all(not adapter.up.weight.any() and not adapter.up.bias.any() for adapter in adapters)
        assert all(adapter.down.weight.any() for adapter in adapters)  # only the output starts at zero
        inputs = make_inputs(processor, IMAGES, DEPTHS)
        assert inputs["image_has_depth"].tolist() == [True, True]
        with torch.no_grad():
            torch.testing.assert_close(model(**inputs).logits, base_model(**rgb_inputs(inputs)).logits, rtol=0, atol=0)

    def test_adapter_residuals_land_on_the_rgb_patches_they_belong_to(self, depth_models):
        """With every RGB block an identity (attention and MLP outputs zeroed), the tower's tokens are the merger of
        the patch embeddings plus the side adapters' residuals. Computed here in the processor's patch order, without
        the tower's window reordering, they must equal the model's: each residual reached its own patch."""
        model, processor = depth_models["adapter"]
        model = sharpen(model)
        inner = model.model
        inputs = make_inputs(processor, IMAGES, DEPTHS)
        grid = inputs["image_grid_thw"]
        with torch.no_grad():
            for block in inner.visual.blocks:
                for layer in (block.attn.proj, block.mlp.down_proj):
                    layer.weight.zero_()
                    layer.bias.zero_()
            encoder_input = inner.encode_depth(inputs["depth_values"])
            depth_states = inner.depth_encoder(encoder_input, grid_thw=grid, output_hidden_states=True).hidden_states
            residual = sum(adapter(states) for adapter, states in zip(inner.depth_adapters.adapters, depth_states[1:]))
            expected = inner.visual.merger(inner.visual.patch_embed(inputs["pixel_values"]) + residual)
            fused = inner.get_image_features(inputs["pixel_values"], grid, depth_values=inputs["depth_values"])
            rgb_only = inner.get_image_features(inputs["pixel_values"], grid).pooler_output
        # The windows of these grids reorder the patches (3x4 merged tokens in 2x2 windows), so a residual added in
        # the wrong order would land on another patch.
        vision = model.config.vision_config
        window_index, _ = get_vision_window_index(
            grid, vision.spatial_merge_size, vision.window_size, vision.patch_size
        )
        assert not torch.equal(window_index, torch.arange(len(window_index)))
        torch.testing.assert_close(torch.cat(fused.pooler_output), expected, rtol=1e-5, atol=1e-5)
        assert (torch.cat(fused.pooler_output) - torch.cat(rgb_only)).abs().max() > 1e-2

    def test_adapter_with_open_up_projections_uses_depth(self, depth_models, base_model):
        model, processor = depth_models["adapter"]
        model = copy.deepcopy(model)
        with torch.no_grad():
            for adapter in model.model.depth_adapters.adapters:
                adapter.up.weight.normal_(0, 0.5)
        near, far = (
            make_inputs(processor, IMAGES, DEPTHS),
            make_inputs(processor, IMAGES, [[d[0] * 4] for d in DEPTHS]),
        )
        with torch.no_grad():
            logits = model(**near).logits
            assert (logits - base_model(**rgb_inputs(near)).logits).abs().max() > 1e-4
            assert (logits - model(**far).logits).abs().max() > 1e-4

    def test_add_with_open_gate_uses_depth(self, depth_models):
        model, processor = depth_models["add"]
        model = copy.deepcopy(model)
        model.model.depth_gate.gate.data.fill_(0.5)
        near, far = (
            make_inputs(processor, IMAGES, DEPTHS),
            make_inputs(processor, IMAGES, [[d[0] * 4] for d in DEPTHS]),
        )
        with torch.no_grad():
            difference = (model(**near).logits - model(**far).logits).abs().max()
        assert difference > 1e-4

    def test_concat_doubles_each_image_run(self, depth_models):
        model, processor = depth_models["concat"]
        with_depth = make_inputs(processor, IMAGES, DEPTHS)
        without = make_inputs(processor, IMAGES)
        merged_tokens = (with_depth["image_grid_thw"].prod(-1) // 4).tolist()
        assert merged_tokens == [12, 15]  # 100x140 -> 84x112 px (3x4 merged), 140x84 -> 140x84 px (5x3 merged)
        image_token_id = model.config.image_token_id
        assert (with_depth["input_ids"] == image_token_id).sum(-1).tolist() == [2 * n for n in merged_tokens]
        assert (without["input_ids"] == image_token_id).sum(-1).tolist() == merged_tokens
        real_lengths = with_depth["attention_mask"].sum(-1).tolist()
        assert real_lengths == [n + e for n, e in zip(without["attention_mask"].sum(-1).tolist(), merged_tokens)]
        assert set(with_depth["mm_token_type_ids"].unique().tolist()) == {0, 1}

    @pytest.mark.parametrize("fusion", ["add", "concat"])
    def test_image_features_fuse_depth_per_image(self, depth_models, fusion):
        model, processor = depth_models[fusion]
        model = sharpen(model)
        inputs = make_inputs(processor, IMAGES, DEPTHS)
        grid = inputs["image_grid_thw"]
        with torch.no_grad():
            rgb = model.model.get_image_features(inputs["pixel_values"], grid).pooler_output
            depth = model.model.get_depth_features(inputs["depth_values"], grid).pooler_output
            fused = model.model.get_image_features(
                inputs["pixel_values"], grid, depth_values=inputs["depth_values"]
            ).pooler_output
        gate = torch.tanh(model.model.depth_gate.gate) if fusion == "add" else None
        for rgb_tokens, depth_tokens, fused_tokens in zip(rgb, depth, fused):
            expected = rgb_tokens + gate * depth_tokens if fusion == "add" else torch.cat([rgb_tokens, depth_tokens])
            torch.testing.assert_close(fused_tokens, expected, rtol=0, atol=0)


class TestPerImageDepth:
    """A batch may mix images with and without depth; each sample's result is that of the sample run alone."""

    @pytest.mark.parametrize("fusion", DEPTH_MODES)
    def test_mixed_batch_equals_each_sample_alone(self, depth_models, base_model, fusion):
        model, processor = depth_models[fusion]
        model = sharpen(model)
        mixed = make_inputs(processor, IMAGES, [DEPTHS[0], None])
        assert mixed["image_has_depth"].tolist() == [True, False]
        with torch.no_grad():
            batched = model(**mixed).logits[:, -1]
            with_depth = model(**make_inputs(processor, [IMAGES[0]], [DEPTHS[0]])).logits[0, -1]
            without = model(**make_inputs(processor, [IMAGES[1]])).logits[0, -1]
            rgb_only = model(**make_inputs(processor, [IMAGES[0]])).logits[0, -1]
        torch.testing.assert_close(batched[0], with_depth, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(batched[1], without, rtol=1e-4, atol=1e-4)
        assert (with_depth - rgb_only).abs().max() > 1e-3  # depth really changed the first sample

    @pytest.mark.parametrize("fusion", DEPTH_MODES)
    def test_an_image_without_depth_in_a_mixed_batch_gets_exactly_its_rgb_features(self, depth_models, fusion):
        model, processor = depth_models[fusion]
        model = sharpen(model)  # every zero-initialised depth module open
        mixed = make_inputs(processor, IMAGES, [DEPTHS[0], None])
        grid = mixed["image_grid_thw"]
        with torch.no_grad():
            fused = model.model.get_image_features(
                mixed["pixel_values"],
                grid,
                depth_values=mixed["depth_values"],
                image_has_depth=mixed["image_has_depth"],
            ).pooler_output
            rgb_only = model.model.get_image_features(mixed["pixel_values"], grid).pooler_output
        assert torch.equal(fused[1], rgb_only[1])
        assert fused[0].shape != rgb_only[0].shape or (fused[0] - rgb_only[0]).abs().max() > 1e-3

    def test_image_has_depth_must_fit_the_images(self, depth_models):
        model, processor = depth_models["add"]
        inputs = make_inputs(processor, IMAGES, DEPTHS)
        with pytest.raises(ValueError, match="image_has_depth must be a bool tensor of shape \\(2,\\)"):
            model(**{**inputs, "image_has_depth": torch.tensor([True, True, True])})
        with pytest.raises(ValueError, match="need \\(48, 196\\)"):  # the first image alone: 6x8 patches
            model(**{**inputs, "image_has_depth": torch.tensor([True, False])})
        with pytest.raises(ValueError, match="no depth_values were given"):
            model(**{**rgb_inputs(inputs), "image_has_depth": torch.tensor([True, False])})


class TestTraining:
    # Depth into the RGB-only model is an error, tested with the other bad inputs.
    @pytest.mark.parametrize(
        "fusion, with_depth",
        [(fusion, with_depth) for fusion in DEPTH_MODES for with_depth in (True, False)] + [("none", False)],
    )  # fmt: skip
    def test_forward_backward(self, depth_models, fusion, with_depth):
        model, processor = depth_models[fusion]
        model = copy.deepcopy(model).train()
        inputs = make_inputs(processor, IMAGES, DEPTHS if with_depth else None)
        labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
        outputs = model(**inputs, labels=labels)
        assert torch.isfinite(outputs.loss)
        outputs.loss.backward()
        gradients = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
        assert any(name.startswith("model.visual.") for name in gradients)
        assert any(name.startswith("model.language_model.") for name in gradients)
        if fusion == "add" and with_depth:
            # At gate 0 only the gates themselves can learn: each channel's gate gets its own non-zero gradient, the
            # encoder exactly zero.
            assert bool((gradients["model.depth_gate.gate"] != 0).all())
            assert all(not g.any() for n, g in gradients.items() if n.startswith("model.depth_encoder."))
        if fusion == "concat" and with_depth:
            encoder_gradient = sum(g.abs().sum() for n, g in gradients.items() if n.startswith("model.depth_encoder."))
            assert encoder_gradient > 0
        if fusion == "rgbd" and with_depth:
            # The zero depth channel learns from the first step: its gradient comes back through the RGB tower.
            assert gradients["model.depth_patch_embed.weight"].abs().sum() > 0
        if fusion == "adapter" and with_depth:
            # At zero up-projections only they can learn (as LoRA's B): the rest of the depth path gets exact zeros.
            for index in range(model.config.depth_config.depth):
                assert gradients[f"model.depth_adapters.adapters.{index}.up.weight"].abs().sum() > 0
                assert not gradients[f"model.depth_adapters.adapters.{index}.down.weight"].any()
            assert all(not g.any() for n, g in gradients.items() if n.startswith("model.depth_encoder."))
        if not with_depth:
            assert not any(name.startswith("model.depth_") for name in gradients)

    @pytest.mark.parametrize("fusion", ["concat", "adapter"])
    def test_gradient_checkpointing_gives_the_same_gradients(self, depth_models, fusion):
        model, processor = depth_models[fusion]
        model = with_open_depth_path(model)  # the adapters open, so the depth encoder gets a real gradient
        inputs = make_inputs(processor, IMAGES, DEPTHS)
        labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
        gradients = []
        for checkpointing in (False, True):
            trained = copy.deepcopy(model).train()
            if checkpointing:
                trained.gradient_checkpointing_enable()
            trained(**inputs, labels=labels).loss.backward()
            gradients.append({n: p.grad for n, p in trained.named_parameters() if p.grad is not None})
        assert gradients[0].keys() == gradients[1].keys()
        assert any(g.any() for name, g in gradients[1].items() if name.startswith("model.depth_encoder.blocks."))
        for name in gradients[0]:
            torch.testing.assert_close(gradients[0][name], gradients[1][name], rtol=1e-5, atol=1e-6, msg=name)


GENERATION_MODES = ("add", "concat", "adapter")
GREEDY = {"max_new_tokens": 6, "do_sample": False, "return_dict_in_generate": True, "output_logits": True}


@pytest.fixture(scope="module")
def sharp_models(depth_models):
    """Sharpened `add` (gate open), `concat` and `adapter` (adapters open) models: greedy text varies and depends on
    depth."""
    return {fusion: sharpen(depth_models[fusion][0]) for fusion in GENERATION_MODES}


def generate(model, processor, inputs, **options):
    settings = {**GREEDY, "suppress_tokens": [processor.image_token_id], **options}
    return model.generate(**inputs, **settings)


class TestGeneration:
    """`generate` options that must not change the result, with depth, in both fusion modes: each is compared with
    the same call without it."""

    @pytest.fixture(scope="class", params=GENERATION_MODES)
    def setting(self, request, sharp_models, depth_models):
        fusion = request.param
        model, processor = sharp_models[fusion], depth_models[fusion][1]
        inputs = make_inputs(processor, IMAGES, DEPTHS)
        return fusion, model, processor, inputs, generate(model, processor, inputs)

    def test_depth_changes_the_output(self, setting):
        fusion, model, processor, inputs, reference = setting
        rgb_only = generate(model, processor, make_inputs(processor, IMAGES))
        assert len(set(reference.sequences[0, -6:].tolist())) > 1, "greedy text should vary for the tests to mean much"
        assert (reference.logits[0] - rgb_only.logits[0]).abs().max() > 1e-2

    @pytest.mark.parametrize("chunk_size", [3, 8, 16, 1000])
    def test_chunked_prefill(self, setting, chunk_size):
        fusion, model, processor, inputs, reference = setting
        chunked = generate(model, processor, inputs, prefill_chunk_size=chunk_size)
        assert torch.equal(chunked.sequences, reference.sequences)
        for chunked_step, reference_step in zip(chunked.logits, reference.logits):
            torch.testing.assert_close(chunked_step, reference_step, rtol=1e-4, atol=1e-4)

    @pytest.mark.parametrize(
        "options", [{"use_cache": False}, {"cache_implementation": "static"}], ids=["no_cache", "static_cache"]
    )
    def test_cache_options(self, setting, options):
        fusion, model, processor, inputs, reference = setting
        other = generate(model, processor, inputs, **options)
        assert torch.equal(other.sequences, reference.sequences)
        for other_step, reference_step in zip(other.logits, reference.logits):
            torch.testing.assert_close(other_step, reference_step, rtol=1e-4, atol=1e-4)

    def test_output_logits_equal_the_forward_pass(self, setting):
        fusion, model, processor, inputs, reference = setting
        with torch.no_grad():
            forward = model(**inputs).logits[:, -1]
        torch.testing.assert_close(reference.logits[0], forward, rtol=1e-5, atol=1e-5)

    def test_sampling_that_can_only_pick_the_best_token_is_greedy(self, setting):
        fusion, model, processor, inputs, reference = setting
        torch.manual_seed(0)
        sampled = generate(model, processor, inputs, do_sample=True, top_k=1, num_return_sequences=2)
        assert torch.equal(sampled.sequences, reference.sequences.repeat_interleave(2, dim=0))

    def test_beams_expand_depth_with_each_sample(self, setting):
        fusion, model, processor, inputs, reference = setting
        beams = {"num_beams": 3, "num_return_sequences": 2, "output_logits": False}
        batched = generate(model, processor, inputs, **beams).sequences
        assert batched.shape[0] == 4
        for index in range(2):
            alone = generate(model, processor, make_inputs(processor, [IMAGES[index]], [DEPTHS[index]]), **beams)
            for beam in range(2):
                assert torch.equal(batched[2 * index + beam, -6:], alone.sequences[beam, -6:])

    @pytest.mark.parametrize("chunk_size", [None, 8])
    def test_left_padded_batch_mixing_depth_and_rgb_only(self, setting, chunk_size):
        fusion, model, processor, inputs, reference = setting
        mixed = make_inputs(processor, [IMAGES[1], IMAGES[0]], [None, DEPTHS[0]])
        assert processor.tokenizer.padding_side == "left" and not mixed["attention_mask"].all()
        batched = generate(model, processor, mixed, prefill_chunk_size=chunk_size).sequences[:, -6:]
        rgb_only_alone = generate(model, processor, make_inputs(processor, [IMAGES[1]])).sequences[0, -6:]
        depth_alone = generate(model, processor, make_inputs(processor, [IMAGES[0]], [DEPTHS[0]])).sequences[0, -6:]
        assert torch.equal(batched[0], rgb_only_alone) and torch.equal(batched[1], depth_alone)

    def test_past_key_values_is_used(self, setting):
        """The v5 name is `cache`; the old `past_key_values` must still carry the cache, as in stock Qwen2.5-VL."""
        fusion, model, processor, inputs, reference = setting
        from transformers import DynamicCache

        inputs = make_inputs(processor, [IMAGES[0]], [DEPTHS[0]])  # one sample: no padding, no attention mask needed
        inputs.pop("attention_mask")
        with torch.no_grad():
            full = model(**inputs).logits[:, -1]
            prefix = {**inputs, "input_ids": inputs["input_ids"][:, :-1]}
            prefix["mm_token_type_ids"] = inputs["mm_token_type_ids"][:, :-1]
            cache = DynamicCache(config=model.config)
            model(**prefix, past_key_values=cache, use_cache=True)
            assert cache.get_seq_length() == inputs["input_ids"].shape[1] - 1
            last = {"input_ids": inputs["input_ids"][:, -1:]}
            continued = model(**last, past_key_values=cache, use_cache=True).logits[:, -1]
        torch.testing.assert_close(continued, full, rtol=1e-4, atol=1e-4)


class TestRopePositions:
    def test_depth_tokens_take_their_rgb_patch_positions(self, depth_models):
        model, processor = depth_models["concat"]
        inputs = make_inputs(processor, IMAGES, DEPTHS)
        rgb_only = make_inputs(processor, IMAGES)
        positions, deltas = model.model.get_rope_index(
            inputs["input_ids"],
            inputs["mm_token_type_ids"],
            inputs["image_grid_thw"],
            attention_mask=inputs["attention_mask"],
        )
        base_positions, base_deltas = model.model.get_rope_index(
            rgb_only["input_ids"],
            rgb_only["mm_token_type_ids"],
            rgb_only["image_grid_thw"],
            attention_mask=rgb_only["attention_mask"],
        )
        for sample, (grid_h, grid_w) in enumerate([(3, 4), (5, 3)]):
            num_tokens = grid_h * grid_w
            run = positions[:, sample, inputs["mm_token_type_ids"][sample] == 1]
            image_positions, depth_positions = run[:, :num_tokens], run[:, num_tokens:]
            assert torch.equal(depth_positions, image_positions)
            # Image tokens sit on their (t, h, w) grid after the text before them, exactly as without depth.
            start = int(image_positions[0, 0])
            heights = torch.arange(grid_h).repeat_interleave(grid_w) + start
            widths = torch.arange(grid_w).repeat(grid_h) + start
            assert torch.equal(image_positions[1], heights) and torch.equal(image_positions[2], widths)
            assert torch.equal(image_positions, base_positions[:, sample, rgb_only["mm_token_type_ids"][sample] == 1])
            # Text after the depth block continues where the base model's text after the image does.
            text = (inputs["mm_token_type_ids"][sample] == 0) & (inputs["attention_mask"][sample] == 1)
            base_text = (rgb_only["mm_token_type_ids"][sample] == 0) & (rgb_only["attention_mask"][sample] == 1)
            assert torch.equal(positions[:, sample, text][:, -5:], base_positions[:, sample, base_text][:, -5:])
            # The decode delta counts the depth tokens as sequence that adds no position.
            assert int(deltas[sample]) == int(base_deltas[sample]) - num_tokens

    def test_without_depth_positions_are_stock(self, depth_models, base_model):
        model, processor = depth_models["concat"]
        inputs = make_inputs(processor, IMAGES)
        ours = model.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"], inputs["image_grid_thw"])
        stock = base_model.model.get_rope_index(
            inputs["input_ids"], inputs["mm_token_type_ids"], inputs["image_grid_thw"]
        )
        assert all(torch.equal(a, b) for a, b in zip(ours, stock))

    def test_image_run_of_the_wrong_length_is_refused(self, depth_models):
        model, processor = depth_models["concat"]
        inputs = make_inputs(processor, [IMAGES[0]])
        image_run = (inputs["mm_token_type_ids"][0] == 1).nonzero()
        types = inputs["mm_token_type_ids"].clone()
        types[0, image_run[-1]] = 0  # one image token fewer than the grid's 12
        with pytest.raises(ValueError, match="run of 11 image tokens for an image of 12 tokens"):
            model.model.get_rope_index(inputs["input_ids"], types, inputs["image_grid_thw"])


class TestHostIndexBookkeeping:
    """Positions and window indices computed once per grid / on the host equal the stock per-image loops exactly."""

    GRIDS = torch.tensor([[1, 8, 8], [1, 6, 10], [1, 8, 8], [1, 4, 4], [1, 14, 6]])

    def test_vision_position_ids_and_window_index_equal_stock(self):
        from transformers.vision_utils import get_vision_position_ids, get_vision_window_index

        from fast_qwen2_5_vl import vision_position_ids, vision_window_index

        assert torch.equal(vision_position_ids(self.GRIDS, 2), get_vision_position_ids(self.GRIDS, 2))
        for window, patch in [(56, 14), (112, 14)]:
            ours = vision_window_index(self.GRIDS, 2, window, patch)
            stock = get_vision_window_index(self.GRIDS, 2, window, patch)
            assert torch.equal(ours[0], stock[0])
            assert torch.equal(ours[1], stock[1]) and ours[1].dtype == stock[1].dtype

    @pytest.mark.parametrize("padding_side", ["left", "right"])
    def test_rope_index_equals_stock_with_padding_and_several_images(self, depth_models, base_model, padding_side):
        model, processor = depth_models["add"]
        processor.tokenizer.padding_side = padding_side
        try:
            samples = [IMAGES[0], IMAGES[1] + IMAGES[0], [random_image(56, 112, 3)]]
            inputs = make_inputs(processor, samples)
        finally:
            processor.tokenizer.padding_side = "left"
        args = (inputs["input_ids"], inputs["mm_token_type_ids"], inputs["image_grid_thw"])
        ours = model.model.get_rope_index(*args, attention_mask=inputs["attention_mask"])
        stock = base_model.model.get_rope_index(*args, attention_mask=inputs["attention_mask"])
        assert torch.equal(ours[0], stock[0]) and torch.equal(ours[1], stock[1])
        # Text only (no image in the batch) too.
        text = processor.tokenizer(["how far", "how far is it"], return_tensors="pt", padding=True)
        types = torch.zeros_like(text["input_ids"])
        ours = model.model.get_rope_index(text["input_ids"], types, None, attention_mask=text["attention_mask"])
        stock = base_model.model.get_rope_index(text["input_ids"], types, None, attention_mask=text["attention_mask"])
        assert torch.equal(ours[0], stock[0]) and torch.equal(ours[1], stock[1])


class TestBatchedVisionAttention:
    """The RGB tower's windows (and the depth encoder's images) go through one SDPA call when they are equal-length;
    the result must be the stock per-window loop's, and ragged inputs must still take that loop."""

    @pytest.mark.parametrize(
        "sides, batched",
        [
            ([(112, 112), (112, 112)], True),  # 56-px windows: every window 16 patches, the full block 64 per image
            ([(56, 112), (56, 112)], True),
            ([(100, 140)], False),  # 3x4 merged tokens: edge windows are smaller, so the stock loop runs
            ([(112, 112), (56, 56)], False),  # windows all equal, the full-attention block ragged
        ],
    )
    def test_rgb_tower_equals_stock_per_window_loop(self, depth_models, sides, batched, monkeypatch):
        model, processor = depth_models["none"]
        model = sharpen(model)
        images = [[random_image(height, width, seed)] for seed, (height, width) in enumerate(sides)]
        inputs = make_inputs(processor, images)
        ours = model.model.visual
        stock = Qwen2_5_VisionTransformerPretrainedModel._from_config(model.config.vision_config)
        stock.load_state_dict(ours.state_dict())
        stock.eval()
        assert type(stock.blocks[0].attn).__name__ == "Qwen2_5_VLVisionAttention"
        assert type(ours.blocks[0].attn).__name__ == "Qwen2_5_VLBatchedVisionAttention"

        calls = []
        stock_forward = type(stock.blocks[0].attn).forward

        def counting_forward(self, *args, **kwargs):
            calls.append(type(self).__name__)
            return stock_forward(self, *args, **kwargs)

        with torch.no_grad():
            expected = stock(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"]).pooler_output
            monkeypatch.setattr(type(stock.blocks[0].attn), "forward", counting_forward)
            actual = ours(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"]).pooler_output
        assert torch.equal(actual, expected)  # the same SDPA arithmetic, batched: bit-identical on CPU
        # The stock loop runs only when some block's segments are ragged.
        assert (len(calls) == 0) is batched

    def test_batched_sdpa_equals_per_image_attention(self, depth_models):
        model, processor = depth_models["concat"]
        model = sharpen(model)
        inputs = make_inputs(processor, [IMAGES[0], IMAGES[0]], [DEPTHS[0], [DEPTHS[0][0] * 2]])
        encoder_input = model.model.encode_depth(inputs["depth_values"])
        grid = inputs["image_grid_thw"]
        with torch.no_grad():
            batched = model.model.depth_encoder(encoder_input, grid_thw=grid).pooler_output
            model.model.depth_encoder.config._attn_implementation = "eager"
            try:
                looped = model.model.depth_encoder(encoder_input, grid_thw=grid).pooler_output
            finally:
                model.model.depth_encoder.config._attn_implementation = "sdpa"
        torch.testing.assert_close(batched, looped, rtol=1e-4, atol=1e-4)

    @pytest.mark.parametrize("sides", [[(112, 112), (112, 112)], [(100, 140), (140, 84)]])  # batched, ragged
    def test_fast_tower_is_the_stock_tower(self, depth_models, sides):
        """`FastQwen2_5_VisionTransformer` has the stock tower's keys and, from the same weights, its outputs
        (merged tokens, last and every block's hidden states) bit for bit."""
        model, processor = depth_models["none"]
        vision_config = model.config.vision_config
        stock = Qwen2_5_VisionTransformerPretrainedModel._from_config(vision_config)
        stock.load_state_dict(sharpen(model).model.visual.state_dict())
        fast = FastQwen2_5_VisionTransformer._from_config(vision_config)
        assert fast.state_dict().keys() == stock.state_dict().keys()
        fast.load_state_dict(stock.state_dict())
        stock.eval(), fast.eval()
        images = [[random_image(height, width, seed)] for seed, (height, width) in enumerate(sides)]
        inputs = make_inputs(processor, images)
        with torch.no_grad():
            expected, actual = (
                tower(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"], output_hidden_states=True)
                for tower in (stock, fast)
            )
        assert torch.equal(actual.pooler_output, expected.pooler_output)
        assert torch.equal(actual.last_hidden_state, expected.last_hidden_state)
        assert len(actual.hidden_states) == len(expected.hidden_states) == vision_config.depth + 1  # and the input
        assert all(torch.equal(a, b) for a, b in zip(actual.hidden_states, expected.hidden_states))

    def test_log_depth_encoding_keeps_metric_scale(self, depth_models):
        model, _ = depth_models["add"]
        depth = torch.tensor([[0.1, 100.0, 1.0, 0.0, float("nan"), float("inf"), 0.01, 1000.0]])
        encoded = model.model.encode_depth(depth)[0]
        expected_one_meter = 2 * (0 - torch.log(torch.tensor(0.1))) / (torch.log(torch.tensor(1000.0))) - 1
        torch.testing.assert_close(encoded[:3], torch.tensor([-1.0, 1.0, expected_one_meter.item()]))
        assert encoded[3:6].tolist() == [-2.0, -2.0, -2.0]  # invalid pixels: outside [-1, 1]
        assert encoded[6:].tolist() == [-1.0, 1.0]  # clamped to the range
        # The same metres give the same input whatever else is in the image (no per-image normalisation).
        other = model.model.encode_depth(torch.tensor([[1.0, 50.0, 3.0]]))[0, 0]
        assert other == encoded[2]

    def test_init_from_rgb_copies_tower(self, depth_models):
        model, _ = depth_models["add"]
        encoder, rgb = model.model.depth_encoder, model.model.visual
        expected_kernel = rgb.patch_embed.proj.weight.sum(dim=(1, 2), keepdim=True)
        torch.testing.assert_close(encoder.patch_embed.proj.weight, expected_kernel, rtol=0, atol=0)
        for depth_block, rgb_block in zip(encoder.blocks, rgb.blocks):
            for (name, a), (_, b) in zip(depth_block.state_dict().items(), rgb_block.state_dict().items()):
                assert torch.equal(a, b), name
        # A depth map replicated over colour and time gives the RGB tower's patch embedding exactly.
        depth_patch = torch.randn(3, 14 * 14)
        rgb_patch = depth_patch[:, None, None].expand(3, 3, 2, 14 * 14).reshape(3, -1)
        torch.testing.assert_close(encoder.patch_embed(depth_patch), rgb.patch_embed(rgb_patch), rtol=1e-5, atol=1e-5)


def modern_key(key: str) -> str:
    """A checkpoint key in transformers >= 4.52 module naming (`model.language_model.*`, `model.visual.*`)."""
    if key.startswith("visual."):
        return "model." + key
    if key.startswith("model.") and not key.startswith(("model.language_model.", "model.visual.")):
        return "model.language_model." + key.removeprefix("model.")
    return key


class TestBaseCheckpointLoading:
    @pytest.mark.parametrize("layout", ["published", "modern"])
    def test_every_base_weight_loads_and_only_depth_is_new(self, tiny_base, tmp_path, layout):
        # transformers writes Qwen2.5-VL in the published (pre-4.52) layout: `model.layers.*`, `visual.*`.
        state = load_file(tiny_base / "model.safetensors")
        assert "visual.patch_embed.proj.weight" in state and "model.embed_tokens.weight" in state
        base_folder = tiny_base
        if layout == "modern":
            base_folder = tmp_path / "modern"
            base_folder.mkdir()
            for file in tiny_base.iterdir():
                if file.name != "model.safetensors":
                    (base_folder / file.name).write_bytes(file.read_bytes())
            state = {modern_key(key): value for key, value in state.items()}
            save_file(state, base_folder / "model.safetensors", metadata={"format": "pt"})
        for fusion in DEPTH_MODES:
            model, info = Qwen2_5_VLDepthForConditionalGeneration.from_pretrained(
                base_folder, depth_fusion=fusion, output_loading_info=True
            )
            assert not info["unexpected_keys"] and not info["mismatched_keys"]
            depth_keys = {k for k in model.state_dict() if k.startswith(DEPTH_MODULE_PREFIXES)}
            assert depth_keys
            assert set(info["missing_keys"]) == depth_keys
            loaded = model.state_dict()
            for key, value in state.items():
                assert torch.equal(loaded[modern_key(key)], value), key
            assert len(loaded) == len(state) + len(depth_keys) + 1  # + lm_head, tied to the embeddings

    @pytest.mark.parametrize("fusion", DEPTH_MODES)
    def test_save_writes_the_published_layout_and_reloads_every_weight(self, depth_models, tmp_path, fusion):
        model, _ = depth_models[fusion]
        model.save_pretrained(tmp_path)
        saved = load_file(tmp_path / "model.safetensors")
        prefixes = (
            "model.layers.",
            "model.embed_tokens.",
            "model.norm.",
            "visual.",
            "lm_head.",
            *DEPTH_MODULE_PREFIXES,
        )
        assert all(key.startswith(prefixes) for key in saved), [k for k in saved if not k.startswith(prefixes)][:5]
        assert {key.split(".")[1] for key in saved if key.startswith(DEPTH_MODULE_PREFIXES)} == set(
            DEPTH_FUSIONS[fusion].modules
        )
        reloaded = Qwen2_5_VLDepthForConditionalGeneration.from_pretrained(tmp_path).state_dict()
        for name, value in model.state_dict().items():
            assert torch.equal(reloaded[name], value), name

    def test_build_depth_model_command_builds_an_adapter_model_from_a_base(self, tiny_base, tmp_path, capsys):
        from training import build_depth_model

        build_depth_model.main(["--base", str(tiny_base), "--out", str(tmp_path), "--depth-fusion", "adapter"])
        model = Qwen2_5_VLDepthForConditionalGeneration.from_pretrained(tmp_path)
        assert model.config.depth_fusion == "adapter" and "Wrote" in capsys.readouterr().out
        # The depth encoder starts from the RGB tower, as in the other modes; the adapters start closed.
        for depth_block, rgb_block in zip(model.model.depth_encoder.blocks, model.model.visual.blocks):
            assert torch.equal(depth_block.attn.qkv.weight, rgb_block.attn.qkv.weight)
        assert all(not adapter.up.weight.any() for adapter in model.model.depth_adapters.adapters)

    def test_base_model_class_loads_the_published_layout(self, tiny_base):
        state = load_file(tiny_base / "model.safetensors")
        model, info = Qwen2_5_VLDepthModel.from_pretrained(tiny_base, output_loading_info=True)
        assert not info["unexpected_keys"] or set(info["unexpected_keys"]) <= {"lm_head.weight"}
        loaded = model.state_dict()
        for key, value in state.items():
            if key != "lm_head.weight":
                assert torch.equal(loaded[modern_key(key).removeprefix("model.")], value), key

    def test_generation_class_lists_generation_mixin(self):
        from transformers import GenerationMixin

        assert GenerationMixin in Qwen2_5_VLDepthForConditionalGeneration.__bases__

    @pytest.mark.parametrize(
        "fusion, dropped",
        [("add", "model.depth_gate.gate"), ("add", "model.depth_encoder.merger.mlp.0.weight"),
         ("rgbd", "model.depth_patch_embed.weight"), ("adapter", "model.depth_adapters.adapters.1.up.weight"),
         ("adapter", "model.depth_encoder.blocks.0.attn.qkv.weight")],
    )  # fmt: skip
    def test_depth_checkpoint_missing_depth_weights_is_refused(self, depth_models, tmp_path, fusion, dropped):
        model, _ = depth_models[fusion]
        model.save_pretrained(tmp_path)
        state = load_file(tmp_path / "model.safetensors")
        del state[dropped]
        save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
        with pytest.raises(ValueError, match=f"lacks 1 depth weights, e.g. \\['{dropped}'\\]"):
            Qwen2_5_VLDepthForConditionalGeneration.from_pretrained(tmp_path)

    def test_a_config_without_depth_fusion_names_the_missing_key(self, depth_models, tmp_path):
        model, _ = depth_models["concat"]
        model.save_pretrained(tmp_path)
        config = json.loads((tmp_path / "config.json").read_text())
        del config["depth_fusion"]
        (tmp_path / "config.json").write_text(json.dumps(config))
        with pytest.raises(ValueError) as error:
            Qwen2_5_VLDepthForConditionalGeneration.from_pretrained(tmp_path)
        assert str(error.value) == (
            f"The config.json of {tmp_path} has no 'depth_fusion' key, so it loaded as the default 'add', whose depth "
            "weights the checkpoint lacks (e.g. ['model.depth_gate.gate']): add the 'depth_fusion' it was saved with "
            "to its config.json, or pass depth_fusion=... to from_pretrained."
        )
        reloaded = Qwen2_5_VLDepthForConditionalGeneration.from_pretrained(tmp_path, depth_fusion="concat")
        for name, value in model.state_dict().items():
            assert torch.equal(reloaded.state_dict()[name], value), name

    @pytest.mark.parametrize("fusion", ["add", "concat", "rgbd"])
    def test_from_pretrained_without_a_checkpoint_takes_config_and_state_dict(self, depth_models, fusion):
        """transformers' `test_from_pretrained_no_checkpoint`: no folder, the weights come as `state_dict=`."""
        model, _ = depth_models[fusion]
        reloaded = Qwen2_5_VLDepthForConditionalGeneration.from_pretrained(
            pretrained_model_name_or_path=None, config=model.config, state_dict=model.state_dict()
        )
        for name, value in model.state_dict().items():
            assert torch.equal(reloaded.state_dict()[name], value), name
        without_gate_or_depth_channel = {
            key: value
            for key, value in model.state_dict().items()
            if not key.startswith(("model.depth_gate.", "model.depth_patch_embed."))
        }
        if fusion != "concat":  # concat's only depth module is the encoder, which the state dict keeps
            with pytest.raises(ValueError, match="None is a depth model checkpoint but lacks 1 depth weights"):
                Qwen2_5_VLDepthForConditionalGeneration.from_pretrained(
                    None, config=model.config, state_dict=without_gate_or_depth_channel
                )

    @pytest.mark.parametrize("fusion", ["add", "concat", "rgbd"])
    def test_a_checkpoint_without_any_weight_reports_every_key_missing(self, depth_models, tmp_path, fusion):
        """transformers' `test_model_weights_reload_no_missing_tied_weights`: every weight is reported missing (no
        depth error: the base weights are missing too)."""
        model, _ = depth_models[fusion]
        model.save_pretrained(tmp_path)
        save_file({"tensor": torch.tensor([1, 2])}, tmp_path / "model.safetensors", metadata={"format": "pt"})
        reloaded, info = Qwen2_5_VLDepthForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
        assert set(info["missing_keys"]) == set(reloaded.state_dict())  # every weight, the depth modules' among them
        assert any(key.startswith(DEPTH_MODULE_PREFIXES) for key in info["missing_keys"])
        assert set(info["unexpected_keys"]) == {"tensor"}

    def test_concat_checkpoint_loads_as_add_with_a_new_closed_gate(self, depth_models, tmp_path):
        model, _ = depth_models["concat"]
        model.save_pretrained(tmp_path)
        reloaded = Qwen2_5_VLDepthForConditionalGeneration.from_pretrained(tmp_path, depth_fusion="add")
        assert not reloaded.model.depth_gate.gate.any()
        for name, value in model.model.depth_encoder.state_dict().items():
            assert torch.equal(reloaded.model.depth_encoder.state_dict()[name], value), name

    def test_add_checkpoint_switches_to_adapter_keeping_its_encoder_with_closed_adapters(self, depth_models, tmp_path):
        model, _ = depth_models["add"]
        model = sharpen(model)  # an encoder that is no longer the RGB tower's copy
        model.save_pretrained(tmp_path)
        reloaded = Qwen2_5_VLDepthForConditionalGeneration.from_pretrained(tmp_path, depth_fusion="adapter")
        assert not hasattr(reloaded.model, "depth_gate")
        assert all(not adapter.up.weight.any() for adapter in reloaded.model.depth_adapters.adapters)
        for name, value in model.model.depth_encoder.state_dict().items():
            assert torch.equal(reloaded.model.depth_encoder.state_dict()[name], value), name

    def test_rgbd_checkpoint_switches_to_add_with_a_new_encoder_from_the_rgb_tower(self, depth_models, tmp_path):
        model, _ = depth_models["rgbd"]
        model.save_pretrained(tmp_path)
        reloaded = Qwen2_5_VLDepthForConditionalGeneration.from_pretrained(tmp_path, depth_fusion="add")
        assert not reloaded.model.depth_gate.gate.any()
        rgb_block = model.model.visual.blocks[0].attn.qkv.weight
        assert torch.equal(reloaded.model.depth_encoder.blocks[0].attn.qkv.weight, rgb_block)
        with pytest.raises(ValueError, match="'rgbd': it has no depth encoder"):
            model.get_depth_features(torch.zeros(48, 196), torch.tensor([[1, 6, 8]]))


def rgb_tower_with_mlp_width_100(seed: int = 0):
    """A depth-model config whose RGB tower's MLP width (100) is not a multiple of 64, and that tower (random)."""
    config = Qwen2_5_VLDepthConfig(
        text_config={"hidden_size": 48, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1},
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 100,
            "num_heads": 2,
            "out_hidden_size": 48,
            "window_size": 56,
            "fullatt_block_indexes": [1],
        },
    )
    config.vision_config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    rgb_tower = Qwen2_5_VisionTransformerPretrainedModel(config.vision_config)
    with torch.no_grad():  # visible weights everywhere (biases, norms), not the init's zeros and ones
        for parameter in rgb_tower.parameters():
            parameter.normal_(0, 0.3)
    return config, rgb_tower


def padded_and_unpadded_encoders(seed: int = 0):
    """Two depth encoders initialised from `rgb_tower_with_mlp_width_100`: the RGB-derived default (MLP padded to 128)
    and one with the RGB width given explicitly (100, unpadded)."""
    config, rgb_tower = rgb_tower_with_mlp_width_100(seed)
    encoders = []
    for encoder_config in (config.depth_config, config.default_depth_config(intermediate_size=100)):
        encoder_config._attn_implementation = "sdpa"
        encoder = Qwen2_5_VLDepthEncoder(encoder_config)
        encoder.init_from_rgb(rgb_tower)
        encoders.append(encoder)
    return encoders


def depth_encoder_inputs(grids=((1, 6, 8), (1, 6, 8)), seed: int = 0):
    grid_thw = torch.tensor(grids)
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.rand(int(grid_thw.prod(-1).sum()), 14 * 14, generator=generator) * 2 - 1
    return hidden, grid_thw


class TestMlpPadding:
    def test_padded_encoder_equals_unpadded(self):
        padded, unpadded = padded_and_unpadded_encoders()
        assert (padded.config.intermediate_size, unpadded.config.intermediate_size) == (128, 100)
        mlp = padded.blocks[0].mlp
        assert mlp.gate_proj.weight[100:].abs().sum() == 0 and mlp.up_proj.bias[100:].abs().sum() == 0
        assert mlp.down_proj.weight[:, 100:].abs().sum() == 0
        # Same-size images (batched SDPA) and two sizes (the stock per-image path).
        for grids in (((1, 6, 8), (1, 6, 8)), ((1, 6, 8), (1, 4, 4))):
            hidden, grid_thw = depth_encoder_inputs(grids)
            with torch.no_grad():
                a, b = padded(hidden, grid_thw=grid_thw), unpadded(hidden, grid_thw=grid_thw)
            # The extra units add exact zeros (bitwise equal on this CPU); only a BLAS that orders its sum over 128
            # units differently from 100 could differ, in the last bits.
            torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state, rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(a.pooler_output, b.pooler_output, rtol=1e-6, atol=1e-6)

    def test_padding_gets_exactly_zero_gradients_and_stays_zero(self):
        padded, unpadded = padded_and_unpadded_encoders()
        hidden, grid_thw = depth_encoder_inputs()
        optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1) for m in (padded, unpadded)]
        for _ in range(2):
            for model, optimizer in zip((padded, unpadded), optimizers):
                optimizer.zero_grad()
                model(hidden, grid_thw=grid_thw).pooler_output.square().mean().backward()
                optimizer.step()
        for block in padded.blocks:
            mlp = block.mlp
            weights = [mlp.gate_proj.weight, mlp.gate_proj.bias, mlp.up_proj.weight, mlp.up_proj.bias]
            padding = [(w, w.grad, slice(100, None)) for w in weights]
            padding.append((mlp.down_proj.weight, mlp.down_proj.weight.grad, (slice(None), slice(100, None))))
            for weight, gradient, pad in padding:
                assert torch.count_nonzero(gradient[pad]) == 0  # exactly zero, not small
                assert torch.count_nonzero(weight[pad]) == 0  # still zero after two AdamW steps with weight decay
            assert (
                mlp.gate_proj.weight.grad[:100].abs().sum() > 0 and mlp.down_proj.weight.grad[:, :100].abs().sum() > 0
            )
        # ... and the padded encoder trained exactly as the unpadded one.
        with torch.no_grad():
            torch.testing.assert_close(
                padded(hidden, grid_thw=grid_thw).pooler_output,
                unpadded(hidden, grid_thw=grid_thw).pooler_output,
                rtol=1e-5,
                atol=1e-6,
            )

    def test_narrower_mlp_than_rgb_is_refused(self):
        config, rgb_tower = rgb_tower_with_mlp_width_100()
        encoder = Qwen2_5_VLDepthEncoder(config.default_depth_config(intermediate_size=64))
        with pytest.raises(ValueError, match="MLP is narrower"):
            encoder.init_from_rgb(rgb_tower)


class TestCompile:
    # torch.compile on CPU generates and builds C++ (gcc): about 20 s cold, so it is not in the quick run.
    @pytest.mark.slow
    def test_compiled_blocks_equal_plain_encoder(self):
        """What `--compile` in the benchmarks does: each block compiled alone (static shapes), same outputs."""
        encoder, _ = padded_and_unpadded_encoders()
        encoder.eval()
        compiled = copy.deepcopy(encoder)
        for block in compiled.blocks:
            block.compile(dynamic=False)
        hidden, grid_thw = depth_encoder_inputs()
        with torch.no_grad():
            expected = encoder(hidden, grid_thw=grid_thw).pooler_output
            actual = compiled(hidden, grid_thw=grid_thw).pooler_output
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
