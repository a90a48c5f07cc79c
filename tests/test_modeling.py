"""Qwen2_5_VLDepthForConditionalGeneration on tiny random configs: equivalences, gradients, generation, positions."""

import copy

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

from configuration_depth import Qwen2_5_VLDepthConfig
from modeling_qwen2_5_vl_depth import (
    DEPTH_TOKEN_TYPE,
    Qwen2_5_VLDepthEncoder,
    Qwen2_5_VLDepthForConditionalGeneration,
)
from tests.conftest import make_inputs, random_depth, random_image


IMAGES = [[random_image(100, 140, 0)], [random_image(140, 84, 1)]]  # two sizes: 3x4 and 5x3 merged tokens
DEPTHS = [[random_depth(100, 140, 0)], [random_depth(140, 84, 1)]]


def rgb_inputs(inputs):
    return {key: value for key, value in inputs.items() if key != "depth_values"}


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


class TestEquivalenceWithBase:
    @pytest.mark.parametrize("fusion", ["add", "concat", "none"])
    def test_no_depth_gives_base_logits(self, depth_models, base_model, fusion):
        model, processor = depth_models[fusion]
        inputs = make_inputs(processor, IMAGES)
        assert "depth_values" not in inputs
        with torch.no_grad():
            torch.testing.assert_close(model(**inputs).logits, base_model(**inputs).logits, rtol=0, atol=0)

    def test_add_with_gate_at_zero_gives_base_logits_exactly(self, depth_models, base_model):
        model, processor = depth_models["add"]
        assert model.model.depth_gate.gate.shape == (model.config.text_config.hidden_size,)
        assert not model.model.depth_gate.gate.any()
        inputs = make_inputs(processor, IMAGES, DEPTHS)
        with torch.no_grad():
            torch.testing.assert_close(model(**inputs).logits, base_model(**rgb_inputs(inputs)).logits, rtol=0, atol=0)

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

    def test_concat_adds_one_depth_block_per_image(self, depth_models, base_model):
        model, processor = depth_models["concat"]
        with_depth = make_inputs(processor, IMAGES, DEPTHS)
        without = make_inputs(processor, IMAGES)
        merged_tokens = (with_depth["image_grid_thw"].prod(-1) // 4).tolist()
        assert merged_tokens == [12, 15]  # 100x140 -> 84x112 px (3x4 merged), 140x84 -> 140x84 px (5x3 merged)
        extra = [n + 2 for n in merged_tokens]  # depth tokens plus their <|vision_end|><|vision_start|> pair
        real_lengths = with_depth["attention_mask"].sum(-1).tolist()
        assert real_lengths == [n + e for n, e in zip(without["attention_mask"].sum(-1).tolist(), extra)]
        assert (with_depth["mm_token_type_ids"] == DEPTH_TOKEN_TYPE).sum(-1).tolist() == merged_tokens


class TestTraining:
    # Depth into the RGB-only model is an error, tested with the other bad inputs.
    @pytest.mark.parametrize(
        "fusion, with_depth", [("add", True), ("add", False), ("concat", True), ("concat", False), ("none", False)]
    )
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
        if not with_depth:
            assert not any(name.startswith("model.depth_") for name in gradients)

    def test_gradient_checkpointing_gives_the_same_gradients(self, depth_models):
        model, processor = depth_models["concat"]
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
        assert any(name.startswith("model.depth_encoder.blocks.") for name in gradients[1])
        for name in gradients[0]:
            torch.testing.assert_close(gradients[0][name], gradients[1][name], rtol=1e-5, atol=1e-6, msg=name)


class TestGeneration:
    @pytest.mark.parametrize("fusion", ["add", "concat"])
    def test_greedy_with_and_without_cache_is_identical(self, depth_models, fusion):
        model, processor = depth_models[fusion]
        model = sharpen(model)
        inputs = make_inputs(processor, IMAGES, DEPTHS)
        settings = {"max_new_tokens": 8, "do_sample": False, "return_dict_in_generate": True, "output_logits": True}
        # Random weights could emit placeholder tokens, which no trained model does; they are not valid output.
        settings["suppress_tokens"] = [processor.depth_token_id, processor.image_token_id]
        cached = model.generate(**inputs, **settings)
        uncached = model.generate(**inputs, use_cache=False, **settings)
        assert torch.equal(cached.sequences, uncached.sequences)
        assert len(set(cached.sequences[0, -8:].tolist())) > 1, "greedy text should vary for this test to mean much"
        for step_cached, step_uncached in zip(cached.logits, uncached.logits):
            torch.testing.assert_close(step_cached, step_uncached, rtol=1e-4, atol=1e-4)

    def test_depth_reaches_generation(self, depth_models):
        model, processor = depth_models["concat"]
        model = sharpen(model)
        settings = {"max_new_tokens": 1, "do_sample": False, "return_dict_in_generate": True, "output_logits": True}
        near = model.generate(**make_inputs(processor, IMAGES, DEPTHS), **settings).logits[0]
        far = model.generate(**make_inputs(processor, IMAGES, [[d[0] * 4] for d in DEPTHS]), **settings).logits[0]
        assert (near - far).abs().max() > 1e-3

    def test_beams_expand_depth_with_images(self, depth_models):
        model, processor = depth_models["add"]
        model = sharpen(model)
        inputs = make_inputs(processor, IMAGES, DEPTHS)
        settings = {"max_new_tokens": 3, "do_sample": False, "num_beams": 2, "num_return_sequences": 2}
        sequences = model.generate(**inputs, **settings)
        assert sequences.shape[0] == 4
        # Beam search's best sequence per sample matches a run of that sample alone (depth went to the right sample).
        alone = model.generate(**make_inputs(processor, [IMAGES[1]], [DEPTHS[1]]), **settings)
        assert torch.equal(sequences[2, -3:], alone[0, -3:])


class TestBatching:
    @pytest.mark.parametrize("fusion", ["add", "concat"])
    def test_batch_of_two_sizes_equals_each_alone(self, depth_models, fusion):
        model, processor = depth_models[fusion]
        model = sharpen(model)
        batch = make_inputs(processor, IMAGES, DEPTHS)
        with torch.no_grad():
            batched = model(**batch).logits[:, -1]
            for index in range(2):
                alone = model(**make_inputs(processor, [IMAGES[index]], [DEPTHS[index]])).logits[0, -1]
                torch.testing.assert_close(batched[index], alone, rtol=1e-4, atol=1e-4)


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
            types = inputs["mm_token_type_ids"][sample]
            image_positions = positions[:, sample, types == 1]
            depth_positions = positions[:, sample, types == DEPTH_TOKEN_TYPE]
            assert torch.equal(depth_positions, image_positions)
            # Image tokens sit on their (t, h, w) grid after the text before them, exactly as without depth.
            start = int(image_positions[0, 0])
            heights = torch.arange(grid_h).repeat_interleave(grid_w) + start
            widths = torch.arange(grid_w).repeat(grid_h) + start
            assert torch.equal(image_positions[1], heights) and torch.equal(image_positions[2], widths)
            assert torch.equal(image_positions, base_positions[:, sample, rgb_only["mm_token_type_ids"][sample] == 1])
            # Text after the depth block continues where the base model's text after the image does.
            text = (types == 0) & (inputs["attention_mask"][sample] == 1)
            base_text = (rgb_only["mm_token_type_ids"][sample] == 0) & (rgb_only["attention_mask"][sample] == 1)
            after_image_text = positions[0, sample, text][-5:]
            assert torch.equal(after_image_text - 2, base_positions[0, sample, base_text][-5:])
            # The decode delta counts the depth block as sequence that adds no position.
            num_depth = int((types == DEPTH_TOKEN_TYPE).sum())
            assert int(deltas[sample]) == int(base_deltas[sample]) - num_depth

    def test_without_depth_tokens_positions_are_stock(self, depth_models, base_model):
        model, processor = depth_models["concat"]
        inputs = make_inputs(processor, IMAGES)
        ours = model.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"], inputs["image_grid_thw"])
        stock = base_model.model.get_rope_index(
            inputs["input_ids"], inputs["mm_token_type_ids"], inputs["image_grid_thw"]
        )
        assert all(torch.equal(a, b) for a, b in zip(ours, stock))


class TestHostIndexBookkeeping:
    """Positions and window indices computed once per grid / on the host equal the stock per-image loops exactly."""

    GRIDS = torch.tensor([[1, 8, 8], [1, 6, 10], [1, 8, 8], [1, 4, 4], [1, 14, 6]])

    def test_vision_position_ids_and_window_index_equal_stock(self):
        from transformers.vision_utils import get_vision_position_ids, get_vision_window_index

        from modeling_qwen2_5_vl_depth import vision_position_ids, vision_window_index

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
        for fusion in ("add", "concat"):
            model, info = Qwen2_5_VLDepthForConditionalGeneration.from_pretrained(
                base_folder, depth_fusion=fusion, output_loading_info=True
            )
            assert not info["unexpected_keys"] and not info["mismatched_keys"]
            depth_keys = {k for k in model.state_dict() if k.startswith(("model.depth_encoder.", "model.depth_gate."))}
            assert set(info["missing_keys"]) == depth_keys
            loaded = model.state_dict()
            for key, value in state.items():
                assert torch.equal(loaded[modern_key(key)], value), key
            assert len(loaded) == len(state) + len(depth_keys) + 1  # + lm_head, tied to the embeddings


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
