"""Camera-aware depth: `intrinsics=` through the processor, and `depth_input="points"` models in every fusion mode."""

import json
import logging
import math

import numpy as np
import pytest
import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from configuration_depth import DEPTH_FUSION_MODES, DEPTH_FUSIONS, DEPTH_INPUTS, Qwen2_5_VLDepthConfig
from modeling_qwen2_5_vl_depth import (
    Qwen2_5_VLDepthForConditionalGeneration,
    default_intrinsics,
    encode_metric_depth,
    pixel_rays,
)
from processing_depth import Qwen2_5_VLDepthProcessor, parse_intrinsics, resized_intrinsics
from tests.conftest import make_inputs, random_depth, random_image, with_open_depth_path
from training.build_depth_model import build_depth_model
from training.build_depth_model import main as build_main


DEPTH_MODES = [name for name in DEPTH_FUSION_MODES if DEPTH_FUSIONS[name].has_depth]
IMAGES = [[random_image(100, 140, 0)], [random_image(140, 84, 1)]]
DEPTHS = [[random_depth(100, 140, 0)], [random_depth(140, 84, 1)]]
# One camera per image, in the pixels of the image as given (100x140 and 140x84).
K_FIRST = [[100.0, 0.0, 69.5], [0.0, 100.0, 49.5], [0.0, 0.0, 1.0]]
K_SECOND = (80.0, 80.0, 41.5, 69.5)


@pytest.fixture(scope="module")
def points_models(tiny_base):
    """(points model, depth model, processor) per depth fusion mode: the same weights except that the points model's
    first patch-embedding channels (x, y) exist; they start at zero (`init_from_rgb`)."""
    built = {}
    for fusion in DEPTH_MODES:
        torch.manual_seed(0)
        depth_model, processor = build_depth_model(tiny_base, depth_fusion=fusion)
        torch.manual_seed(0)
        points_model, _ = build_depth_model(tiny_base, depth_fusion=fusion, depth_input="points")
        copy_shared_weights(depth_model, points_model)
        built[fusion] = (points_model.eval(), depth_model.eval(), processor)
    return built


def patch_embed_of(model):
    inner = model.model
    return inner.depth_patch_embed if hasattr(inner, "depth_patch_embed") else inner.depth_encoder.patch_embed.proj


def copy_shared_weights(source, target):
    """Every weight of `source` into `target`; the depth patch embedding's single channel goes to the z channel and
    x, y are zero (a points model that is exactly the depth model)."""
    target_state = target.state_dict()
    with torch.no_grad():
        for name, tensor in source.state_dict().items():
            if target_state[name].shape == tensor.shape:
                target_state[name].copy_(tensor)
            else:
                target_state[name].zero_()
                target_state[name][:, -1:].copy_(tensor)


