"""Property test of the processor's depth input: any shape, dtype, container (masked arrays and nested lists among
them) and special value gives either a clear error or `depth_values` rows for exactly the patches of the images that
have depth, aligned with their pixels."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from processing_depth import Qwen2_5_VLDepthProcessor
from tests.conftest import chat, random_image


# Two images of different aspect ratios (3:4 and 1:1); depth must have the same aspect ratio as its image.
IMAGES = [random_image(42, 56, 0), random_image(56, 56, 1)]
COVERING_SHAPES = {
    0: [(42, 56), (3, 4), (6, 8), (21, 28), (84, 112), (1, 42, 56)],
    1: [(56, 56), (1, 1), (7, 7), (13, 13), (112, 112), (1, 7, 7)],
}
OTHER_SHAPES = {0: [(1, 1), (7, 5), (0, 4), (3, 0), (2, 3, 4)], 1: [(3, 4), (0, 0), (5,), (2, 56, 56)]}
MEASUREMENT_DTYPES = ["float16", "float32", "float64", "<u2", ">u2"]
OTHER_DTYPES = ["uint8", "int32", "bool"]
CONTAINERS = ["ndarray", "tensor", "PIL", "masked", "nested list"]
SPECIAL_VALUES = [np.nan, np.inf, -np.inf, -1.0, 0.0, 1e30, 1e300]


@pytest.fixture(scope="module")
def processor(tiny_base):
    return Qwen2_5_VLDepthProcessor.from_pretrained(tiny_base, depth_fusion="add")


@st.composite
def depth_maps(draw, image_index: int):
    """(a depth map or None, the expected error keyword or None for a valid map)."""
    if draw(st.integers(0, 3)) == 3:  # an image without depth
        return None, None
    # Half of the draws from the well-formed choices only, so that valid maps (and pairs of them) are common.
    shape = draw(st.sampled_from(COVERING_SHAPES[image_index]) | st.sampled_from(OTHER_SHAPES[image_index]))
    dtype = draw(st.sampled_from(MEASUREMENT_DTYPES) | st.sampled_from(MEASUREMENT_DTYPES + OTHER_DTYPES))
    seed = draw(st.integers(0, 2**16))
    values = np.random.default_rng(seed).uniform(0.1, 60.0, shape)
    for value in draw(st.lists(st.sampled_from(SPECIAL_VALUES), max_size=3)):
        if values.size:
            values.flat[draw(st.integers(0, values.size - 1))] = value
    finite = np.nan_to_num(values, nan=0, posinf=0, neginf=0)
    if dtype in ("<u2", ">u2"):  # millimetres
        array = (finite * 1000).clip(0, 65535).astype(dtype)
    elif dtype == "uint8":
        array = finite.clip(0, 255).astype(dtype)
    elif dtype == "int32":
        array = finite.clip(-1e9, 1e9).astype(dtype)
    elif dtype == "bool":
        array = values > 1
    else:
        with np.errstate(over="ignore"):
            array = values.astype(dtype)
    container = draw(st.sampled_from(CONTAINERS))
    if container == "masked":  # masked pixels are no readings, whatever they hold (even negative)
        mask = np.random.default_rng(seed + 1).random(array.shape) < 0.3
        masked = np.ma.masked_array(array, mask=mask)
        return masked, expected_error(masked.filled(0), image_index, from_pil=False)
    if container == "nested list" and array.ndim == 2 and array.size:  # rows of Python numbers: read as an array
        return array.tolist(), expected_error(np.asarray(array.tolist()), image_index, from_pil=False)
    pil_mode = {"float32": "F", "<u2": "I;16", ">u2": "I;16B", "uint8": "L"}.get(dtype)
    if container == "tensor" and array.dtype.byteorder != ">":
        depth = torch.from_numpy(array.copy())
    elif container == "PIL" and pil_mode and array.ndim == 2 and array.size:
        depth = Image.fromarray(array)
        assert depth.mode == pil_mode
    else:
        depth = array
    return depth, expected_error(array, image_index, from_pil=isinstance(depth, Image.Image))


def expected_error(array: np.ndarray, image_index: int, from_pil: bool) -> str | None:
    """The problem an error must name for this map (checked in this order), or None when the map is valid."""
    squeezed = array[0] if array.ndim == 3 and array.shape[0] == 1 else array
    if from_pil and array.dtype == np.uint8:
        return "is a picture, not a measurement"
    if squeezed.ndim != 2:
        return "must be 2-D"
    if squeezed.size == 0:
        return "must not be empty"
    if array.dtype == np.uint8:
        return "uint8"
    if array.dtype.kind not in "uf" or (array.dtype.kind == "u" and array.dtype.itemsize != 2):
        return f"dtype {array.dtype} has no known unit"
    if array.dtype.kind == "f" and np.any(np.isfinite(array) & (array < 0)):  # -inf is invalid, like +inf
        return "negative values"
    image_height, image_width = IMAGES[image_index].height, IMAGES[image_index].width
    height, width = squeezed.shape
    image_aspect = image_width / image_height
    if (height, width) != (image_height, image_width) and abs(width / height - image_aspect) / image_aspect > 0.01:
        return "must cover its image"
    return None


def wrap(maps: list, layout: str):
    """The two maps in one of the containers `depth=` takes."""
    if layout == "flat list":
        return list(maps)
    if layout == "flat tuple":
        return tuple(maps)
    if layout == "per sample":
        return [[maps[0]], [maps[1]]]
    if layout == "per sample, tuples":
        return ((maps[0],), (maps[1],))
    # One list per sample, with a bare map or None standing in for a sample's list.
    return [maps[0], [maps[1]]]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    first=depth_maps(0),
    second=depth_maps(1),
    layout=st.sampled_from(["flat list", "flat tuple", "per sample", "per sample, tuples", "bare in per sample"]),
)
def test_depth_input_gives_a_clear_error_or_rows_for_exactly_the_images_with_depth(processor, first, second, layout):
    (first_map, first_error), (second_map, second_error) = first, second
    prompts = [processor.apply_chat_template(chat("How far?"), add_generation_prompt=True)] * 2
    images = [[IMAGES[0]], [IMAGES[1]]]
    expected = next(((index, error) for index, error in enumerate([first_error, second_error]) if error), None)
    depth = wrap([first_map, second_map], layout)
    if expected is not None:
        index, keyword = expected
        event(f"error: {keyword}")
        with pytest.raises((ValueError, TypeError)) as error:
            processor(images=images, text=prompts, depth=depth, return_tensors="pt", padding=True)
        assert f"Depth map {index}" in str(error.value) and keyword in str(error.value)
        return

    inputs = processor(images=images, text=prompts, depth=depth, return_tensors="pt", padding=True)
    has_depth = [first_map is not None, second_map is not None]
    event(f"rows for images with depth {has_depth}")
    if not any(has_depth):
        assert "depth_values" not in inputs and "image_has_depth" not in inputs
        return
    assert inputs["image_has_depth"].tolist() == has_depth
    patches = inputs["image_grid_thw"].prod(-1).tolist()
    pixel_rows = list(torch.split(inputs["pixel_values"], patches))
    depth_rows = list(torch.split(inputs["depth_values"], [n for n, has in zip(patches, has_depth) if has]))
    assert inputs["depth_values"].shape == (sum(n for n, has in zip(patches, has_depth) if has), 14 * 14)
    assert inputs["depth_values"].dtype == torch.float32
    assert torch.isfinite(inputs["depth_values"]).all() and (inputs["depth_values"] >= 0).all()
    # Aligned one to one with the pixels of the same image: each image alone gives the same pixels and depth.
    for index, depth_map in enumerate([first_map, second_map]):
        if depth_map is None:
            continue
        alone = processor(images=[images[index]], text=prompts[:1], depth=[depth_map], return_tensors="pt")
        assert torch.equal(alone["pixel_values"], pixel_rows[index])
        assert torch.equal(alone["depth_values"], depth_rows.pop(0))


# ---- hole filling ---------------------------------------------------------------------------------------------------
def chebyshev_distance_to_valid(depth: np.ndarray) -> np.ndarray:
    """Brute force: each pixel's Chebyshev distance to the nearest valid (> 0) pixel (inf on a map without one)."""
    rows, cols = np.nonzero(depth > 0)
    if rows.size == 0:
        return np.full(depth.shape, np.inf)
    y, x = np.mgrid[0 : depth.shape[0], 0 : depth.shape[1]]
    return np.maximum(np.abs(y[..., None] - rows), np.abs(x[..., None] - cols)).min(-1).astype(float)


