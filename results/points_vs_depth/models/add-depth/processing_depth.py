"""Processor of Qwen2.5-VL-Depth: the Qwen2.5-VL image processor and tokenizer, plus metric depth maps.

Depth per image comes from the caller (`depth=`: metres as float arrays or tensors, millimetres as 16-bit PNGs or
PIL `I;16` images, metres as PIL `F`) or, when none is given, from a configured monocular estimator
(`DepthAnythingForDepthEstimation`, default `depth-anything/Depth-Anything-V2-Small-hf`). Each depth map is resized
to exactly its RGB image's resized size and patchified in the same patch order as `pixel_values`, so depth token `i`
covers the same pixels as image token `i`. Images may go without depth, each on its own: `image_has_depth` says which.

It needs no torchvision: it handles images only (no video processor), which is all Qwen2.5-VL needs torchvision for.
This file is remote code: it imports only `torch`, `transformers` and their own dependencies (numpy, PIL).
"""

import io
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from transformers import AttentionInterface
from transformers.image_utils import get_image_size, make_flat_list_of_images, to_numpy_array
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorKwargs
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin
from transformers.utils import CONFIG_NAME, cached_file, logging


try:  # loaded as remote code: a module of a package built from the model folder
    from .configuration_depth import DEFAULT_DEPTH_FUSION, DEPTH_FUSION_MODES, DEPTH_FUSIONS
except ImportError:  # imported from a checkout, where the three remote-code files are top-level modules
    from configuration_depth import DEFAULT_DEPTH_FUSION, DEPTH_FUSION_MODES, DEPTH_FUSIONS


logger = logging.get_logger(__name__)

DEFAULT_DEPTH_ESTIMATOR = "depth-anything/Depth-Anything-V2-Small-hf"
INVALID_DEPTH_POLICIES = ("mask", "error")
# Aspect ratios closer than this are the same camera: such depth is resized to its image (e.g. low-res sensor depth).
ASPECT_RATIO_TOLERANCE = 0.01
# One depth map; lists and tuples around them are containers (one entry per image, or per sample).
# What one depth map may be; `bytes` is an encoded image file (a 16-bit PNG in millimetres), which is how datasets
# carry depth inside the image blocks of chat messages (see `training/trl_layout.py`).
DEPTH_MAP_TYPES = (np.ndarray, torch.Tensor, Image.Image, str, Path, bytes, bytearray)
# `from_pretrained` arguments that locate a file of the folder or hub repository.
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")


class DepthImagesKwargs(Qwen2VLImageProcessorKwargs, total=False):
    r"""
    depth (`np.ndarray`, `torch.Tensor`, `PIL.Image`, path, or a (nested) list of them, *optional*):
        One depth map per image, in the images' order: a flat list, or one list per sample like `images`. `None` is an
        image (or, in place of a sample's list, a sample) without depth; it is estimated when a depth estimator is
        configured. A bare map is one map, also in place of a sample's list; so are rows of Python numbers. Floats are
        metres; `uint16` arrays (either byte order), 16-bit PNG files and PIL `I;16`/`I` images are millimetres; PIL
        `F` images are metres; a `.npy` file is its array. Masked pixels of a `numpy.ma.MaskedArray` are invalid.
    depth_estimator_device (`str` or `torch.device`, *optional*):
        Where the monocular estimator runs; pass the model's device. Defaults to CUDA when available.
    intrinsics (a 3x3 `K`, `(fx, fy, cx, cy)`, a `{"fx", "fy", "cx", "cy"}` dict, or a (nested) list of them, *optional*):
        Camera intrinsics per image, laid out like `depth` (a flat list, or one list per sample; `None` for an unknown
        camera), in the pixels of the image as given, pixel centres at integer coordinates (OpenCV's convention:
        `cx = (W - 1) / 2` for a centred camera). They follow the image through resizing (`depth_intrinsics`), and a
        `depth_input="points"` model uses them to place each depth pixel in 3D.
    depth_is_relative (`bool`, *optional*, defaults to `False`):
        The given depth maps are relative, right up to one unknown scale per map (a relative estimator's depth, e.g.
        divided by its median): each is rescaled so that its median pixel reads the processor's
        `relative_depth_median` metres. An error when the processor has none.
    """

    depth: Any
    depth_estimator_device: Any
    intrinsics: Any
    depth_is_relative: bool


class Qwen2_5_VLDepthProcessorKwargs(ProcessingKwargs, total=False):
    images_kwargs: DepthImagesKwargs
    _defaults = {"text_kwargs": {"padding": False}}


def _is_path_like(value: Any) -> bool:
    return isinstance(value, (str, Path))


def _is_map_as_nested_list(value: Any) -> bool:
    """Whether `value` is one depth map written as Python lists: rows of numbers (`[[1.2, 0.8], ...]`), or one row.

    Lists of anything else (maps, None, lists of maps) are containers: one entry per image, or one list per sample.
    """
    if not isinstance(value, (list, tuple)) or not value:
        return False
    first = value[0]
    if isinstance(first, (list, tuple)):
        return bool(first) and isinstance(first[0], (int, float, np.number))
    return isinstance(first, (int, float, np.number))


