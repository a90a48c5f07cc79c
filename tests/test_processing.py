"""Qwen2_5_VLDepthProcessor: depth inputs and units, per-image depth, grid alignment, placeholders, saving, bad input,
the estimator, and SpatialBot's depth-as-picture arm (training.spatialbot)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer

from configuration_depth import DEPTH_FUSION_MODES, DEPTH_FUSIONS, Qwen2_5_VLDepthConfig
from processing_depth import Qwen2_5_VLDepthProcessor, depth_to_meters, fill_depth_holes, to_rgb_image
from tests.conftest import chat, make_inputs, random_depth, random_image, reconfigured
from training.build_depth_model import build_depth_model
from training.spatialbot import DepthAsImageProcessor, depth_picture, load_trained_processor
from training.tiny import save_tiny_depth_anything


DEPTH_MODES = [name for name in DEPTH_FUSION_MODES if DEPTH_FUSIONS[name].has_depth]


IMAGE = random_image(100, 140, 0)  # resized to 84x112: a 6x8 grid, 12 merged tokens
DEPTH = random_depth(100, 140, 0)
SQUARE = random_image(84, 84, 5)  # a 6x6 grid, 9 merged tokens
SQUARE_DEPTH = random_depth(84, 84, 5)
BASE_KEYS = {"input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids"}


@pytest.fixture(scope="module")
def processors(tiny_base):
    """One processor per fusion mode, built from the plain base folder (no model needed)."""
    return {
        fusion: Qwen2_5_VLDepthProcessor.from_pretrained(tiny_base, depth_fusion=fusion)
        for fusion in DEPTH_FUSION_MODES
    }


@pytest.fixture(scope="module")
def add_processor(processors):
    return processors["add"]


@pytest.fixture(scope="module")
def concat_processor(processors):
    return processors["concat"]


@pytest.fixture(scope="module")
def estimator_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("depth_anything")
    return {
        "metric": save_tiny_depth_anything(root / "metric", metric=True),
        "relative": save_tiny_depth_anything(root / "relative", metric=False),
    }


def depth_values(processor, depth, image=IMAGE, **kwargs):
    return make_inputs(processor, [[image]], [[depth]], **kwargs)["depth_values"]


def merged_tokens(inputs) -> list[int]:
    return (inputs["image_grid_thw"].prod(-1) // 4).tolist()


def base_qwen2_5_vl_inputs(processor, images, question="How far is the red cube from the camera?"):
    """What Qwen2.5-VL's own processor gives, built by hand: each `<|image_pad|>` expanded to its merged tokens."""
    pixels = processor.image_processor([image for sample in images for image in sample], return_tensors="pt")
    counts = iter((pixels["image_grid_thw"].prod(-1) // 4).tolist())
    texts = []
    for sample in images:
        prompt = processor.apply_chat_template(chat(question, len(sample)), add_generation_prompt=True)
        pieces = prompt.split("<|image_pad|>")
        texts.append(pieces[0] + "".join("<|image_pad|>" * next(counts) + piece for piece in pieces[1:]))
    text_inputs = processor.tokenizer(texts, padding=True, return_tensors="pt")
    mm_token_type_ids = (text_inputs["input_ids"] == processor.image_token_id).long()
    return {**text_inputs, **pixels, "mm_token_type_ids": mm_token_type_ids}


def assert_same_inputs(actual, expected):
    assert set(actual) == set(expected)
    for key in expected:
        assert torch.equal(actual[key], expected[key]), key


class TestDepthInputs:
    def test_every_input_type_gives_the_same_depth(self, add_processor, tmp_path):
        millimetres = np.round(DEPTH * 1000).astype(np.uint16)
        png_path = tmp_path / "depth.png"
        Image.fromarray(millimetres).save(png_path)
        reference = depth_values(add_processor, millimetres.astype(np.float32) / 1000)
        inputs = {
            "float32 metres": DEPTH,
            "float64 metres": DEPTH.astype(np.float64),
            "torch metres": torch.from_numpy(DEPTH),
            "(1, H, W) metres": DEPTH[None],
            "uint16 millimetres": millimetres,
            "little-endian uint16 millimetres": millimetres.astype("<u2"),
            "big-endian uint16 millimetres": millimetres.astype(">u2"),
            "16-bit PNG path": str(png_path),
            "16-bit PNG bytes": png_path.read_bytes(),
            "PIL I;16": Image.fromarray(millimetres),
            "PIL I;16B": Image.fromarray(millimetres.astype(">u2")),
            "PIL I": Image.fromarray(millimetres.astype(np.int32)),
            "PIL F": Image.fromarray(DEPTH, mode="F"),
        }
        assert inputs["PIL I;16B"].mode == "I;16B"
        for name, depth in inputs.items():
            values = depth_values(add_processor, depth)
            torch.testing.assert_close(values, reference, rtol=0, atol=0.0005, msg=name)

    def test_depth_is_laid_out_like_pixel_values(self, add_processor):
        # An image already on the grid (84x112 = 6x8 patches) is not resized: pixel i of patch p must match exactly.
        rng = np.random.default_rng(3)
        red = rng.integers(0, 256, (84, 112), dtype=np.uint8)
        image = Image.fromarray(np.stack([red, red // 2, red // 3], axis=-1))
        depth = red.astype(np.float32) / 10 + 0.5
        inputs = make_inputs(add_processor, [[image]], [[depth]], do_rescale=False, do_normalize=False)
        assert inputs["image_grid_thw"].tolist() == [[1, 6, 8]]
        red_channel_first_frame = inputs["pixel_values"][:, : 14 * 14]
        torch.testing.assert_close(inputs["depth_values"], red_channel_first_frame / 10 + 0.5)

    def test_depth_is_resized_to_its_image_grid_by_nearest_neighbour(self, add_processor):
        inputs = make_inputs(add_processor, [[IMAGE]], [[DEPTH]])
        grid = inputs["image_grid_thw"][0]
        assert tuple(inputs["depth_values"].shape) == (int(grid.prod()), 14 * 14)
        assert inputs["depth_values"].dtype == torch.float32
        # Nearest neighbour invents no values: every output depth is one of the measured ones.
        assert np.isin(inputs["depth_values"].numpy(), DEPTH).all()

    def test_lower_resolution_depth_of_the_same_camera_is_accepted(self, add_processor):
        half = DEPTH[::2, ::2]
        assert tuple(depth_values(add_processor, half).shape) == tuple(depth_values(add_processor, DEPTH).shape)

    def test_invalid_pixels_become_zero(self, add_processor):
        depth = DEPTH.copy()
        depth[:10] = np.nan
        depth[10:20] = np.inf
        depth[20:30] = 0
        values = depth_values(add_processor, depth)
        assert torch.isfinite(values).all()
        fraction_invalid = (values == 0).float().mean().item()
        assert abs(fraction_invalid - 30 / 100) < 0.08  # nearest resize keeps roughly the masked rows

    def test_holes_are_filled_only_when_asked(self, add_processor):
        depth = DEPTH.copy()
        depth[::3, ::4] = 0  # isolated dropouts, every one with valid neighbours
        assert (depth_values(add_processor, depth) == 0).any()  # by default holes reach the model as holes
        filling = reconfigured(add_processor, fill_depth_holes=1)
        filled = depth_values(filling, depth)
        # Exactly the holes filled by `fill_depth_holes`, then resized and patchified as any depth.
        torch.testing.assert_close(filled, depth_values(add_processor, fill_depth_holes(depth, 1)), rtol=0, atol=0)
        assert (filled > 0).all()
        # Complete depth is left exactly as it is.
        torch.testing.assert_close(depth_values(filling, DEPTH), depth_values(add_processor, DEPTH), rtol=0, atol=0)

    @pytest.mark.parametrize("passes", [-1, 1.5, True, "2"])
    def test_fill_depth_holes_must_be_a_number_of_passes(self, add_processor, passes):
        with pytest.raises(ValueError, match="fill_depth_holes must be a number of passes >= 0"):
            reconfigured(add_processor, fill_depth_holes=passes)

    def test_relative_depth_is_read_at_the_processors_median_whatever_its_scale(self, add_processor):
        scaling = reconfigured(add_processor, relative_depth_median=3.5)
        depth = DEPTH.copy()
        depth[:5] = 0  # a hole stays a hole
        at_median = depth * (3.5 / np.median(depth[depth > 0]))
        expected = depth_values(add_processor, at_median)
        for scale in (1 / np.median(depth[depth > 0]), 0.37, 12.0):  # divided by its median, or any other scale
            relative = depth_values(scaling, depth * scale, depth_is_relative=True)
            torch.testing.assert_close(relative, expected, rtol=1e-6, atol=0)
        assert torch.equal(relative == 0, expected == 0) and (expected == 0).any()
        # Metric depth is read as it is, with or without the setting.
        assert torch.equal(depth_values(scaling, depth), depth_values(add_processor, depth))

    def test_relative_depth_without_a_median_to_read_it_at_is_refused(self, add_processor):
        with pytest.raises(
            ValueError, match="depth_is_relative=True, but this processor has no relative_depth_median"
        ):
            depth_values(add_processor, DEPTH, depth_is_relative=True)

    @pytest.mark.parametrize("median", [0, -1.0, float("nan"), float("inf"), True, "3"])
    def test_relative_depth_median_must_be_a_positive_number_of_metres(self, add_processor, median):
        with pytest.raises(ValueError, match="relative_depth_median must be a positive number of metres"):
            reconfigured(add_processor, relative_depth_median=median)

    def test_a_npy_path_is_read_like_its_array(self, add_processor, tmp_path):
        millimetres = np.round(DEPTH * 1000).astype(np.uint16)
        np.save(tmp_path / "metres.npy", DEPTH)
        with open(tmp_path / "millimetres.NPY", "wb") as file:  # np.save would append ".npy"
            np.save(file, millimetres)
        assert torch.equal(
            depth_values(add_processor, str(tmp_path / "metres.npy")), depth_values(add_processor, DEPTH)
        )
        assert torch.equal(
            depth_values(add_processor, tmp_path / "millimetres.NPY"), depth_values(add_processor, millimetres)
        )

    def test_a_map_written_as_nested_lists_is_one_map(self, add_processor):
        rows = DEPTH.tolist()  # float64 metres, like the array
        reference = make_inputs(add_processor, [[IMAGE], [SQUARE]], [[DEPTH], [SQUARE_DEPTH]])
        for depth in ([[rows], [SQUARE_DEPTH.tolist()]], [rows, SQUARE_DEPTH.tolist()], [rows, [SQUARE_DEPTH]]):
            inputs = make_inputs(add_processor, [[IMAGE], [SQUARE]], depth)
            assert torch.equal(inputs["depth_values"], reference["depth_values"])
        for depth in (rows, [rows], [[rows]]):  # bare, in a flat list, in a sample's list
            inputs = make_inputs(add_processor, [[IMAGE]], depth)
            assert torch.equal(inputs["depth_values"], reference["depth_values"][:48])
        mixed = make_inputs(add_processor, [[IMAGE], [SQUARE]], [rows, None])
        assert mixed["image_has_depth"].tolist() == [True, False]
        messages = chat("How far is it?")
        messages[0]["content"][0] = {"type": "image", "image": IMAGE, "depth": rows}
        from_messages = add_processor.apply_chat_template(
            messages, tokenize=True, return_dict=True, add_generation_prompt=True, return_tensors="pt"
        )
        assert torch.equal(from_messages["depth_values"], reference["depth_values"][:48])

    def test_masked_pixels_of_a_masked_array_are_invalid(self, add_processor):
        readings = DEPTH.copy()
        readings[:30] = 5.0  # what the masked pixels hold: not readings, however plausible (or negative)
        readings[30:40] = -1.0
        masked = np.ma.masked_array(readings, mask=np.zeros(readings.shape, bool))
        masked[:40] = np.ma.masked
        holes = DEPTH.copy()
        holes[:40] = 0
        np.testing.assert_array_equal(depth_to_meters(masked), holes)
        assert torch.equal(depth_values(add_processor, masked), depth_values(add_processor, holes))
        millimetres = np.ma.masked_array(np.round(DEPTH * 1000).astype(np.uint16), mask=masked.mask)
        np.testing.assert_array_equal(depth_to_meters(millimetres)[:40], 0)
        with pytest.raises(ValueError, match=r"Depth has 5600 invalid pixels \(0, NaN, inf or masked\)"):
            depth_to_meters(masked, invalid_depth="error")

    def test_minus_inf_is_invalid_like_plus_inf(self, add_processor):
        infinite = {sign: DEPTH.copy() for sign in (1, -1)}
        for sign, depth in infinite.items():
            depth[:10] = sign * np.inf
        holes = DEPTH.copy()
        holes[:10] = 0
        for depth in infinite.values():
            np.testing.assert_array_equal(depth_to_meters(depth), holes)
            with pytest.raises(ValueError, match=r"Depth has 1400 invalid pixels"):
                depth_to_meters(depth, invalid_depth="error")
        assert torch.equal(depth_values(add_processor, infinite[-1]), depth_values(add_processor, holes))

    def test_depth_in_chat_messages_equals_depth_argument(self, add_processor):
        messages = chat("How far is it?")
        messages[0]["content"][0] = {"type": "image", "image": IMAGE, "depth": DEPTH}
        from_messages = add_processor.apply_chat_template(
            messages, tokenize=True, return_dict=True, add_generation_prompt=True, return_tensors="pt"
        )
        direct = make_inputs(add_processor, [[IMAGE]], [[DEPTH]], question="How far is it?")
        for key in ("input_ids", "pixel_values", "depth_values", "image_has_depth", "mm_token_type_ids"):
            assert torch.equal(from_messages[key], direct[key]), key


class TestPerImageDepth:
    """A batch may mix images with and without depth; `image_has_depth` says which have it."""

    @pytest.mark.parametrize(
        "depth",
        [[[DEPTH], None], [[DEPTH], [None]], [DEPTH, None], (DEPTH, None)],
        ids=["sample", "nested", "flat", "tuple"],
    )
    def test_an_image_without_depth_gets_no_rows(self, add_processor, depth):
        mixed = make_inputs(add_processor, [[IMAGE], [SQUARE]], depth)
        alone = make_inputs(add_processor, [[IMAGE]], [[DEPTH]])
        assert mixed["image_has_depth"].tolist() == [True, False]
        assert mixed["image_has_depth"].dtype == torch.bool
        assert torch.equal(mixed["depth_values"], alone["depth_values"])
        assert mixed["depth_values"].shape[0] == 48  # the first image's 6x8 patches only

    def test_rows_follow_only_the_images_with_depth_in_order(self, add_processor):
        mixed = make_inputs(add_processor, [[IMAGE, SQUARE, IMAGE]], [[None, SQUARE_DEPTH, DEPTH]])
        square = make_inputs(add_processor, [[SQUARE]], [[SQUARE_DEPTH]])["depth_values"]
        wide = make_inputs(add_processor, [[IMAGE]], [[DEPTH]])["depth_values"]
        assert mixed["image_has_depth"].tolist() == [False, True, True]
        assert torch.equal(mixed["depth_values"], torch.cat([square, wide]))

    def test_a_bare_map_is_one_map_not_a_list_of_rows(self, add_processor):
        reference = make_inputs(add_processor, [[IMAGE], [IMAGE]], [[DEPTH], [DEPTH]])
        for depth in ([[DEPTH], DEPTH], [DEPTH, [DEPTH]], [torch.from_numpy(DEPTH), [DEPTH]]):
            assert torch.equal(
                make_inputs(add_processor, [[IMAGE], [IMAGE]], depth)["depth_values"], reference["depth_values"]
            )
        single = make_inputs(add_processor, [[IMAGE]], DEPTH)
        assert torch.equal(single["depth_values"], reference["depth_values"][:48])

    def test_a_sample_without_depth_covers_all_its_images(self, add_processor):
        inputs = make_inputs(add_processor, [[IMAGE, SQUARE], [IMAGE]], [None, [DEPTH]])
        assert inputs["image_has_depth"].tolist() == [False, False, True]

    @pytest.mark.parametrize("fusion", DEPTH_MODES)
    @pytest.mark.parametrize(
        "depth", [None, [None, None], [[None], None]], ids=["absent", "flat None", "samples None"]
    )
    def test_without_any_depth_the_output_is_exactly_qwen2_5_vl(self, processors, fusion, depth):
        inputs = make_inputs(processors[fusion], [[IMAGE], [SQUARE]], depth)
        assert_same_inputs(inputs, base_qwen2_5_vl_inputs(processors[fusion], [[IMAGE], [SQUARE]]))
        assert set(inputs) == BASE_KEYS


class TestPlaceholders:
    def test_concat_gives_an_image_with_depth_twice_its_placeholders_in_one_run(self, concat_processor):
        inputs = make_inputs(concat_processor, [[IMAGE, SQUARE]], [[DEPTH, None]])
        text = concat_processor.tokenizer.decode(inputs["input_ids"][0])
        expected = (
            f"<|vision_start|>{'<|image_pad|>' * 24}<|vision_end|><|vision_start|>{'<|image_pad|>' * 9}<|vision_end|>"
        )
        assert expected in text
        types = inputs["mm_token_type_ids"][0]
        assert set(types.tolist()) == {0, 1}
        assert torch.equal(types == 1, inputs["input_ids"][0] == concat_processor.image_token_id)
        assert (types == 1).sum().item() == 2 * 12 + 9

    def test_add_adds_no_tokens(self, add_processor):
        with_depth = make_inputs(add_processor, [[IMAGE]], [[DEPTH]])
        without = make_inputs(add_processor, [[IMAGE]])
        for key in BASE_KEYS:
            assert torch.equal(with_depth[key], without[key]), key

    def test_the_tokenizer_is_left_as_it_is(self, tiny_base):
        tokenizer = AutoTokenizer.from_pretrained(tiny_base)
        tokenizer.add_special_tokens({"additional_special_tokens": ["<|user_marker|>"]})
        vocab, special = tokenizer.get_vocab(), list(tokenizer.all_special_tokens)
        processor = Qwen2_5_VLDepthProcessor.from_pretrained(tiny_base, depth_fusion="concat", tokenizer=tokenizer)
        make_inputs(processor, [[IMAGE]], [[DEPTH]])
        assert processor.tokenizer is tokenizer
        assert tokenizer.get_vocab() == vocab and list(tokenizer.all_special_tokens) == special
        assert "<|user_marker|>" in tokenizer.all_special_tokens and "<|depth_pad|>" not in vocab

    @pytest.mark.parametrize("fusion", DEPTH_MODES)
    def test_truncation_through_an_image_run_is_an_error(self, processors, fusion):
        prompt = processors[fusion].apply_chat_template(chat("How far?"), add_generation_prompt=True)
        image_start = len(processors[fusion].tokenizer(prompt.split("<|image_pad|>")[0])["input_ids"])
        with pytest.raises(ValueError, match="Mismatch in `image` token count"):
            processors[fusion](
                images=[IMAGE], text=[prompt], depth=[DEPTH], truncation=True, max_length=image_start + 6
            )
        # With depth tokens (concat) the depth half of the run counts too: a cut after the RGB half is refused.
        if DEPTH_FUSIONS[fusion].tokens_per_image_with_depth == 2:
            with pytest.raises(ValueError, match="Mismatch in `image` token count"):
                processors[fusion](
                    images=[IMAGE], text=[prompt], depth=[DEPTH], truncation=True, max_length=image_start + 12
                )

    @pytest.mark.parametrize("fusion", DEPTH_MODES)
    def test_num_multimodal_tokens_are_the_placeholders_the_processor_writes(self, processors, fusion, tmp_path):
        processor = processors[fusion]
        sizes = [(100, 140), (84, 84), (60, 200), (37, 51)]
        has_depth = [True, False, True, True]
        counted = processor._get_num_multimodal_tokens(image_sizes=sizes, image_has_depth=has_depth)
        merged = []
        for seed, ((height, width), with_depth) in enumerate(zip(sizes, has_depth)):
            depth = [[random_depth(height, width, seed)]] if with_depth else None
            inputs = make_inputs(processor, [[random_image(height, width, seed)]], depth)
            merged += merged_tokens(inputs)
            assert counted.num_image_tokens[seed] == int((inputs["input_ids"] == processor.image_token_id).sum())
            assert counted.num_image_patches[seed] == inputs["pixel_values"].shape[0]
        doubled = [DEPTH_FUSIONS[fusion].tokens_per_image_with_depth * n for n in merged]
        assert counted.num_image_tokens == [doubled[0], merged[1], *doubled[2:]]
        assert (doubled != merged) == (fusion == "concat")
        # Without `image_has_depth`: every image has depth when an estimator fills the gaps, none otherwise.
        assert processor._get_num_multimodal_tokens(image_sizes=sizes).num_image_tokens == merged
        estimating = reconfigured(processor, depth_estimator=str(tmp_path / "never_loaded"))
        expected = doubled
        assert estimating._get_num_multimodal_tokens(image_sizes=sizes).num_image_tokens == expected


class TestSaving:
    def test_depth_fusion_comes_from_the_model_config_not_the_processor_config(
        self, concat_processor, tiny_base, tmp_path
    ):
        processor = reconfigured(
            concat_processor, depth_estimator="some/estimator", invalid_depth="error", fill_depth_holes=2
        )
        assert "depth_fusion" not in processor.to_dict()
        processor.save_pretrained(tmp_path)
        saved = json.loads((tmp_path / "processor_config.json").read_text())
        assert "depth_fusion" not in saved
        assert (saved["depth_estimator"], saved["invalid_depth"], saved["fill_depth_holes"]) == (
            "some/estimator",
            "error",
            2,
        )
        assert Qwen2_5_VLDepthProcessor.from_pretrained(tmp_path).fill_depth_holes == 2
        assert saved["relative_depth_median"] is None
        reconfigured(processor, relative_depth_median=3.25).save_pretrained(tmp_path)
        assert Qwen2_5_VLDepthProcessor.from_pretrained(tmp_path).relative_depth_median == 3.25
        assert saved["auto_map"] == {"AutoProcessor": "processing_depth.Qwen2_5_VLDepthProcessor"}
        # No config.json: the constructor's default.
        reloaded = Qwen2_5_VLDepthProcessor.from_pretrained(tmp_path)
        assert (reloaded.depth_fusion, reloaded.depth_estimator, reloaded.invalid_depth) == (
            "add",
            "some/estimator",
            "error",
        )
        # The model's config.json decides; an explicit argument still wins.
        Qwen2_5_VLDepthConfig.from_pretrained(tiny_base, depth_fusion="concat").save_pretrained(tmp_path)
        assert Qwen2_5_VLDepthProcessor.from_pretrained(tmp_path).depth_fusion == "concat"
        assert Qwen2_5_VLDepthProcessor.from_pretrained(tmp_path, depth_fusion="none").depth_fusion == "none"
        Qwen2_5_VLDepthConfig.from_pretrained(tiny_base, depth_fusion="none").save_pretrained(tmp_path)
        assert Qwen2_5_VLDepthProcessor.from_pretrained(tmp_path).depth_fusion == "none"

    def test_a_plain_qwen2_5_vl_config_keeps_the_default(self, tiny_base):
        assert Qwen2_5_VLDepthProcessor.from_pretrained(tiny_base).depth_fusion == "add"

    def test_image_mode_is_the_spatialbot_arm(self, add_processor):
        with pytest.raises(ValueError, match=r"training\.spatialbot\.DepthAsImageProcessor"):
            Qwen2_5_VLDepthProcessor(add_processor.image_processor, add_processor.tokenizer, depth_fusion="image")

    def test_unknown_fusion_mode(self, add_processor):
        with pytest.raises(ValueError, match="Unknown depth_fusion 'stack'"):
            Qwen2_5_VLDepthProcessor(add_processor.image_processor, add_processor.tokenizer, depth_fusion="stack")


class TestDepthAsPicture:
    """The SpatialBot-style arm (training.spatialbot): depth as a second picture for an RGB-only model."""

    @pytest.fixture(scope="class")
    def spatialbot(self, tiny_base):
        return DepthAsImageProcessor.from_pretrained(tiny_base)

    def test_each_image_with_depth_is_followed_by_its_depth_picture(self, spatialbot, processors):
        inputs = make_inputs(spatialbot, [[IMAGE, SQUARE]], [[DEPTH, None]])
        # By hand: the RGB-only processor, a prompt with one more image block, the picture right after its image.
        by_hand = make_inputs(processors["none"], [[IMAGE, depth_picture(DEPTH, IMAGE.size), SQUARE]])
        assert_same_inputs(inputs, by_hand)
        assert inputs["image_grid_thw"].tolist() == [[1, 6, 8], [1, 6, 8], [1, 6, 6]]
        text = spatialbot.tokenizer.decode(inputs["input_ids"][0])
        assert f"{'<|image_pad|>' * 12}<|vision_end|><|vision_start|>{'<|image_pad|>' * 12}<|vision_end|>" in text
        assert spatialbot.depth_fusion == "image"

    def test_without_depth_it_is_the_rgb_processor(self, spatialbot, processors):
        assert_same_inputs(make_inputs(spatialbot, [[IMAGE]]), make_inputs(processors["none"], [[IMAGE]]))

    def test_depth_picture_levels_keep_the_metric_scale(self):
        depth = np.array([[0.1, 1.0, 100.0, 0.0, 1000.0]], dtype=np.float32)
        grey = np.asarray(depth_picture(depth, (5, 1)))[0, :, 0]
        assert grey.tolist() == [1, 86, 255, 0, 255]  # 1 m is a third of the way along log(0.1)..log(100)

    def test_its_folder_reloads_as_this_arm(self, spatialbot, concat_processor, tiny_base, tmp_path):
        spatialbot.save_pretrained(tmp_path / "image_arm")
        saved = json.loads((tmp_path / "image_arm" / "processor_config.json").read_text())
        assert saved["processor_class"] == "DepthAsImageProcessor" and "auto_map" not in saved
        reloaded = load_trained_processor(tmp_path / "image_arm")
        assert type(reloaded) is DepthAsImageProcessor and reloaded.depth_fusion == "image"
        assert_same_inputs(make_inputs(reloaded, [[IMAGE]], [[DEPTH]]), make_inputs(spatialbot, [[IMAGE]], [[DEPTH]]))
        # Any other folder loads through AutoProcessor, i.e. its remote code.
        concat_processor.save_pretrained(tmp_path / "concat")
        Qwen2_5_VLDepthConfig.from_pretrained(tiny_base, depth_fusion="concat").save_pretrained(tmp_path / "concat")
        other = load_trained_processor(tmp_path / "concat")
        assert type(other).__name__ == "Qwen2_5_VLDepthProcessor" and other.depth_fusion == "concat"

    def test_the_arm_builds_an_rgb_only_model_that_runs_on_it(self, tiny_base):
        torch.manual_seed(0)
        model, processor = build_depth_model(tiny_base, depth_fusion="image")
        assert type(processor) is DepthAsImageProcessor and model.config.depth_fusion == "none"
        assert torch.isfinite(model.eval()(**make_inputs(processor, [[IMAGE]], [[DEPTH]])).logits).all()


class TestBadInput:
    @pytest.mark.parametrize(
        "depth, message",
        [
            (-DEPTH, "negative"),
            ((DEPTH * 10).astype(np.uint8), "uint8"),
            (DEPTH.astype(np.int32), "dtype int32 has no known unit"),
            (DEPTH > 1, "dtype bool has no known unit"),
            (Image.fromarray((DEPTH * 10).astype(np.uint8)), "mode 'L' is a picture, not a measurement"),
            (np.stack([DEPTH, DEPTH]), "2-D"),
            (DEPTH[:50], "must cover its image"),
            (DEPTH[:0], r"must not be empty; got shape \(0, 140\)"),
            (DEPTH[:, :0], r"must not be empty; got shape \(100, 0\)"),
            ("/no/such/depth.png", "does not exist"),
            (b"not a png", "Depth bytes are not an image file"),
            ([[1.0, 2.0], [3.0]], "Depth map 0: A depth map given as nested lists must have rows of equal length"),
            ([[1.0, None], [3.0, 4.0]], "Depth map 0: A depth map given as nested lists must hold only numbers"),
            (np.round(DEPTH * 1000).astype(int).tolist(), "Depth map 0: Depth of dtype int64 has no known unit"),
            ([[DEPTH.tolist()]], "Depth map 0 is a list: a depth map is an array, tensor"),
        ],
    )
    def test_bad_depth_is_a_clear_error(self, add_processor, depth, message):
        with pytest.raises((ValueError, TypeError, FileNotFoundError), match=message):
            depth_values(add_processor, depth)

    def test_a_flat_list_of_numbers_is_no_map(self):
        with pytest.raises(ValueError, match=r"^A depth map must be 2-D \(H, W\) or \(1, H, W\); got shape \(3,\)"):
            depth_to_meters([1.0, 2.0, 3.0])

    def test_depth_files_that_are_no_depth_say_what_they_are(self, add_processor, tmp_path):
        np.save(tmp_path / "objects.npy", np.array([{"depth": 1}], dtype=object), allow_pickle=True)
        (tmp_path / "notes.png").write_text("not an image")
        (tmp_path / "depth.npy").mkdir()
        with pytest.raises(IsADirectoryError, match=r"^Depth map 0: Depth path '.*depth\.npy' is a directory, not a"):
            depth_values(add_processor, str(tmp_path / "depth.npy"))
        with pytest.raises(ValueError, match=r"^Depth map 0: Depth file '.*objects\.npy' is not a readable \.npy"):
            depth_values(add_processor, tmp_path / "objects.npy")
        with pytest.raises(ValueError, match=r"^Depth map 0: Depth file '.*notes\.png' is not an image file \(exp"):
            depth_values(add_processor, tmp_path / "notes.png")

    def test_depth_both_as_argument_and_in_the_image_block_is_refused(self, add_processor):
        messages = chat("How far is it?")
        messages[0]["content"][0] = {"type": "image", "image": IMAGE, "depth": DEPTH}
        expected = (
            "Depth was given both as depth= and inside the image blocks of the messages: give each in one place, its "
            "image block ({'type': 'image', 'image': ..., 'depth': ...}) or depth=."
        )
        for given in ({"depth": [DEPTH]}, {"processor_kwargs": {"images_kwargs": {"depth": [DEPTH]}}}):
            with pytest.raises(ValueError) as error:
                add_processor.apply_chat_template(
                    messages, tokenize=True, return_dict=True, add_generation_prompt=True, **given
                )
            assert str(error.value) == expected

    def test_errors_name_the_map(self, add_processor):
        with pytest.raises(ValueError, match="Depth map 1: Depth has 14000 negative values"):
            make_inputs(add_processor, [[IMAGE], [IMAGE]], [[DEPTH], [-DEPTH]])

    def test_a_truncated_depth_png_names_the_file_and_the_map(self, add_processor, tmp_path):
        path = tmp_path / "broken_depth.png"
        Image.fromarray(np.round(DEPTH * 1000).astype(np.uint16)).save(path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        with pytest.raises(
            ValueError, match=r"Depth map 1: The depth image '.*broken_depth\.png' could not be decoded"
        ):
            make_inputs(add_processor, [[IMAGE], [IMAGE]], [[DEPTH], [str(path)]])
        with pytest.raises(ValueError, match=r"broken_depth\.png' could not be decoded"):
            depth_to_meters(Image.open(path))  # a lazily opened PIL image too

    def test_invalid_pixels_error_when_asked(self):
        depth = DEPTH.copy()
        depth[0, 0] = np.nan
        with pytest.raises(ValueError, match="1 invalid pixels"):
            depth_to_meters(depth, invalid_depth="error")

    def test_depth_count_must_match_image_count(self, add_processor):
        with pytest.raises(ValueError, match="2 depth maps for 1 images in sample 0"):
            make_inputs(add_processor, [[IMAGE]], [[DEPTH, DEPTH]])
        with pytest.raises(ValueError, match="3 depth maps for 2 images"):
            make_inputs(add_processor, [[IMAGE], [IMAGE]], [DEPTH, DEPTH, DEPTH])
        # Per-sample lists are matched sample by sample, not only in total.
        with pytest.raises(ValueError, match="1 depth maps for 2 images in sample 0"):
            make_inputs(add_processor, [[IMAGE, IMAGE], [IMAGE]], [[DEPTH], [DEPTH, DEPTH]])

    def test_depth_without_image(self, add_processor):
        with pytest.raises(ValueError, match="without images"):
            add_processor(text=["hello"], depth=[DEPTH])

    def test_depth_on_a_text_block_is_refused(self, add_processor):
        messages = chat("How far is it?")
        messages[0]["content"][0]["image"] = IMAGE
        messages[0]["content"][1]["depth"] = DEPTH
        with pytest.raises(ValueError, match="A 'text' block of a 'user' message has 'depth'"):
            add_processor.apply_chat_template(messages, tokenize=True, return_dict=True, add_generation_prompt=True)
        # A dataset that unifies block keys gives text blocks "depth": None, which is harmless.
        messages[0]["content"][1]["depth"] = None
        add_processor.apply_chat_template(messages, tokenize=True, return_dict=True, add_generation_prompt=True)

    def test_rgb_only_processor_refuses_depth(self, processors):
        with pytest.raises(ValueError, match="depth_fusion='none'"):
            make_inputs(processors["none"], [[IMAGE]], [[DEPTH]])

    def test_missing_estimator_folder(self, add_processor, tmp_path):
        processor = reconfigured(add_processor, depth_estimator=str(tmp_path / "no_such_model"))
        with pytest.raises(FileNotFoundError, match="is not a folder that exists"):
            make_inputs(processor, [[IMAGE]])


class TestModelHandshake:
    """The processor's outputs against the model's checks (the model side of the contract)."""

    def test_depth_without_image(self, depth_models):
        model, processor = depth_models["add"]
        inputs = make_inputs(processor, [[IMAGE]], [[DEPTH]])
        with pytest.raises(ValueError, match="depth_values were given without pixel_values"):
            model(
                input_ids=inputs["input_ids"],
                depth_values=inputs["depth_values"],
                image_grid_thw=inputs["image_grid_thw"],
            )

    def test_generate_refuses_depth_without_image_like_forward(self, depth_models):
        model, processor = depth_models["add"]
        inputs = make_inputs(processor, [[IMAGE]], [[DEPTH]])
        text = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
        for depth in ({"depth_values": inputs["depth_values"]}, {"image_has_depth": inputs["image_has_depth"]}):
            with pytest.raises(ValueError, match="^depth_values were given without pixel_values: depth is encoded"):
                model.generate(**text, **depth, image_grid_thw=inputs["image_grid_thw"], max_new_tokens=2)

    def test_concat_prompt_of_images_with_depth_but_no_depth_names_depth(self, depth_models):
        model, processor = depth_models["concat"]
        inputs = make_inputs(processor, [[IMAGE]], [[DEPTH]])
        without_depth = {key: value for key, value in inputs.items() if key not in ("depth_values", "image_has_depth")}
        for depth_inputs in ({**inputs, "image_has_depth": torch.tensor([False])}, without_depth):
            with pytest.raises(ValueError) as error:
                model(**depth_inputs)
            assert str(error.value).startswith(
                "Image features and image tokens do not match, tokens: 24, features: 12. With depth_fusion='concat' "
                "an image with depth has twice its image placeholders (its RGB tokens, then its depth tokens)"
            )
            assert "disagree on which images have depth" in str(error.value)

    def test_depth_on_the_wrong_grid(self, depth_models):
        model, processor = depth_models["add"]
        inputs = make_inputs(processor, [[IMAGE]], [[DEPTH]])
        inputs["depth_values"] = inputs["depth_values"][:-4]
        with pytest.raises(ValueError, match="depth_values has shape"):
            model(**inputs)

    @pytest.mark.parametrize("prompt_fusion, model_fusion", [("concat", "add"), ("add", "concat")])
    def test_prompt_of_another_fusion_mode_is_refused(self, depth_models, prompt_fusion, model_fusion):
        model, _ = depth_models[model_fusion]
        inputs = make_inputs(depth_models[prompt_fusion][1], [[IMAGE]], [[DEPTH]])
        with pytest.raises(ValueError, match="image tokens"):
            model(**inputs)

    def test_rgb_only_model_refuses_depth(self, depth_models):
        model, _ = depth_models["none"]
        inputs = make_inputs(depth_models["add"][1], [[IMAGE]], [[DEPTH]])
        with pytest.raises(ValueError, match="depth_fusion='none'"):
            model(**inputs)

    @pytest.mark.parametrize("fusion", DEPTH_MODES)
    def test_a_mixed_batch_runs(self, depth_models, fusion):
        model, processor = depth_models[fusion]
        outputs = model(**make_inputs(processor, [[IMAGE], [SQUARE]], [[DEPTH], None]))
        assert torch.isfinite(outputs.logits).all()


class TestEstimator:
    def test_images_without_depth_are_estimated(self, add_processor, estimator_folders):
        processor = reconfigured(add_processor, depth_estimator=str(estimator_folders["metric"]))
        images = [[IMAGE], [SQUARE]]
        estimated = make_inputs(processor, images, depth_estimator_device="cpu")
        assert processor.estimator().model.device.type == "cpu"
        # The same maps, estimated by hand and passed in, give identical model inputs.
        by_hand = processor.estimator()([IMAGE, SQUARE])
        assert [d.shape for d in by_hand] == [(100, 140), (84, 84)]
        given = make_inputs(add_processor, images, [[by_hand[0]], [by_hand[1]]])
        torch.testing.assert_close(estimated["depth_values"], given["depth_values"])
        assert estimated["image_has_depth"].tolist() == [True, True]
        assert (estimated["depth_values"] > 0).all()

    def test_only_missing_depth_is_estimated(self, add_processor, estimator_folders):
        processor = reconfigured(add_processor, depth_estimator=str(estimator_folders["metric"]))
        for depth in ([[DEPTH], [None]], [[DEPTH], None], [DEPTH, None]):
            mixed = make_inputs(processor, [[IMAGE], [SQUARE]], depth)
            sensor_only = make_inputs(add_processor, [[IMAGE]], [[DEPTH]])
            assert mixed["image_has_depth"].tolist() == [True, True]
            torch.testing.assert_close(mixed["depth_values"][:48], sensor_only["depth_values"])
            assert mixed["depth_values"].shape[0] == 48 + 36

    def test_a_later_device_moves_the_estimator(self, add_processor, estimator_folders):
        processor = reconfigured(add_processor, depth_estimator=str(estimator_folders["metric"]))
        assert processor.estimator("cpu").model.device.type == "cpu"
        # "meta" stands for a second device on a CPU-only machine: the loaded model must follow it.
        estimator = processor.estimator("meta")
        assert estimator is processor.estimator() and estimator.model.device.type == "meta"
        assert estimator.model.dtype == torch.float32
        # A different estimator configured later replaces the loaded one.
        processor.depth_estimator = str(estimator_folders["relative"])
        assert not processor.estimator("cpu").is_metric

    def test_relative_estimates_are_median_normalised(self, add_processor, estimator_folders):
        processor = reconfigured(add_processor, depth_estimator=str(estimator_folders["relative"]))
        estimator = processor.estimator()
        assert not estimator.is_metric
        depth = estimator([IMAGE])[0]
        assert np.median(depth[depth > 0]) == pytest.approx(1.0, rel=1e-3)

    def test_relative_estimates_are_read_at_the_relative_depth_median_metric_ones_as_they_are(
        self, add_processor, estimator_folders
    ):
        for kind in ("relative", "metric"):
            plain = reconfigured(add_processor, depth_estimator=str(estimator_folders[kind]))
            scaling = reconfigured(plain, relative_depth_median=4.0)
            estimate = plain.estimator("cpu")([IMAGE])[0]
            read = make_inputs(scaling, [[IMAGE]])["depth_values"]
            expected = estimate * (4.0 / np.median(estimate[estimate > 0])) if kind == "relative" else estimate
            torch.testing.assert_close(read, depth_values(add_processor, expected), rtol=1e-6, atol=0)

    def test_16_bit_images_are_not_estimated_as_white(self, add_processor, estimator_folders):
        estimator = reconfigured(add_processor, depth_estimator=str(estimator_folders["metric"])).estimator()
        ramp = np.linspace(0, 65535, 56 * 70).reshape(56, 70).astype(np.uint16)
        as_8_bit = Image.fromarray(np.rint(ramp / 257).astype(np.uint8)).convert("RGB")
        for image in (
            Image.fromarray(ramp),
            Image.fromarray(ramp.astype(">u2")),
            Image.fromarray(ramp.astype(np.int32)),
        ):
            assert image.mode in ("I;16", "I;16B", "I")
            torch.testing.assert_close(estimator.preprocess([image]), estimator.preprocess([as_8_bit]))

    def test_model_runs_on_estimated_depth(self, depth_models, estimator_folders):
        model, processor = depth_models["concat"]
        processor = reconfigured(processor, depth_estimator=str(estimator_folders["metric"]))
        outputs = model(**make_inputs(processor, [[IMAGE]]))
        assert torch.isfinite(outputs.logits).all()


class TestToRGBImage:
    RAMP = np.linspace(0, 65535, 6 * 8).reshape(6, 8)

    @pytest.mark.parametrize("dtype", [np.uint16, ">u2", np.int32])
    def test_16_bit_is_scaled_not_clipped(self, dtype):
        image = Image.fromarray(self.RAMP.astype(dtype))
        expected = np.rint(self.RAMP.astype(np.uint16) / 257).astype(np.uint8)
        np.testing.assert_array_equal(np.asarray(to_rgb_image(image)), np.repeat(expected[..., None], 3, -1))

    def test_float_is_stretched_over_its_finite_range(self):
        values = np.array([[0.5, 1.0, np.nan], [1.5, np.inf, 2.5]], dtype=np.float32)
        grey = np.asarray(to_rgb_image(Image.fromarray(values, mode="F")))[..., 0]
        assert grey.tolist() == [[0, 64, 0], [128, 255, 255]]  # NaN black, inf as bright as the brightest

    def test_an_i_image_of_8_bit_values_keeps_them(self):
        values = np.arange(48, dtype=np.int32).reshape(6, 8) * 5
        np.testing.assert_array_equal(np.asarray(to_rgb_image(Image.fromarray(values)))[..., 0], values)

    def test_transparency_is_white(self):
        rgba = np.zeros((2, 2, 4), np.uint8)
        rgba[..., 0], rgba[0, 0, 3] = 200, 255  # one opaque red pixel, three transparent ones
        rgb = np.asarray(to_rgb_image(Image.fromarray(rgba)))
        assert rgb[0, 0].tolist() == [200, 0, 0] and (rgb.reshape(-1, 3)[1:] == 255).all()
        grey, alpha = (Image.fromarray(np.array([values], np.uint8)) for values in ([10, 10], [0, 255]))
        grey_alpha = Image.merge("LA", [grey, alpha])
        assert np.asarray(to_rgb_image(grey_alpha))[0, :, 0].tolist() == [255, 10]

    @pytest.mark.parametrize("mode", ["RGB", "L", "1", "P", "CMYK", "YCbCr"])
    def test_other_modes_convert_as_pil_does(self, mode):
        image = IMAGE.convert(mode)
        np.testing.assert_array_equal(np.asarray(to_rgb_image(image)), np.asarray(image.convert("RGB")))