@settings(max_examples=200, deadline=None)
@given(
    height=st.integers(1, 9),
    width=st.integers(1, 9),
    passes=st.integers(0, 4),
    seed=st.integers(0, 2**16),
    hole_share=st.floats(0, 1),
)
def test_filling_reaches_exactly_passes_rings_with_measured_values(height, width, passes, seed, hole_share):
    from processing_depth import fill_depth_holes

    rng = np.random.default_rng(seed)
    depth = rng.choice(np.array([0.7, 1.5, 2.0, 9.0], dtype=np.float32), size=(height, width))
    depth[rng.random((height, width)) < hole_share] = 0
    filled = fill_depth_holes(depth, passes)
    valid = depth > 0
    # Valid pixels keep their reading; a hole is filled exactly when a valid pixel lies within `passes` rings.
    np.testing.assert_array_equal(filled[valid], depth[valid])
    np.testing.assert_array_equal(filled > 0, chebyshev_distance_to_valid(depth) <= passes)
    # Every filled value is one of the map's own readings: nothing invented between two surfaces.
    assert np.isin(filled[filled > 0], depth[valid]).all()


def test_a_hole_takes_the_lower_median_of_its_valid_neighbours():
    from processing_depth import fill_depth_holes

    depth = np.array([[1.0, 2.0, 3.0], [4.0, 0.0, 5.0], [0.0, 6.0, 0.0]], dtype=np.float32)
    filled = fill_depth_holes(depth, 1)
    # Centre: neighbours 1, 2, 3, 4, 5, 6 (three are the holes or the border): the lower median is 3.
    assert filled[1, 1] == 3.0
    # Bottom-left: valid neighbours 4, 6 (the centre was a hole when the pass began): lower median 4.
    assert filled[2, 0] == 4.0
    # Bottom-right: valid neighbours 5, 6: lower median 5.
    assert filled[2, 2] == 5.0
    np.testing.assert_array_equal(fill_depth_holes(depth, 0), depth)
    with pytest.raises(ValueError, match="number of passes >= 0"):
        fill_depth_holes(depth, -1)