def open_xy(model, seed: int = 0):
    """A copy with the depth path open and random x, y kernels, so the points' lateral channels reach the logits."""
    model = with_open_depth_path(model, seed)
    embed = patch_embed_of(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        embed.weight[:, :2].copy_(torch.randn(embed.weight[:, :2].shape, generator=generator) * 0.5)
        if not embed.weight[:, -1].any():  # rgbd's zero-initialised channel: open z too
            embed.weight[:, -1].copy_(torch.randn(embed.weight[:, -1].shape, generator=generator) * 0.5)
    return model


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


class TestProcessorIntrinsics:
    def test_every_form_gives_the_same_rows_scaled_to_the_resized_image(self, points_models):
        _, _, processor = points_models["add"]
        as_matrix = make_inputs(processor, IMAGES, DEPTHS, intrinsics=[[K_FIRST], [K_SECOND]])
        as_flat_list = make_inputs(
            processor, IMAGES, DEPTHS, intrinsics=[(100.0, 100.0, 69.5, 49.5), np.array(K_SECOND)]
        )
        as_dicts = make_inputs(
            processor,
            IMAGES,
            DEPTHS,
            intrinsics=[
                {"fx": 100.0, "fy": 100.0, "cx": 69.5, "cy": 49.5},
                dict(zip(("fx", "fy", "cx", "cy"), K_SECOND)),
            ],
        )
        rows = as_matrix["depth_intrinsics"]
        torch.testing.assert_close(as_flat_list["depth_intrinsics"], rows, rtol=0, atol=0)
        torch.testing.assert_close(as_dicts["depth_intrinsics"], rows, rtol=0, atol=0)
        # 100x140 is resized to 84x112 (x 0.8 across, x 0.84 down); 140x84 keeps its size.
        grid_first, grid_second = as_matrix["image_grid_thw"].tolist()
        assert (grid_first[1] * 14, grid_first[2] * 14) == (84, 112) and (grid_second[1], grid_second[2]) == (10, 6)
        expected = [[80.0, 84.0, (69.5 + 0.5) * 0.8 - 0.5, (49.5 + 0.5) * 0.84 - 0.5], list(K_SECOND)]
        torch.testing.assert_close(rows, torch.tensor(expected), rtol=1e-6, atol=1e-5)

    def test_an_unknown_camera_is_a_nan_row_and_no_intrinsics_adds_no_key(self, points_models):
        _, _, processor = points_models["add"]
        inputs = make_inputs(processor, IMAGES, DEPTHS, intrinsics=[None, K_SECOND])
        assert (
            torch.isnan(inputs["depth_intrinsics"][0]).all() and not torch.isnan(inputs["depth_intrinsics"][1]).any()
        )
        assert "depth_intrinsics" not in make_inputs(processor, IMAGES, DEPTHS)
        # Rows only for the images with depth, like depth_values.
        partial = make_inputs(processor, IMAGES, [[None], DEPTHS[1]], intrinsics=[K_FIRST, K_SECOND])
        torch.testing.assert_close(partial["depth_intrinsics"], torch.tensor([K_SECOND]), rtol=0, atol=0)

    def test_chat_image_blocks_and_the_keyword_agree(self, points_models):
        _, _, processor = points_models["add"]
        image, depth = IMAGES[0][0], DEPTHS[0][0]
        block = {"type": "image", "image": image, "depth": depth, "intrinsics": K_FIRST}
        messages = [{"role": "user", "content": [block, {"type": "text", "text": "How wide is the cube?"}]}]
        from_blocks = processor.apply_chat_template(
            [messages], tokenize=True, return_dict=True, return_tensors="pt", add_generation_prompt=True
        )
        plain = [
            {"role": "user", "content": [{"type": "image", "image": image, "depth": depth}, messages[0]["content"][1]]}
        ]
        from_keyword = processor.apply_chat_template(
            [plain],
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            add_generation_prompt=True,
            intrinsics=[K_FIRST],
        )
        torch.testing.assert_close(from_blocks["depth_intrinsics"], from_keyword["depth_intrinsics"], rtol=0, atol=0)
        with pytest.raises(ValueError, match="Intrinsics were given both as intrinsics= and inside the image blocks"):
            processor.apply_chat_template(
                [messages], tokenize=True, return_dict=True, add_generation_prompt=True, intrinsics=[K_FIRST]
            )
        misplaced = [
            {
                "role": "user",
                "content": [{"type": "image", "image": image}, {"type": "text", "text": "?", "intrinsics": K_FIRST}],
            }
        ]
        with pytest.raises(ValueError, match="'text' block of a 'user' message has 'intrinsics'"):
            processor.apply_chat_template([misplaced], tokenize=True, return_dict=True)

    @pytest.mark.parametrize(
        ("intrinsics", "message"),
        [
            ([[[100.0, 2.0, 69.5], [0.0, 100.0, 49.5], [0.0, 0.0, 1.0]]], "not a pinhole camera matrix"),
            ([(-100.0, 100.0, 69.5, 49.5)], "positive focal lengths"),
            ([(100.0, 100.0, float("nan"), 49.5)], "finite values"),
            ([{"fx": 100.0, "fy": 100.0}], r"lack \['cx', 'cy'\]"),
            ([np.zeros(5)], "have shape"),
            ([K_FIRST, K_SECOND], "Got 2 intrinsics for 1 images"),
        ],
    )
    def test_bad_intrinsics_are_named(self, points_models, intrinsics, message):
        _, _, processor = points_models["add"]
        with pytest.raises(ValueError, match=message):
            make_inputs(processor, [IMAGES[0]], [DEPTHS[0]], intrinsics=intrinsics)

    def test_intrinsics_without_images_are_refused(self, points_models):
        _, _, processor = points_models["add"]
        with pytest.raises(ValueError, match="intrinsics were given without images"):
            processor(text=["hello"], intrinsics=[K_FIRST])

    def test_resizing_maps_pixel_centres(self):
        # A centred camera stays centred at any size: cx = (W - 1) / 2 before and after.
        fx, fy, cx, cy = resized_intrinsics((50.0, 50.0, 69.5, 49.5), (100, 140), (50, 70))
        assert (fx, fy, cx, cy) == (25.0, 25.0, 34.5, 24.5)
        assert parse_intrinsics(None) is None


class TestPointsModel:
    @pytest.mark.parametrize("fusion", DEPTH_MODES)
    def test_rgb_only_input_is_exactly_the_base(self, points_models, tiny_base, fusion):
        model, _, processor = points_models[fusion]
        base = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_base).eval()
        inputs = make_inputs(processor, IMAGES)
        torch.testing.assert_close(logits(model, inputs), logits(base, inputs), rtol=0, atol=0)

    @pytest.mark.parametrize("fusion", DEPTH_MODES)
    def test_with_its_fresh_xy_channels_it_is_exactly_the_depth_model(self, points_models, fusion):
        """`init_from_rgb` starts x and y at zero, so a fresh points model computes what the depth model does, with
        or without intrinsics: the two inputs differ only in what training can open."""
        points_model, depth_model, processor = points_models[fusion]
        points_model, depth_model = with_open_depth_path(points_model), with_open_depth_path(depth_model)
        if fusion == "rgbd":  # its depth channel starts at zero in both: open z alike
            generator = torch.Generator().manual_seed(1)
            z_kernel = torch.randn(depth_model.model.depth_patch_embed.weight.shape, generator=generator)
            with torch.no_grad():
                depth_model.model.depth_patch_embed.weight.copy_(z_kernel)
                points_model.model.depth_patch_embed.weight[:, -1:].copy_(z_kernel)
        inputs = make_inputs(processor, IMAGES, DEPTHS, intrinsics=[K_FIRST, K_SECOND])
        depth_inputs = {key: value for key, value in inputs.items() if key != "depth_intrinsics"}
        reference = logits(depth_model, depth_inputs)
        assert not torch.equal(reference, logits(depth_model, make_inputs(processor, IMAGES))), "depth is read"
        torch.testing.assert_close(logits(points_model, inputs), reference, rtol=0, atol=0)

    @pytest.mark.parametrize("fusion", DEPTH_MODES)
    def test_intrinsics_change_the_output_once_x_and_y_are_read(self, points_models, fusion):
        model = open_xy(points_models[fusion][0])
        processor = points_models[fusion][2]
        wide = make_inputs(processor, IMAGES, DEPTHS, intrinsics=[K_FIRST, K_SECOND])
        narrow_k = [[2 * K_FIRST[0][0], 0.0, 69.5], [0.0, 2 * K_FIRST[1][1], 49.5], [0.0, 0.0, 1.0]]
        narrow = make_inputs(processor, IMAGES, DEPTHS, intrinsics=[narrow_k, K_SECOND])
        assert (logits(model, wide) - logits(model, narrow)).abs().max() > 1e-3
        # The depth model ignores intrinsics altogether.
        depth_model = with_open_depth_path(points_models[fusion][1])
        torch.testing.assert_close(logits(depth_model, wide), logits(depth_model, narrow), rtol=0, atol=0)

    def test_scaling_the_image_depth_and_k_together_changes_no_depth_token(self, points_models):
        model = open_xy(points_models["add"][0])
        processor = points_models["add"][2]
        image, depth = random_image(112, 112, 3), random_depth(112, 112, 3)
        k = (90.0, 90.0, 55.5, 55.5)
        twice_image = image.resize((224, 224), resample=0)  # nearest: the processor resizes it back to 112
        twice_depth = np.repeat(np.repeat(depth, 2, axis=0), 2, axis=1)
        twice_k = (180.0, 180.0, (55.5 + 0.5) * 2 - 0.5, (55.5 + 0.5) * 2 - 0.5)
        small = make_inputs(processor, [[image]], [[depth]], intrinsics=[k])
        large = make_inputs(processor, [[twice_image]], [[twice_depth]], intrinsics=[twice_k])
        assert small["image_grid_thw"].tolist() == large["image_grid_thw"].tolist()
        torch.testing.assert_close(large["depth_values"], small["depth_values"], rtol=0, atol=0)
        torch.testing.assert_close(large["depth_intrinsics"], small["depth_intrinsics"], rtol=0, atol=0)

        def tokens(inputs):
            with torch.no_grad():
                return model.model.get_depth_features(
                    inputs["depth_values"], inputs["image_grid_thw"], depth_intrinsics=inputs["depth_intrinsics"]
                ).pooler_output[0]

        torch.testing.assert_close(tokens(large), tokens(small), rtol=0, atol=0)

    def test_missing_intrinsics_use_the_stated_default_camera_with_one_warning(
        self, points_models, caplog, monkeypatch
    ):
        model = open_xy(points_models["concat"][0])
        processor = points_models["concat"][2]
        grids = make_inputs(processor, IMAGES, DEPTHS)["image_grid_thw"].tolist()
        fov = model.config.default_horizontal_fov_degrees
        assert fov == 60.0
        stated = [default_intrinsics(h * 14, w * 14, fov) for _, h, w in grids]
        given = make_inputs(processor, IMAGES, DEPTHS, intrinsics=[None, None])
        explicit = make_inputs(processor, IMAGES, DEPTHS, intrinsics=[None, None])
        explicit["depth_intrinsics"] = torch.tensor(stated, dtype=torch.float32)
        monkeypatch.setattr(logging.getLogger("transformers"), "propagate", True)
        logging.Logger.warning_once.cache_clear()  # transformers' once-per-process cache
        with caplog.at_level(logging.WARNING):
            without = logits(model, make_inputs(processor, IMAGES, DEPTHS))
            unknown = logits(model, given)
        torch.testing.assert_close(without, logits(model, explicit), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(unknown, without, rtol=0, atol=0)
        warnings = [record for record in caplog.records if "without camera intrinsics" in record.getMessage()]
        assert len(warnings) == 1, "two calls without intrinsics warn once"
        assert "60.0 degree horizontal field of view" in warnings[0].getMessage()
        # A camera known for one image and not the other: each image gets its own.
        mixed = make_inputs(processor, IMAGES, DEPTHS, intrinsics=[None, K_SECOND])
        assert not torch.equal(logits(model, mixed), without)

    def test_points_are_the_depth_times_each_pixels_ray(self):
        """The rays follow the processor's patch order: a 1x2-token image (2x4 patches) with a known camera."""
        grid = torch.tensor([[1, 2, 4]])
        camera = torch.tensor([[10.0, 20.0, 27.5, 13.5]])
        rays = pixel_rays(grid, camera, patch_size=14, merge_size=2, default_horizontal_fov_degrees=60.0)
        assert rays.shape == (8, 2, 196)
        # Patch 0 is the top-left patch; patch 1 its right neighbour (same merge group); patch 2 the one below it.
        u = torch.arange(56.0)
        v = torch.arange(28.0)
        x_map = ((u - 27.5) / 10.0).expand(28, 56)
        y_map = ((v - 13.5) / 20.0)[:, None].expand(28, 56)
        for index, (top, left) in enumerate([(0, 0), (0, 14), (14, 0), (14, 14), (0, 28)]):
            torch.testing.assert_close(rays[index, 0], x_map[top : top + 14, left : left + 14].reshape(-1))
            torch.testing.assert_close(rays[index, 1], y_map[top : top + 14, left : left + 14].reshape(-1))

    def test_encoding_is_metric_signed_and_marks_invalid_pixels(self, points_models):
        model = points_models["add"][0]
        config = model.config
        depth = torch.tensor([[2.0, 2.0, 0.0, float("nan")] + [3.0] * 192])
        rays = torch.zeros(1, 2, 196)
        rays[0, 0, :4] = torch.tensor([0.5, -0.5, 0.5, 0.5])
        encoded = model.model.encode_depth(depth.expand(4, -1), torch.tensor([[1, 2, 2]]), None)
        assert encoded.shape == (4, 3 * 196)
        from modeling_qwen2_5_vl_depth import encode_metric_points

        points = encode_metric_points(depth, rays, config).view(3, 196)
        scale = math.asinh(config.depth_max_meters / config.depth_min_meters)
        assert points[0, 0].item() == pytest.approx(math.asinh(1.0 / config.depth_min_meters) / scale, rel=1e-6)
        assert points[0, 1].item() == pytest.approx(-points[0, 0].item(), rel=1e-6)  # signed
        assert (points[:, 2:4] == config.depth_invalid_value).all()  # 0 and NaN: invalid in x, y and z
        torch.testing.assert_close(points[2], encode_metric_depth(depth, config)[0])

    def test_bad_depth_intrinsics_shape_is_named(self, points_models):
        model, _, processor = points_models["add"]
        inputs = make_inputs(processor, IMAGES, DEPTHS, intrinsics=[K_FIRST, K_SECOND])
        inputs["depth_intrinsics"] = inputs["depth_intrinsics"][:1]
        with pytest.raises(ValueError, match=r"depth_intrinsics has shape \(1, 4\) but 2 image\(s\) have depth"):
            logits(model, inputs)

    def test_generate_carries_the_intrinsics(self, points_models):
        model = open_xy(points_models["add"][0])
        processor = points_models["add"][2]
        inputs = make_inputs(processor, IMAGES, DEPTHS, intrinsics=[K_FIRST, K_SECOND])
        generated = model.generate(**inputs, max_new_tokens=1, do_sample=False)
        next_token = logits(model, inputs)[:, -1].argmax(-1)
        assert generated[:, -1].tolist() == next_token.tolist()
        narrow = make_inputs(processor, IMAGES, DEPTHS, intrinsics=[[5 * v for v in K_SECOND], K_SECOND])
        scores_wide = model.generate(
            **inputs, max_new_tokens=1, do_sample=False, output_scores=True, return_dict_in_generate=True
        ).scores[0]
        scores_narrow = model.generate(
            **narrow, max_new_tokens=1, do_sample=False, output_scores=True, return_dict_in_generate=True
        ).scores[0]
        assert not torch.equal(scores_wide, scores_narrow)


class TestConfig:
    def test_depth_input_decides_the_channels(self, tiny_base):
        for name, entry in DEPTH_INPUTS.items():
            config = Qwen2_5_VLDepthConfig.from_pretrained(tiny_base, depth_input=name)
            assert (config.depth_input, config.depth_config.in_channels) == (name, entry.channels)

    def test_bad_settings_are_named(self, tiny_base):
        with pytest.raises(ValueError, match="Unknown depth_input 'xyz'"):
            Qwen2_5_VLDepthConfig.from_pretrained(tiny_base, depth_input="xyz")
        with pytest.raises(ValueError, match=r"default_horizontal_fov_degrees must lie in \(0, 180\)"):
            Qwen2_5_VLDepthConfig(default_horizontal_fov_degrees=180.0)
        with pytest.raises(ValueError, match="depth_input='points' gives the depth encoder 3 channel"):
            Qwen2_5_VLDepthConfig(depth_input="points", depth_config={"in_channels": 1})

    def test_the_cli_builds_a_points_folder_that_reloads(self, tiny_base, tmp_path):
        build_main(["--base", str(tiny_base), "--out", str(tmp_path / "points"), "--depth-input", "points"])
        model = Qwen2_5_VLDepthForConditionalGeneration.from_pretrained(tmp_path / "points").eval()
        assert model.config.depth_input == "points" and model.model.depth_encoder.config.in_channels == 3
        embed = model.model.depth_encoder.patch_embed.proj.weight
        assert not embed[:, :2].any() and embed[:, 2].any()  # x, y at zero; z from the RGB tower


class TestAlignmentWithPoints:
    def test_the_pair_collator_carries_each_worlds_camera(self, points_models, world_dir):
        from training.align import RGBDPairCollator
        from training.data_files import load_rows

        rows = load_rows(world_dir)
        processor = points_models["add"][2]
        batch = RGBDPairCollator(processor, image_size=56)([rows[0], rows[6]])  # 112-px scenes shown at 56 px
        cameras = [json.loads(rows[index]["scene"])["intrinsics"] for index in (0, 6)]
        expected = [
            resized_intrinsics(tuple(c[k] for k in ("fx", "fy", "cx", "cy")), (112, 112), (56, 56)) for c in cameras
        ]
        torch.testing.assert_close(batch["depth_intrinsics"], torch.tensor(expected), rtol=1e-6, atol=1e-5)
        assert cameras[0]["fx"] != cameras[1]["fx"], "two scenes with one field of view would not test the camera"

    def test_alignment_builds_and_exports_a_points_model(self, tiny_base, world_dir, tmp_path):
        from training.align import parse_args, train_alignment

        argv = [
            "--base", str(tiny_base), "--data", str(world_dir), "--out", str(tmp_path / "aligned"),
            "--image_size", "112", "--report_to", "none", "--disable_tqdm", "true", "--seed", "0",
            "--max_steps", "2", "--per_device_train_batch_size", "4", "--depth_input", "points",
            "--depth_probe", "false", "--eval_pairs", "4",
        ]  # fmt: skip
        result = train_alignment(*parse_args(argv))
        assert result.model.depth_encoder.config.in_channels == 3
        exported = Qwen2_5_VLDepthForConditionalGeneration.from_pretrained(tmp_path / "aligned")
        assert exported.config.depth_input == "points"
        assert exported.model.depth_encoder.patch_embed.proj.weight[:, :2].any(), "alignment trained x and y"
        # The trained points model's answer depends on the camera (its gate opened, as stage 2 opens it).
        exported = with_open_depth_path(exported.eval())
        processor = Qwen2_5_VLDepthProcessor.from_pretrained(tmp_path / "aligned")
        wide = make_inputs(processor, IMAGES, DEPTHS, intrinsics=[K_FIRST, K_SECOND])
        narrow = make_inputs(processor, IMAGES, DEPTHS, intrinsics=[[5 * v for v in K_SECOND], K_SECOND])
        assert (logits(exported, wide) - logits(exported, narrow)).abs().max() > 1e-4


def test_a_points_experiment_aligns_and_builds_points_models_in_their_own_folders(tmp_path, monkeypatch):
    from dataclasses import replace

    from tests.test_protocol import RecordedExperiment, value
    from training.experiment.presets import PRESETS

    preset = replace(
        PRESETS["cpu-fair"], parallel_runs=1, seeds=(0,), arms=("none", "add", "rgbd"), depth_input="points"
    )
    recorded = RecordedExperiment(monkeypatch, preset, tmp_path)
    recorded()
    align = recorded.args_of("align-dense-points-seed0")
    assert value(align, "--depth_input") == "points"
    assert value(recorded.args_of("sft-add-seed0"), "--aligned_depth_model") == str(
        tmp_path / "align/dense-points-seed0"
    )
    assert value(recorded.args_of("sft-rgbd-seed0"), "--depth_input") == "points"  # no encoder: built from the base
    assert "--depth_input" not in recorded.args_of("sft-none-seed0")


def test_the_lateral_probe_target_is_each_tokens_mean_camera_x():
    from training.align.probe import region_lateral_metres

    grid = torch.tensor([[1, 2, 2]])  # one merged token: 4 patches of 14x14
    camera = torch.tensor([[10.0, 10.0, 13.5, 13.5]])
    rays = pixel_rays(grid, camera, patch_size=14, merge_size=2, default_horizontal_fov_degrees=60.0)
    depth = torch.full((4, 196), 2.0)
    depth[0, :98] = 0.0  # invalid pixels do not count
    expected_x = (2.0 * rays[:, 0])[depth > 0].mean()
    torch.testing.assert_close(torch.from_numpy(region_lateral_metres(depth, rays, 2)), expected_x[None])


def test_the_probe_reads_lateral_position_when_the_pairs_carry_cameras(points_models, world_dir):
    from training.align import DepthAlignmentModel, RGBDPairCollator, select_pair_rows
    from training.align.probe import metric_depth_probe
    from training.data_files import load_rows
    from training.make_rgbd_pairs import RGBDPairs
    from training.trl_layout import first_depth

    rows = load_rows(world_dir)
    pairs = RGBDPairs(rows, select_pair_rows(rows))
    points_model, _, processor = points_models["add"]
    report = metric_depth_probe(
        DepthAlignmentModel.from_depth_model(points_model), pairs, RGBDPairCollator(processor, 112)
    )
    assert set(report) == {"depth", "rgb"} and all(-1.0 < report[name]["lateral_r2"] <= 1.0 for name in report)
    # Pairs without a camera (e.g. a sensor's): no lateral target, the depth probe alone.
    cameraless = [((row["images"][0]), first_depth(row)) for row in (rows[i] for i in select_pair_rows(rows))]
    report = metric_depth_probe(
        DepthAlignmentModel.from_depth_model(points_model), cameraless, RGBDPairCollator(processor, 112)
    )
    assert "lateral_r2" not in report["depth"] and "r2" in report["depth"]


def test_pairs_carry_their_camera_and_a_flip_mirrors_its_principal_point(world_dir):
    from training.align import select_pair_rows
    from training.data_files import load_rows
    from training.make_rgbd_pairs import RGBDPairs

    rows = load_rows(world_dir)
    indices = select_pair_rows(rows)
    plain = RGBDPairs(rows, indices)
    camera = json.loads(rows[indices[0]]["scene"])["intrinsics"]
    expected = tuple(camera[k] for k in ("fx", "fy", "cx", "cy"))
    assert plain[0].intrinsics == pytest.approx(expected)
    augmented = RGBDPairs(rows, indices, augment=True, max_rotation_degrees=0.0)
    flipped = [
        i
        for i in range(len(indices))
        if not np.array_equal(np.asarray(augmented[i].image), np.asarray(plain[i].image))
    ]
    assert flipped, "no pair was flipped: the test would not check the mirror"
    for i in flipped:
        fx, fy, cx, cy = plain[i].intrinsics
        assert augmented[i].intrinsics == pytest.approx((fx, fy, plain[i].image.width - 1 - cx, cy))
        np.testing.assert_array_equal(np.asarray(augmented[i].image), np.asarray(plain[i].image)[:, ::-1])


class TestEvaluationCarriesTheCamera:
    """`training.evaluate` gives a `points` model each question's camera, as training does from the same image block;
    before, evaluation left it out and every camera became the default 60-degree one."""

    def test_world_samples_carry_the_camera_of_their_image_block(self, world_dir):
        from training.benchmarks import read_benchmark
        from training.data_files import load_rows

        samples = read_benchmark("world", world_dir).samples
        rows = load_rows(world_dir)
        assert len(samples) == len(rows)
        for sample, row in zip(samples, rows):
            block = next(b for m in row["messages"] for b in m["content"] if b["type"] == "image")
            assert sample.intrinsics == tuple(block["intrinsics"])
        assert len({sample.intrinsics[0] for sample in samples}) > 1  # the world's cameras differ in focal length

    def test_the_processor_gets_each_questions_camera(self, points_models, world_dir, monkeypatch):
        from training import evaluate
        from training.benchmarks import read_benchmark

        model, _, processor = points_models["add"]
        samples = read_benchmark("world", world_dir).samples[:4]
        calls = []
        original = type(processor).__call__

        def spy(self, *args, **kwargs):
            calls.append(kwargs.get("intrinsics"))
            return original(self, *args, **kwargs)

        monkeypatch.setattr(type(processor), "__call__", spy)
        evaluate.answer_samples(model, processor, samples, batch_size=2, max_new_tokens=1, progress=False)
        assert calls == [[[s.intrinsics] for s in samples[:2]], [[s.intrinsics] for s in samples[2:]]]

    def test_another_scenes_depth_comes_with_that_scenes_camera(self, world_dir):
        from training.benchmarks import read_benchmark
        from training.controls import override_depth

        samples = read_benchmark("world", world_dir).samples
        shuffled = override_depth(samples, "shuffled", seed=0)
        camera_of_depth = {id(s.depth): s.intrinsics for s in samples}
        for original, moved in zip(samples, shuffled):
            assert moved.depth is not original.depth
            assert moved.intrinsics == camera_of_depth[id(moved.depth)]
        # Not the question's own camera: the donor is another scene, whose camera differs.
        assert all(a.intrinsics != b.intrinsics for a, b in zip(samples, shuffled))
