"""Shared fixtures: a tiny plain Qwen2.5-VL folder built offline, a small rendered world, and depth models made from it."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from configuration_depth import DEPTH_FUSION_MODES
from training import make_world
from training.build_depth_model import build_depth_model
from training.tiny import save_tiny_base


@pytest.fixture(scope="session", autouse=True)
def fp32_auto_precision():
    """`make_rgbd_pairs --dtype auto` as on a CPU without bf16 dot products, whatever CPU runs the tests: depth is
    estimated in fp32 unless a test asks for bf16 (the rule itself is tested both ways in test_rgbd_pairs)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("training.make_rgbd_pairs.cli.cpu_has_native_bf16", lambda: False)
        yield


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """A plain Qwen2.5-VL folder (tiny, random weights) — what a user downloads, only small."""
    return save_tiny_base(tmp_path_factory.mktemp("tiny_base"))


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory) -> Path:
    """8 rendered scenes x 6 questions = 48 rows at 112x112, written exactly as `training.make_world` writes them."""
    folder = tmp_path_factory.mktemp("world")
    config = make_world.WorldConfig(split="train", num_scenes=8, seed=0, size=112, questions_per_scene=6, shard_size=8)
    make_world.write_dataset(config, folder, progress=False)
    return folder


@pytest.fixture(scope="session")
def open_add_folder(tiny_base, tmp_path_factory):
    """A tiny `add` model folder whose depth path is open (gate 0.5), so depth changes its answers and its image
    tokens carry depth."""
    torch.manual_seed(0)
    model, processor = build_depth_model(tiny_base, depth_fusion="add")
    with torch.no_grad():
        model.model.depth_gate.gate.fill_(0.5)
    folder = tmp_path_factory.mktemp("open_add")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def depth_models(tiny_base):
    """One (model, processor) per fusion mode of the fusion table, built from the base folder, in eval mode."""
    built = {}
    for fusion in DEPTH_FUSION_MODES:
        torch.manual_seed(0)
        model, processor = build_depth_model(tiny_base, depth_fusion=fusion)
        built[fusion] = (model.eval(), processor)
    return built


def with_open_depth_path(model, seed: int = 0):
    """A copy of a depth model whose zero-initialised depth modules are open (the `add` gate, the `adapter`
    up-projections), so depth changes its outputs."""
    model = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if model.config.fusion.has_gate:
            model.model.depth_gate.gate.fill_(1.0)
        for adapter in getattr(getattr(model.model, "depth_adapters", None), "adapters", ()):
            adapter.up.weight.copy_(torch.randn(adapter.up.weight.shape, generator=generator) * 0.5)
    return model


def random_image(height: int, width: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def random_depth(height: int, width: int, seed: int) -> np.ndarray:
    """Metric depth in metres: a smooth ramp (like a floor) plus noise, all valid."""
    rng = np.random.default_rng(seed + 1000)
    ramp = np.linspace(0.5, 8.0, height, dtype=np.float32)[:, None]
    return (ramp + rng.uniform(0, 0.5, (height, width))).astype(np.float32)


def chat(question: str, num_images: int = 1) -> list[dict]:
    content = [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": question}]
    return [{"role": "user", "content": content}]


def make_inputs(
    processor, images, depth=None, question="How far is the red cube from the camera?", **processor_kwargs
):
    """Processor inputs for one prompt per image list; `images` is a list of lists (one list per sample)."""
    prompts = [
        processor.apply_chat_template(chat(question, len(sample)), add_generation_prompt=True) for sample in images
    ]
    if depth is not None:
        processor_kwargs["depth"] = depth
    return processor(images=images, text=prompts, return_tensors="pt", padding=True, **processor_kwargs)


def reconfigured(processor, **settings):
    """The same image processor, tokenizer and chat template with other depth settings."""
    current = {
        "depth_fusion": processor.depth_fusion,
        "depth_estimator": processor.depth_estimator,
        "invalid_depth": processor.invalid_depth,
        "fill_depth_holes": processor.fill_depth_holes,
        "relative_depth_median": processor.relative_depth_median,
    }
    return type(processor)(
        processor.image_processor,
        processor.tokenizer,
        chat_template=processor.chat_template,
        **{**current, **settings},
    )


@pytest.fixture(scope="session")
def world_12(tmp_path_factory) -> Path:
    """12 rendered test questions (2 scenes x 6) at 112x112, with exact metric depth and cameras."""
    folder = tmp_path_factory.mktemp("world_12")
    make_world.write_dataset(make_world.WorldConfig("test", 2, 0, 112, 6, 2), folder, progress=False)
    return folder


@pytest.fixture(scope="session")
def random_add_model(tiny_base):
    """A tiny `add` model in eval mode with its processor, the depth gate at 0.5 so depth moves every output."""
    torch.manual_seed(0)
    model, processor = build_depth_model(tiny_base, depth_fusion="add")
    with torch.no_grad():
        model.model.depth_gate.gate.fill_(0.5)
    return model.eval(), processor