def to_rgb_image(image: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB showing what its values mean, where PIL's own `convert("RGB")` would not.

    16-bit images (`I;16*`, and `I` holding values over 255) are scaled to 8 bits (65535 -> 255, i.e. divided by 257):
    `convert("RGB")` clips them, turning most of them white. Float images (`F`) are stretched over their finite range.
    Transparency (`RGBA`, `LA`, `PA`, `P` with a transparent colour) is composited on white: dropping alpha would show
    whatever colour transparent pixels happen to hold. `L`, `1`, `P`, `CMYK`, `YCbCr`, `LAB`, `HSV` convert as PIL does.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    if mode.startswith("I") or mode == "F":
        values = np.asarray(image, dtype=np.float64)
        finite = values[np.isfinite(values)]
        if mode == "F":
            low, high = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
            values = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
        elif mode.startswith("I;16") or (finite.size and finite.max() > 255):
            values = values / 257.0
        grey = np.clip(np.rint(np.nan_to_num(values)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as error:
        raise ValueError(f"A PIL image of mode {mode!r} cannot be converted to RGB: {error}") from error


def _load_depth_image(depth: Image.Image, source: str) -> None:
    """Decode a lazily opened PIL image now, so a damaged file is an error that names it."""
    try:
        depth.load()
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ValueError(f"The depth image {source} could not be decoded (truncated or damaged?): {error}") from error


def scale_relative_depth(depth: np.ndarray, median: float) -> np.ndarray:
    """A relative depth map (right up to one scale) scaled so that the median of its valid pixels reads `median`
    metres; invalid (0) pixels stay 0, and a map without a valid pixel is returned as it is."""
    valid = depth > 0
    if not valid.any():
        return depth
    return np.where(valid, depth * (median / float(np.median(depth[valid]))), 0).astype(np.float32)


def fill_depth_holes(depth: np.ndarray, passes: int) -> np.ndarray:
    """Sensor holes in metric depth (0 = invalid) filled from their neighbours, `passes` rings deep.

    Each pass gives every invalid pixel that has a valid 8-neighbour the lower median of those neighbours' depths: a
    real measurement of the surface beside it (never a depth between a foreground edge and the background behind it),
    from the side most of its neighbours are on. Isolated dropouts (random holes) are gone after one pass; a hole
    region `2 * passes` pixels wide closes; larger invalid regions (sky, a window, a hole bigger than that) shrink by
    `passes` pixels and stay invalid. `passes=0` returns `depth` unchanged.
    """
    if passes < 0:
        raise ValueError(f"fill_depth_holes must be a number of passes >= 0; got {passes}.")
    filled = np.asarray(depth, dtype=np.float32)
    for _ in range(passes):
        invalid = ~(filled > 0)
        if not invalid.any():
            break
        padded = np.pad(filled, 1)  # the padding is invalid (0): no neighbour beyond the border
        height, width = filled.shape
        neighbours = np.stack(
            [
                padded[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]
                for dy in (-1, 0, 1)
                for dx in (-1, 0, 1)
                if (dy, dx) != (0, 0)
            ],
            axis=-1,
        )[invalid]  # (num_invalid, 8)
        count = (neighbours > 0).sum(-1)
        fillable = count > 0
        if not fillable.any():
            break
        ordered = np.sort(np.where(neighbours > 0, neighbours, np.inf), axis=-1)[fillable]  # the valid ones first
        lower_median = np.take_along_axis(ordered, ((count[fillable] - 1) // 2)[:, None], axis=-1)[:, 0]
        values = np.zeros(int(invalid.sum()), dtype=np.float32)
        values[fillable] = lower_median
        filled = filled.copy()
        filled[invalid] = values  # the unfillable stay 0
    return filled


def depth_to_meters(depth: Any, invalid_depth: str = "mask") -> np.ndarray:
    """One depth map as float32 metres, shape (H, W), with invalid pixels set to 0.

    Units follow the type: floats are metres; 16-bit unsigned integers (arrays of either byte order, 16-bit PNGs, PIL
    `I;16`, PIL `I`, and those PNGs' encoded bytes) are millimetres; a `.npy` file holds an array, read by the same
    rules. A nested Python list of numbers (rows) is read as an array. Pixels that are 0, NaN, +-inf or masked (a
    `numpy.ma.MaskedArray`'s mask) are invalid (sensor holes, sky): with `invalid_depth="mask"` they become 0, which the
    model encodes as "no measurement"; with `"error"` they raise. Negative depth always raises: it is not a distance.
    """
    if isinstance(depth, (bytes, bytearray)):
        try:
            image = Image.open(io.BytesIO(depth))
        except OSError as error:
            message = f"Depth bytes are not an image file (expected a 16-bit PNG in millimetres): {error}"
            raise ValueError(message) from error
        with image:
            _load_depth_image(image, "(encoded bytes)")
            return depth_to_meters(image, invalid_depth)
    if _is_path_like(depth):
        path = Path(depth)
        if path.is_dir():
            raise IsADirectoryError(f"Depth path {str(depth)!r} is a directory, not a depth file.")
        if not path.is_file():
            raise FileNotFoundError(f"Depth file {str(depth)!r} does not exist.")
        if path.suffix.lower() == ".npy":
            try:
                array = np.load(path, allow_pickle=False)
            except (ValueError, EOFError, OSError) as error:  # pickled objects, a truncated or foreign file
                raise ValueError(f"Depth file {str(depth)!r} is not a readable .npy array: {error}") from error
            return depth_to_meters(array, invalid_depth)
        try:
            image = Image.open(path)
        except UnidentifiedImageError as error:
            raise ValueError(
                f"Depth file {str(depth)!r} is not an image file (expected a 16-bit PNG in millimetres, or a .npy "
                "array in metres)."
            ) from error
        with image:
            _load_depth_image(image, repr(str(depth)))
            return depth_to_meters(image, invalid_depth)
    if isinstance(depth, (list, tuple)):
        try:
            array = np.asarray(depth)
        except ValueError as error:  # rows of different lengths
            raise ValueError(f"A depth map given as nested lists must have rows of equal length: {error}") from error
        if array.dtype.kind not in "biuf":
            raise TypeError(
                f"A depth map given as nested lists must hold only numbers (NaN for no measurement); got {array.dtype}."
            )
        depth = array
    if isinstance(depth, Image.Image):
        _load_depth_image(depth, repr(getattr(depth, "filename", "") or f"(PIL mode {depth.mode})"))
        if depth.mode.startswith("I;16") or depth.mode == "F":
            depth = np.asarray(depth)
        elif depth.mode == "I":  # how PIL opens most 16-bit PNGs: int32 holding millimetres
            depth = np.asarray(depth)
            if depth.size and (depth.min() < 0 or depth.max() > np.iinfo(np.uint16).max):
                raise ValueError(
                    "A PIL 'I' depth image is read as 16-bit millimetres, but its values exceed 0..65535."
                )
            depth = depth.astype(np.uint16)
        else:
            raise ValueError(
                f"A PIL depth image of mode {depth.mode!r} is a picture, not a measurement: pass metres as a float "
                "array or PIL 'F' image, or millimetres as a 16-bit PNG / PIL 'I;16' image."
            )
    if isinstance(depth, torch.Tensor):
        depth = depth.detach().cpu()
        depth = depth.float().numpy() if depth.is_floating_point() else depth.numpy()
    if not isinstance(depth, np.ndarray):
        raise TypeError(f"Depth must be an array, tensor, PIL image or file path; got {type(depth).__name__}.")
    if isinstance(depth, np.ma.MaskedArray):  # masked pixels are not readings: 0, invalid in metres and millimetres
        depth = depth.filled(0)

    while depth.ndim > 2 and depth.shape[0] == 1:
        depth = depth[0]
    if depth.ndim != 2:
        raise ValueError(f"A depth map must be 2-D (H, W) or (1, H, W); got shape {depth.shape}.")
    if depth.size == 0:
        raise ValueError(f"A depth map must not be empty; got shape {depth.shape}.")
    if depth.dtype.kind == "u" and depth.dtype.itemsize == 2:  # either byte order: astype reads both
        meters = depth.astype(np.float32) / 1000.0
    elif depth.dtype.kind == "f":
        with np.errstate(over="ignore"):  # beyond float32 is inf: invalid, like any other infinite depth
            meters = depth.astype(np.float32)
    elif depth.dtype == np.uint8:
        raise ValueError(
            "Depth of dtype uint8 looks like an 8-bit visualisation, not a measurement: pass metres as floats or "
            "millimetres as uint16."
        )
    else:
        raise ValueError(
            f"Depth of dtype {depth.dtype} has no known unit: pass metres as floats (float16/32/64) or millimetres as "
            "16-bit unsigned integers (uint16, either byte order)."
        )

    negative = np.isfinite(meters) & (meters < 0)  # -inf is no distance at all: invalid, like +inf
    if negative.any():
        raise ValueError(
            f"Depth has {int(negative.sum())} negative values: depth must be a distance in metres "
            "(mark missing pixels with 0 or NaN). Inverse depth / disparity must be converted first."
        )
    invalid = ~np.isfinite(meters) | (meters == 0)
    if invalid.any():
        if invalid_depth == "error":
            raise ValueError(
                f"Depth has {int(invalid.sum())} invalid pixels (0, NaN, inf or masked) and invalid_depth='error'. "
                "Use invalid_depth='mask' to encode them as 'no measurement'."
            )
        meters = np.where(invalid, np.float32(0), meters)
    return meters


# The estimator's backbone attention for bf16 on CPU (`query_blocked_attention`), and its queries per block: a block's
# score matrix (heads x 256 x ~1,800 tokens for a 518-px image, bf16) stays in the CPU's L2 cache.
QUERY_BLOCKED_ATTENTION = "query_blocked"
ATTENTION_QUERY_BLOCK = 256


def query_blocked_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Softmax attention, exact, a block of `ATTENTION_QUERY_BLOCK` queries at a time (an `AttentionInterface` function).

    It is what the estimator's backbone runs in bf16 on CPU: both matmuls of a block use the CPU's bf16 dot products,
    while `scaled_dot_product_attention`'s CPU kernel is no faster in bf16 than in fp32 (one profile of Depth Anything
    V2 Small's layers, not kept by a benchmark; the benchmark's raw-forward rows give the whole forward's bf16 gain, 2.6x
    on an AVX512-BF16 core). Softmax of bf16 scores
    is computed in fp32 inside torch's CPU kernel. Inference only (no attention dropout); `(batch, heads, tokens,
    head_dim)` inputs, output `(batch, tokens, heads, head_dim)` like every `AttentionInterface` function.
    """
    if dropout:
        raise ValueError("query_blocked_attention is for inference: attention dropout is not supported.")
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    output = torch.empty_like(query)
    keys_transposed = key.transpose(-1, -2)
    for start in range(0, query.shape[-2], ATTENTION_QUERY_BLOCK):
        block = slice(start, start + ATTENTION_QUERY_BLOCK)
        scores = torch.matmul(query[..., block, :], keys_transposed) * scaling
        if attention_mask is not None:  # a mask broadcast over queries (size 1 there) applies to every block
            scores = scores + (attention_mask if attention_mask.shape[-2] == 1 else attention_mask[..., block, :])
        torch.matmul(torch.softmax(scores, dim=-1), value, out=output[..., block, :])
    return output.transpose(1, 2).contiguous(), None


AttentionInterface.register(QUERY_BLOCKED_ATTENTION, query_blocked_attention)


class MonocularDepthEstimator:
    """A `DepthAnythingForDepthEstimation` checkpoint as a batched depth source, loaded on first use.

    Metric checkpoints (`config.depth_estimation_type == "metric"`) give metres. Relative checkpoints (the default
    Depth-Anything-V2-Small) give affine-invariant inverse depth with no scale: it is turned into depth relative to the
    image's median (`median(disparity) / disparity`, so the median pixel reads 1.0) and must not be read as metres.

    `__call__` does everything for a list of images. Bulk jobs split it: `preprocess` (CPU only, safe in DataLoader
    workers) and `predict` (on the device), so decoding and resizing never make the accelerator wait.

    `dtype`: the estimator's precision; by default bf16 on CUDA and fp32 elsewhere. `torch.bfloat16` on a CPU with
    bf16 dot products (AVX512-BF16, AMX) about halves the forward's time: the backbone's attention then runs
    `query_blocked_attention`. bf16 is what the CUDA default has always been; on a random-weight Depth Anything V2
    Small its depth differs from fp32's by a median 1% per pixel, with a tail (p99 41%) at pixels of near-zero
    disparity, whose inverse magnifies any error (`depth_error_vs_float32` in
    `bench/results/depth_generation_da_v2_small_cpu_64.json`); so on CPU it is opt-in.

    `forward_batch_size`: images per forward pass; by default a whole `predict` batch on accelerators and one on CPU,
    where one image (~1,800 tokens at 518 px) already fills the matrix units and a batch's full-resolution head
    activations overflow the caches (batches of 8 were slower per image in a one-off profile; no benchmark keeps it).
    """

    def __init__(
        self,
        model_name_or_path: str,
        device: str | torch.device | None = None,
        batch_size: int = 8,
        dtype: torch.dtype | None = None,
        forward_batch_size: int | None = None,
    ):
        if forward_batch_size is not None and forward_batch_size < 1:
            raise ValueError(
                f"forward_batch_size must be >= 1 (or None for the device's default); got {forward_batch_size}."
            )
        self.model_name_or_path = str(model_name_or_path)
        self.device = torch.device(device) if device is not None else None
        self.batch_size = batch_size
        self.dtype = dtype
        self.forward_batch_size = forward_batch_size
        self._model = None
        self._image_processor = None
        self._loaded_attention = None  # the backbone's attention as loaded (SDPA), used wherever blocked is not faster

    def to(self, device: str | torch.device) -> "MonocularDepthEstimator":
        """Run on `device` from now on (the loaded model moves there; an unloaded one will load there)."""
        self.device = torch.device(device)
        if self._model is not None:
            self._place(self._model, self.device)
        return self

    def _dtype_on(self, device: torch.device) -> torch.dtype:
        """The precision the estimator runs in on `device`: `dtype` when given, else bf16 on CUDA, fp32 elsewhere."""
        if self.dtype is not None:
            return self.dtype
        return torch.bfloat16 if device.type == "cuda" else torch.float32

    def _place(self, model, device: torch.device):
        dtype = self._dtype_on(device)
        # On CPU the neck's and head's convolutions run channels-last: oneDNN's NHWC kernels were faster there in a
        # one-off profile (the benchmark times the whole forward only). Accelerators keep the default.
        memory_format = torch.channels_last if device.type == "cpu" else torch.contiguous_format
        model.to(device=device, dtype=dtype, memory_format=memory_format)
        if getattr(model.backbone, "_supports_attention_backend", False):
            blocked = device.type == "cpu" and dtype == torch.bfloat16
            model.set_attn_implementation(
                {"backbone_config": QUERY_BLOCKED_ATTENTION if blocked else self._loaded_attention}
            )
        return model

    def _check_exists(self) -> None:
        name = self.model_name_or_path
        looks_local = os.path.isabs(name) or name.startswith(".") or os.path.exists(name) or name.count("/") > 1
        if looks_local and not os.path.isdir(name):
            raise FileNotFoundError(f"The configured depth estimator {name!r} is not a folder that exists.")

    def _loading_error(self, error: OSError) -> OSError:
        return OSError(
            f"Could not load the depth estimator {self.model_name_or_path!r} (is it downloaded, or the hub "
            f"reachable?). Pass depth= explicitly or configure another estimator. Cause: {error}"
        )

    @property
    def image_processor(self):
        if self._image_processor is None:
            from transformers import AutoImageProcessor

            self._check_exists()
            try:
                self._image_processor = AutoImageProcessor.from_pretrained(self.model_name_or_path)
            except OSError as error:
                raise self._loading_error(error) from error
        return self._image_processor

    @property
    def model(self):
        if self._model is None:
            from transformers import DepthAnythingForDepthEstimation

            self._check_exists()
            try:
                model = DepthAnythingForDepthEstimation.from_pretrained(self.model_name_or_path)
            except OSError as error:
                raise self._loading_error(error) from error
            device = self.device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
            self._loaded_attention = model.config.backbone_config._attn_implementation
            self._model = self._place(model, device).eval()
        return self._model

    @property
    def is_metric(self) -> bool:
        return getattr(self.model.config, "depth_estimation_type", "relative") == "metric"

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """Pixel values for a batch of same-size images of any PIL mode (CPU work only)."""
        return self.image_processor(images=[to_rgb_image(image) for image in images], return_tensors="pt")[
            "pixel_values"
        ]

    @torch.inference_mode()
    def predict(self, pixel_values: torch.Tensor, sizes: list[tuple[int, int]]) -> list[np.ndarray]:
        """Depth maps for preprocessed same-shape images, each resized to its image's (H, W) in `sizes`.

        Metric depth is resized as is; relative output is resized as disparity (what the network predicts) and then
        normalised by its median, so the result equals running each image alone.
        """
        model = self.model
        step = self.forward_batch_size or (1 if model.device.type == "cpu" else len(pixel_values))
        depths = []
        for start in range(0, len(pixel_values), step):
            batch = pixel_values[start : start + step].to(model.device, model.dtype)
            prediction = model(pixel_values=batch).predicted_depth.float()
            for map_at_network_size, size in zip(prediction, sizes[start : start + step]):
                resized = F.interpolate(map_at_network_size[None, None], size=tuple(size), mode="bilinear")[0, 0]
                resized = resized.cpu().numpy()
                depths.append(resized if self.is_metric else self._relative_to_depth(resized))
        return depths

    def __call__(self, images: list[Image.Image]) -> list[np.ndarray]:
        """Depth maps (float32, H x W of each input) for RGB images of any sizes."""
        results: list[np.ndarray | None] = [None] * len(images)
        # Images of one size share a preprocessed shape, so each batch stacks without padding.
        by_size: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(images):
            by_size.setdefault(image.size[::-1], []).append(index)
        for size, indices in by_size.items():
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start : start + self.batch_size]
                depths = self.predict(self.preprocess([images[i] for i in batch]), [size] * len(batch))
                for index, depth in zip(batch, depths):
                    results[index] = depth
        return results

    @staticmethod
    def _relative_to_depth(disparity: np.ndarray) -> np.ndarray:
        valid = disparity > 0
        if not valid.any():
            return np.zeros_like(disparity, dtype=np.float32)
        median = np.median(disparity[valid])
        return np.where(valid, median / np.maximum(disparity, 1e-12), 0).astype(np.float32)


# Per-image inputs that ride inside a chat image block beside its image, and what each is (for error messages).
IMAGE_BLOCK_KEYS = {"depth": "Depth was", "intrinsics": "Intrinsics were"}
INTRINSICS_FIELDS = ("fx", "fy", "cx", "cy")


def _is_one_intrinsics(value: Any) -> bool:
    """Whether `value` is one camera's intrinsics (a 3x3 K, 4 numbers, or a dict), not a container of them."""
    if isinstance(value, dict):
        return True
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return tuple(value.shape) in ((3, 3), (4,))
    if isinstance(value, (list, tuple)) and value:
        if all(isinstance(item, (int, float, np.number)) for item in value):
            return len(value) == 4
        return len(value) == 3 and all(
            isinstance(row, (list, tuple))
            and len(row) == 3
            and all(isinstance(v, (int, float, np.number)) for v in row)
            for row in value
        )
    return False


def parse_intrinsics(value: Any, index: int = 0) -> tuple[float, float, float, float] | None:
    """One camera's intrinsics as (fx, fy, cx, cy) in pixels, or None (unknown camera); refuses what is not a pinhole
    camera (skew, a last row other than (0, 0, 1)) and non-positive or non-finite focal lengths."""
    if value is None:
        return None
    if isinstance(value, dict):
        missing = [field for field in INTRINSICS_FIELDS if field not in value]
        if missing:
            raise ValueError(f"Intrinsics {index} lack {missing}: give a dict with keys {INTRINSICS_FIELDS}.")
        values = [value[field] for field in INTRINSICS_FIELDS]
    else:
        array = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value, dtype=np.float64)
        if array.shape == (3, 3):
            if not np.allclose(array[2], (0, 0, 1)) or array[1, 0] != 0 or array[0, 1] != 0:
                raise ValueError(
                    f"Intrinsics {index} are not a pinhole camera matrix [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] "
                    f"(no skew): got {array.tolist()}."
                )
            values = [array[0, 0], array[1, 1], array[0, 2], array[1, 2]]
        elif array.shape == (4,):
            values = list(array)
        else:
            raise ValueError(
                f"Intrinsics {index} have shape {array.shape}: give a 3x3 K, (fx, fy, cx, cy), or a dict of those."
            )
    fx, fy, cx, cy = (float(v) for v in values)
    if not all(np.isfinite((fx, fy, cx, cy))) or fx <= 0 or fy <= 0:
        raise ValueError(f"Intrinsics {index} need finite values and positive focal lengths; got {(fx, fy, cx, cy)}.")
    return fx, fy, cx, cy


def per_image_entries(value: Any, images, num_images: int, is_entry, kind: str, noun: str, none_means: str) -> list:
    """A per-image input (`depth=`, `intrinsics=`) as one entry per image, in the images' order.

    `value` is one entry (`is_entry`), a flat list of entries (one per image), or one list per sample, each matching
    its sample's images when `images` is nested likewise (a sample's bare entry is its one image's; its `None`, every
    image's). Counts that do not match say which (`kind`/`noun` name the input, `none_means` what `None` is).
    """
    entries = [value] if is_entry(value) else list(value)
    if any(isinstance(item, (list, tuple)) and not is_entry(item) for item in entries):  # one list per sample
        nested = isinstance(images, (list, tuple)) and all(isinstance(s, (list, tuple)) for s in images)
        sizes = [len(sample) for sample in images] if nested else [None] * len(entries)
        if len(sizes) != len(entries):
            raise ValueError(f"Got {kind} for {len(entries)} samples but images for {len(sizes)}.")
        samples, entries = entries, []
        for index, (sample, size) in enumerate(zip(samples, sizes)):
            if not isinstance(sample, (list, tuple)) or is_entry(sample):
                sample = [None] * (size or 1) if sample is None else [sample]
            if size is not None and len(sample) != size:
                raise ValueError(
                    f"Got {len(sample)} {noun} for {size} images in sample {index}: give one per image (None "
                    f"{none_means})."
                )
            entries.extend(sample)
    if len(entries) != num_images:
        raise ValueError(f"Got {len(entries)} {noun} for {num_images} images: give one per image (None {none_means}).")
    return entries


def intrinsics_per_image(intrinsics: Any, images, num_images: int) -> list[tuple[float, float, float, float] | None]:
    """The caller's `intrinsics` as one (fx, fy, cx, cy) or None per image, laid out like `depth`: one camera, a flat
    list (one per image), or one list per sample (a sample's `None`: no intrinsics for its images)."""
    entries = per_image_entries(
        intrinsics,
        images,
        num_images,
        lambda value: not isinstance(value, (list, tuple)) or _is_one_intrinsics(value),
        "intrinsics",
        "intrinsics",
        "for an unknown camera",
    )
    return [parse_intrinsics(entry, index) for index, entry in enumerate(entries)]


def resized_intrinsics(
    camera: tuple[float, float, float, float] | None, size: tuple[int, int], resized: tuple[int, int]
) -> tuple[float, float, float, float]:
    """(fx, fy, cx, cy) of an image of `size` (height, width) in the pixels of the image resized to `resized`; NaN
    for an unknown camera. Pixel centres sit at integer coordinates, so a centre `c` maps to `(c + 0.5) * s - 0.5`."""
    if camera is None:
        return (float("nan"),) * 4
    fx, fy, cx, cy = camera
    scale_y, scale_x = resized[0] / size[0], resized[1] / size[1]
    return fx * scale_x, fy * scale_y, (cx + 0.5) * scale_x - 0.5, (cy + 0.5) * scale_y - 0.5


class Qwen2_5_VLDepthProcessor(Qwen2_5_VLProcessor):
    r"""
    Qwen2.5-VL's image processor and tokenizer, plus per-image metric depth for [`Qwen2_5_VLDepthForConditionalGeneration`].

    Args:
        image_processor: a Qwen2-VL image processor (either backend; the PIL one needs no torchvision).
        tokenizer: a Qwen2 tokenizer.
        chat_template (`str`, *optional*): the Qwen2.5-VL chat template.
        depth_fusion (`str`, defaults to `"add"`): the model's `config.depth_fusion`, which `from_pretrained` reads from
            the folder's `config.json` (it is not saved with the processor). An image with depth expands to its mode's
            `tokens_per_image_with_depth` times its image placeholders (`configuration_depth.DEPTH_FUSIONS`: 2 for
            `"concat"`, its RGB tokens then its depth tokens in one run; 1 for the others); with `"none"` depth is an
            error.
        depth_estimator (`str`, *optional*): id or folder of a `DepthAnythingForDepthEstimation` checkpoint, run on
            images given without depth. `None`: images without depth go without it.
        invalid_depth (`str`, defaults to `"mask"`): what 0/NaN/inf depth pixels do: `"mask"` encodes them as "no
            measurement", `"error"` raises. Negative depth always raises.
        fill_depth_holes (`int`, defaults to 0): passes of `fill_depth_holes` over each depth map before it is
            resized: sensor holes take the depth of the surface beside them, so a model reads holed depth as it reads
            complete depth; regions larger than `2 * fill_depth_holes` pixels (sky) stay invalid. 0: depth as given.
        relative_depth_median (`float`, *optional*): metres at which the median pixel of a relative depth map is read:
            relative maps (a relative estimator's, and depth given with `depth_is_relative=True`) are scaled to it, so
            a model trained on metric depth sees them at a typical scene's scale, right in every ratio (which is
            nearer, the order of depths) and wrong only by the scene's own scale. Set it to the median of the training
            set's per-image median depths. `None`: a relative estimate reaches the model with its median at 1 m.

    Outputs, besides Qwen2.5-VL's, when at least one image has depth: `depth_values` `(num_patches, patch_size**2)` in
    metres (0 = invalid), rows only for the images with depth, each on its image's `image_grid_thw`; and
    `image_has_depth`, a bool per image. When intrinsics are given too: `depth_intrinsics` `(num_depth_images, 4)`,
    (fx, fy, cx, cy) of each image with depth in the pixels of its resized image (NaN for an unknown camera). Without
    any depth the output is exactly Qwen2.5-VL's.
    """

    valid_processor_kwargs = Qwen2_5_VLDepthProcessorKwargs

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template=None,
        depth_fusion: str = DEFAULT_DEPTH_FUSION,
        depth_estimator: str | None = None,
        invalid_depth: str = "mask",
        fill_depth_holes: int = 0,
        relative_depth_median: float | None = None,
        **kwargs,
    ):
        if depth_fusion not in DEPTH_FUSION_MODES:
            raise ValueError(
                f"Unknown depth_fusion {depth_fusion!r}: expected one of the model's modes, "
                f"{', '.join(DEPTH_FUSION_MODES)}. (An experiment arm that is not a mode of the model, such as "
                "SpatialBot's depth drawn as a second picture, has its own processor: "
                "training.spatialbot.DepthAsImageProcessor.)"
            )
        if invalid_depth not in INVALID_DEPTH_POLICIES:
            raise ValueError(f"Unknown invalid_depth {invalid_depth!r}: expected one of {INVALID_DEPTH_POLICIES}.")
        self.depth_fusion = depth_fusion
        self.depth_estimator = depth_estimator
        if isinstance(fill_depth_holes, bool) or not isinstance(fill_depth_holes, int) or fill_depth_holes < 0:
            raise ValueError(f"fill_depth_holes must be a number of passes >= 0; got {fill_depth_holes!r}.")
        self.invalid_depth = invalid_depth
        self.fill_depth_holes = fill_depth_holes
        if relative_depth_median is not None and (
            isinstance(relative_depth_median, bool)
            or not isinstance(relative_depth_median, (int, float))
            or not math.isfinite(relative_depth_median)
            or relative_depth_median <= 0
        ):
            raise ValueError(
                f"relative_depth_median must be a positive number of metres (or None); got {relative_depth_median!r}."
            )
        self.relative_depth_median = None if relative_depth_median is None else float(relative_depth_median)
        self._estimator = None
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token) if tokenizer is not None else None
        # Images only: no video processor, hence no torchvision.
        self.video_token = None
        self.video_token_id = None
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        # This class is already running, so nothing in the folder needs executing. Without an explicit answer, the
        # tokenizer lookup reads the depth folder's `auto_map` and stops to ask whether to trust remote code.
        kwargs.setdefault("trust_remote_code", False)
        if "depth_fusion" not in kwargs:
            depth_fusion = cls._model_config_depth_fusion(pretrained_model_name_or_path, **kwargs)
            if depth_fusion is not None:
                kwargs["depth_fusion"] = depth_fusion
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    @staticmethod
    def _model_config_depth_fusion(pretrained_model_name_or_path, **kwargs) -> str | None:
        """`depth_fusion` of the model config (`config.json`) of a folder or hub id; None when it has none."""
        hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}
        config_file = cached_file(
            pretrained_model_name_or_path, CONFIG_NAME, _raise_exceptions_for_missing_entries=False, **hub_kwargs
        )
        if config_file is None:
            return None
        with open(config_file, encoding="utf-8") as file:
            return json.load(file).get("depth_fusion")

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output.pop("depth_fusion", None)  # the model config's: `from_pretrained` reads it from there
        return output

    @property
    def fusion(self):
        """The fusion mode's row of `configuration_depth.DEPTH_FUSIONS`."""
        return DEPTH_FUSIONS[self.depth_fusion]

    @property
    def model_input_names(self):
        return super().model_input_names + ["depth_values", "image_has_depth", "depth_intrinsics"]

    def validate_inputs(self, images=None, text=None, videos=None, audio=None, **kwargs):
        super().validate_inputs(images=images, text=text, videos=videos, audio=audio, **kwargs)
        if videos is not None:
            raise ValueError(f"{type(self).__name__} handles images only; video is not supported.")
        depth = kwargs.get("depth", kwargs.get("images_kwargs", {}).get("depth"))
        if depth is not None and images is None:
            raise ValueError("depth was given without images: every depth map needs its RGB image.")
        intrinsics = kwargs.get("intrinsics", kwargs.get("images_kwargs", {}).get("intrinsics"))
        if intrinsics is not None and images is None:
            raise ValueError("intrinsics were given without images: camera intrinsics describe an image's pixels.")
        if depth is not None and not self.fusion.has_depth:
            raise ValueError(f"This processor has depth_fusion={self.depth_fusion!r} (RGB only): do not pass depth.")

    def _process_images(self, images, **kwargs):
        depth_maps = self.depth_maps(
            images,
            kwargs.pop("depth", None),
            kwargs.pop("depth_estimator_device", None),
            depth_is_relative=bool(kwargs.pop("depth_is_relative", False)),
        )
        intrinsics = kwargs.pop("intrinsics", None)
        if intrinsics is not None:
            intrinsics = intrinsics_per_image(intrinsics, images, len(depth_maps))
        processed = self.image_processor(images, **kwargs)
        if any(depth is not None for depth in depth_maps):
            grids = np.asarray(processed["image_grid_thw"]).reshape(-1, 3)
            processed["depth_values"] = np.concatenate(
                [self._patchify(depth, grid) for depth, grid in zip(depth_maps, grids) if depth is not None]
            )
            processed["image_has_depth"] = np.array([depth is not None for depth in depth_maps])
            if intrinsics is not None:
                patch_size = self.image_processor.patch_size
                flat_images = make_flat_list_of_images(images)
                processed["depth_intrinsics"] = np.array(
                    [
                        resized_intrinsics(
                            camera, self._image_size(image), (grid[1] * patch_size, grid[2] * patch_size)
                        )
                        for camera, image, grid, depth in zip(intrinsics, flat_images, grids, depth_maps)
                        if depth is not None
                    ],
                    dtype=np.float32,
                )
        replacements = [self.replace_image_token(processed, image_idx=i) for i in range(len(depth_maps))]
        return processed, replacements

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        image_tokens = super().replace_image_token(image_inputs, image_idx)
        # A fusion with depth tokens (concat): they follow the image's RGB tokens in the same run of placeholders.
        if "image_has_depth" in image_inputs and image_inputs["image_has_depth"][image_idx]:
            return image_tokens * self.fusion.tokens_per_image_with_depth
        return image_tokens

    def _get_num_multimodal_tokens(self, image_sizes=None, video_sizes=None, image_has_depth=None, **kwargs):
        """Placeholder tokens per image (and its patches), as Qwen2.5-VL's, times the fusion's
        `tokens_per_image_with_depth` for images with depth (twice with `"concat"`).

        `image_has_depth` (a bool, or one per image) says which images will have depth; by default all when a depth
        estimator is configured (it fills in every missing map), none otherwise.
        """
        if video_sizes is not None:
            raise ValueError(f"{type(self).__name__} handles images only; video is not supported.")
        vision_data = super()._get_num_multimodal_tokens(image_sizes=image_sizes, **kwargs)
        if self.fusion.tokens_per_image_with_depth == 1 or image_sizes is None:
            return vision_data
        if image_has_depth is None:
            image_has_depth = self.depth_estimator is not None
        if isinstance(image_has_depth, bool):
            image_has_depth = [image_has_depth] * len(image_sizes)
        if len(image_has_depth) != len(image_sizes):
            raise ValueError(f"Got {len(image_has_depth)} image_has_depth entries for {len(image_sizes)} images.")
        vision_data.num_image_tokens = [
            self.fusion.tokens_per_image_with_depth * num_tokens if has_depth else num_tokens
            for num_tokens, has_depth in zip(vision_data.num_image_tokens, image_has_depth)
        ]
        return vision_data

    def depth_maps(
        self, images, depth=None, estimator_device=None, depth_is_relative: bool = False
    ) -> list[np.ndarray | None]:
        """Depth in metres per image, checked against its image: given, else estimated, else None (no depth).

        Relative maps (given with `depth_is_relative`, or a relative estimator's) are read at `relative_depth_median`
        when the processor has one (`scale_relative_depth`)."""
        flat_images = make_flat_list_of_images(images)
        if not self.fusion.has_depth:
            return [None] * len(flat_images)
        if depth_is_relative and depth is not None and self.relative_depth_median is None:
            raise ValueError(
                "depth_is_relative=True, but this processor has no relative_depth_median: set it (the median depth, "
                "in metres, of the images the model was trained on) to read relative depth at a metric scale."
            )
        maps = []
        for index, (item, image) in enumerate(
            zip(self._depth_per_image(depth, images, len(flat_images)), flat_images)
        ):
            if item is not None:
                try:
                    item = depth_to_meters(item, self.invalid_depth)
                except (ValueError, TypeError, FileNotFoundError, IsADirectoryError) as error:
                    raise type(error)(f"Depth map {index}: {error}") from error
                self._check_covers_image(item, image, index)
                if depth_is_relative:
                    item = scale_relative_depth(item, self.relative_depth_median)
            maps.append(item)
        missing = [index for index, item in enumerate(maps) if item is None]
        if missing and self.depth_estimator is not None:
            estimator = self.estimator(estimator_device)
            estimated = estimator([self._to_pil(flat_images[i]) for i in missing])
            for index, estimate in zip(missing, estimated):
                estimate = depth_to_meters(estimate, "mask")
                if not estimator.is_metric and self.relative_depth_median is not None:
                    estimate = scale_relative_depth(estimate, self.relative_depth_median)
                maps[index] = estimate
        return maps

    @staticmethod
    def _depth_per_image(depth, images, num_images: int) -> list:
        """The caller's `depth` as one entry (a map or None) per image, in the images' order.

        A bare map is one map, at the top or in place of a sample's list; so is a map written as nested lists of numbers.
        With one list per sample (`[[d0], None]`) and `images` nested the same way, each sample's maps must match its
        images, and a sample's `None` is "no depth".
        """
        if depth is None:
            return [None] * num_images
        entries = per_image_entries(
            depth,
            images,
            num_images,
            lambda value: not isinstance(value, (list, tuple)) or _is_map_as_nested_list(value),
            "depth",
            "depth maps",
            "for an image without depth",
        )
        for index, entry in enumerate(entries):
            if entry is not None and not isinstance(entry, DEPTH_MAP_TYPES) and not _is_map_as_nested_list(entry):
                raise TypeError(
                    f"Depth map {index} is a {type(entry).__name__}: a depth map is an array, tensor, PIL image, "
                    "encoded image bytes, file path or nested lists of numbers (its rows); other lists hold one map "
                    "per image, or one list per sample."
                )
        return entries

    def estimator(self, device=None) -> MonocularDepthEstimator:
        """The configured depth estimator, on `device` when given (a later call with another device moves it)."""
        if self._estimator is None or self._estimator.model_name_or_path != str(self.depth_estimator):
            self._estimator = MonocularDepthEstimator(self.depth_estimator, device=device)
        elif device is not None:
            self._estimator.to(device)
        return self._estimator

    @staticmethod
    def _to_pil(image) -> Image.Image:
        if isinstance(image, Image.Image):
            return image
        array = to_numpy_array(image)
        if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
            array = array.transpose(1, 2, 0)
        if array.dtype != np.uint8:
            array = np.clip(array * (255 if array.max() <= 1 else 1), 0, 255).astype(np.uint8)
        return Image.fromarray(array.squeeze())

    @staticmethod
    def _image_size(image) -> tuple[int, int]:
        """(height, width) of an image as given."""
        return image.size[::-1] if isinstance(image, Image.Image) else get_image_size(to_numpy_array(image))

    @classmethod
    def _check_covers_image(cls, depth: np.ndarray, image, index: int) -> None:
        """Depth belongs to its image: the same size, or the same aspect ratio (it is resized when patchified)."""
        image_height, image_width = cls._image_size(image)
        depth_height, depth_width = depth.shape
        if (depth_height, depth_width) != (image_height, image_width):
            image_aspect, depth_aspect = image_width / image_height, depth_width / depth_height
            if abs(depth_aspect - image_aspect) / image_aspect > ASPECT_RATIO_TOLERANCE:
                raise ValueError(
                    f"Depth map {index} has shape {(depth_height, depth_width)} but its image is "
                    f"{(image_height, image_width)}: a depth map must cover its image (same size or aspect ratio)."
                )

    def _patchify(self, depth: np.ndarray, grid_thw: np.ndarray) -> np.ndarray:
        """Resize depth to the image's resized size and lay it out like `pixel_values`, one frame, one channel.

        Nearest-neighbour resizing keeps every value a real measurement: no invented depths between a foreground
        edge and the background behind it, and invalid (0) pixels stay invalid. Holes are filled first, at the
        depth's own resolution, when `fill_depth_holes` asks for it.
        """
        depth = fill_depth_holes(depth, self.fill_depth_holes)
        patch_size, merge_size = self.image_processor.patch_size, self.image_processor.merge_size
        _, grid_h, grid_w = (int(v) for v in grid_thw)
        resized = F.interpolate(
            torch.from_numpy(depth)[None, None], size=(grid_h * patch_size, grid_w * patch_size), mode="nearest-exact"
        )[0, 0]
        patches = resized.reshape(
            grid_h // merge_size, merge_size, patch_size, grid_w // merge_size, merge_size, patch_size
        ).permute(0, 3, 1, 4, 2, 5)  # (gh/m, gw/m, m, m, p, p): the order of the image processor's patchify
        return patches.reshape(grid_h * grid_w, patch_size * patch_size).numpy()

    def apply_chat_template(self, conversation, *args, **kwargs):
        """Qwen2.5-VL's, refusing depth (or intrinsics) given twice: as `depth=` and inside the image blocks of the
        messages."""
        processor_kwargs = kwargs.get("processor_kwargs") or {}
        given_places = (kwargs, processor_kwargs, processor_kwargs.get("images_kwargs") or {})
        for key in IMAGE_BLOCK_KEYS:
            if not any(place.get(key) is not None for place in given_places):
                continue
            conversations, _ = self._normalize_conversations(conversation)
            if any(
                isinstance(block, dict) and block.get("type") == "image" and block.get(key) is not None
                for messages in conversations
                for message in messages
                for block in (message.get("content") if isinstance(message.get("content"), list) else [])
            ):
                raise ValueError(
                    f"{IMAGE_BLOCK_KEYS[key]} given both as {key}= and inside the image blocks of the messages: give "
                    f"each in one place, its image block ({{'type': 'image', 'image': ..., {key!r}: ...}}) or {key}=."
                )
        return super().apply_chat_template(conversation, *args, **kwargs)

    def _multimodal_inputs_from_conversations(self, conversations, audio_loading_params, load_audio_from_video=False):
        """Also collect depth and intrinsics given inside image blocks: `{"type": "image", "image": ..., "depth": ...,
        "intrinsics": ...}`."""
        per_conversation = {key: [] for key in IMAGE_BLOCK_KEYS}
        for conversation in conversations:
            found = {key: [] for key in IMAGE_BLOCK_KEYS}
            for message in conversation:
                content = message.get("content")
                for block in content if isinstance(content, list) else []:
                    for key in IMAGE_BLOCK_KEYS:
                        if block.get("type") == "image":
                            found[key].append(block.get(key))
                        elif block.get(key) is not None:
                            raise ValueError(
                                f"A {block.get('type')!r} block of a {message.get('role')!r} message has {key!r}: it "
                                f"belongs in the image block it describes, {{'type': 'image', 'image': ..., {key!r}: "
                                "...}."
                            )
            for key in IMAGE_BLOCK_KEYS:
                per_conversation[key].append(found[key])
        images, videos, audio, extra = super()._multimodal_inputs_from_conversations(
            conversations, audio_loading_params, load_audio_from_video
        )
        for key, entries in per_conversation.items():
            if any(item is not None for sample in entries for item in sample):
                extra = {**extra, key: entries}
        return images, videos, audio, extra


Qwen2_5_VLDepthProcessor.register_for_auto_class()

__all__ = [
    "Qwen2_5_VLDepthProcessor",
    "MonocularDepthEstimator",
    "depth_to_meters",
    "fill_depth_holes",
    "intrinsics_per_image",
    "parse_intrinsics",
    "resized_intrinsics",
    "scale_relative_depth",
    "to_rgb_image",
]
