"""Measured depth: a sensor's stored values in its units -> metres on the stored image's grid, or why not.

Depth units (`--depth-scale`): stored value / scale = metres. A number (units per metre) or a dataset's name: `nyu`,
`scannet`, `arkitscenes` (1000: millimetres), `tum` (5000), `kitti` (256), `sunrgbd` (millimetres rotated left by 3
bits in 16, as SUN RGB-D and SUN3D store them). Integer depth (16-bit PNGs, integer arrays) has no unit of its own, so
the scale is required for it; float depth (float TIFFs, `.npy` arrays, float columns, NYU's `.mat`) is metres unless
a scale is given.

Invalid pixels: 0, NaN and +-inf mean "no measurement" and are stored as 0 (sensor holes stay holes); depths beyond
what a 16-bit millimetre PNG holds (65.535 m) are stored as 0 too, not clipped, since a clipped value would be a false
measurement. A pair with a negative depth (not a distance: a sign convention or a sentinel to convert first), with no
valid pixel, or whose median valid depth is outside 0.05-65.535 m (no RGB-D sensor measures that: a wrong scale) is
skipped with its reason.

The depth map gets the image's EXIF rotation and is resized to the stored image by nearest neighbour, so every stored
depth is a real measurement. It must have the image's size or, for depth registered at a lower resolution
(ARKitScenes' low-resolution depth), exactly its aspect ratio; any other pair is skipped (`size_mismatch`): a depth
camera with another field of view (ScanNet's 1296x968 colour vs 640x480 depth) is not registered to the image, and
resizing would pair wrong pixels.
"""

from __future__ import annotations

import argparse
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from training.depth_png import MAX_DEPTH_PNG
from training.make_rgbd_pairs.images import PreparedImage, SkippedImage, exif_orientation


SENSOR_ESTIMATOR = "sensor"  # the `estimator` column of measured rows: no model made this depth
PLAUSIBLE_MEDIAN_DEPTH = (0.05, MAX_DEPTH_PNG)  # metres; closer than any RGB-D sensor's minimum range, or unstorable


@dataclass(frozen=True)
class DepthScale:
    """Stored depth / `units_per_metre` = metres, after undoing a bit rotation some datasets store depth with."""

    units_per_metre: float
    name: str = ""
    rotate_right_bits: int = 0

    def describe(self) -> str:
        text = f"{self.units_per_metre:g} units per metre"
        if self.rotate_right_bits:
            text += f", 16-bit values rotated right by {self.rotate_right_bits} bits first"
        return f"{self.name} ({text})" if self.name else text

    def to_metres(self, values: np.ndarray) -> np.ndarray:
        if self.rotate_right_bits:
            if values.min() < 0 or values.max() > np.iinfo(np.uint16).max:
                raise SkippedImage("unreadable", "bit-rotated depth must be 16-bit (0..65535)")
            values = values.astype(np.uint16)
            values = (values >> self.rotate_right_bits) | (values << (16 - self.rotate_right_bits))
        return values.astype(np.float64) / self.units_per_metre


DEPTH_SCALE_PRESETS = {
    "nyu": DepthScale(1000, "nyu"),
    "scannet": DepthScale(1000, "scannet"),
    "arkitscenes": DepthScale(1000, "arkitscenes"),
    "tum": DepthScale(5000, "tum"),
    "kitti": DepthScale(256, "kitti"),
    # SUN RGB-D and SUN3D's depthRead.m: bitor(bitshift(d, -3), bitshift(d, 16 - 3)) / 1000.
    "sunrgbd": DepthScale(1000, "sunrgbd", rotate_right_bits=3),
}
FLOAT_METRES = DepthScale(1.0, "float metres")


def parse_depth_scale(text: str) -> DepthScale:
    """`--depth-scale`: units per metre (a positive number) or a preset name."""
    if text.lower() in DEPTH_SCALE_PRESETS:
        return DEPTH_SCALE_PRESETS[text.lower()]
    try:
        units_per_metre = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a number of units per metre nor one of {sorted(DEPTH_SCALE_PRESETS)}"
        ) from None
    if not np.isfinite(units_per_metre) or units_per_metre <= 0:
        raise argparse.ArgumentTypeError(f"the depth scale must be a positive number of units per metre, not {text}")
    return DepthScale(units_per_metre)


def read_depth_values(value) -> np.ndarray:
    """A depth cell or file as stored: an integer or float array (H, W), units not yet applied."""
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if value is None or (isinstance(value, (bytes, bytearray, list, tuple)) and len(value) == 0):
        raise SkippedImage("missing_depth", "the row's depth cell is empty")
    if isinstance(value, (str, Path)):
        path = Path(value)
        try:
            if path.suffix.lower() == ".npy":
                return np.load(path, allow_pickle=False)
            value = path.read_bytes()
        except (OSError, ValueError) as error:
            raise SkippedImage("unreadable_depth", f"{type(error).__name__}: {error}") from error
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            with Image.open(io.BytesIO(bytes(value))) as image:
                image.load()
                return read_depth_values(image)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
            raise SkippedImage("unreadable_depth", f"{type(error).__name__}: {error}") from error
    if isinstance(value, Image.Image):
        if value.mode.startswith("I") or value.mode == "F":  # I;16 (16-bit PNG), I (how PIL may open it), F (TIFF)
            return np.asarray(value)
        raise SkippedImage(
            "depth_not_16bit",
            f"a {value.mode} depth image is an 8-bit picture, not a measurement: need 16-bit or float",
        )
    return np.asarray(value)


def depth_in_metres(values: np.ndarray, scale: DepthScale | None) -> np.ndarray:
    """Stored depth -> float32 metres, 0 where invalid. Raises `SkippedImage` for depth that is not usable.

    0, NaN and +-inf are "no measurement" and become 0; values beyond what a 16-bit millimetre PNG holds become 0 too
    (clipping them would store a false measurement). Negative values are not distances: the row is skipped.
    """
    if values.ndim == 3 and values.shape[0] == 1:
        values = values[0]
    if values.ndim != 2:
        raise SkippedImage("unreadable_depth", f"depth must be 2-D (H, W); got shape {values.shape}")
    if values.dtype == np.uint8:
        raise SkippedImage("depth_not_16bit", "8-bit depth is a visualisation, not a measurement")
    if np.issubdtype(values.dtype, np.integer):
        if scale is None:
            raise SkippedImage("unreadable_depth", "integer depth needs --depth-scale (units per metre)")
        metres = scale.to_metres(values)
    elif np.issubdtype(values.dtype, np.floating):
        metres = (scale or FLOAT_METRES).to_metres(values)
    else:
        raise SkippedImage("unreadable_depth", f"depth of dtype {values.dtype} is not a number")
    finite = np.isfinite(metres)
    negative = finite & (metres < 0)
    if negative.any():
        raise SkippedImage(
            "negative_depth",
            f"{int(negative.sum())} pixels < 0 (min {metres[negative].min():.4g}): depth must be a distance; mark "
            "missing pixels with 0 or NaN",
        )
    valid = finite & (metres > 0)
    if not valid.any():
        raise SkippedImage("no_valid_depth", "every pixel is 0, NaN or inf")
    median = float(np.median(metres[valid]))
    low, high = PLAUSIBLE_MEDIAN_DEPTH
    if not low <= median <= high:
        scale_text = scale.describe() if scale is not None else FLOAT_METRES.describe()
        raise SkippedImage(
            "implausible_depth",
            f"median valid depth {median:.4g} m is outside {low:g}-{high:g} m: is the depth scale ({scale_text}) right?",
        )
    valid &= metres <= MAX_DEPTH_PNG
    return np.where(valid, metres, 0.0).astype(np.float32)


# PIL's transposes that undo each EXIF orientation, as ImageOps.exif_transpose applies them to the image.
EXIF_TRANSPOSES = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def fit_depth_to_image(
    depth: np.ndarray, source_size: tuple[int, int], orientation: int, stored_size: tuple[int, int]
) -> np.ndarray:
    """Depth registered to the source image (`source_size` = (width, height)) -> depth on the stored image's grid.

    The image's EXIF rotation is applied, then the map is resized by nearest neighbour to `stored_size`, so every value
    is one the sensor measured. Only a depth map of the image's size or exactly its aspect ratio is registered to it.
    """
    depth_height, depth_width = depth.shape
    width, height = source_size
    if depth_width * height != width * depth_height:
        raise SkippedImage(
            "size_mismatch",
            f"depth {depth_width}x{depth_height} vs image {width}x{height} (width x height): another aspect ratio, so "
            "the depth is not registered to the image",
        )
    depth_image = Image.fromarray(np.ascontiguousarray(depth, dtype=np.float32))  # mode F: values kept exactly
    if orientation in EXIF_TRANSPOSES:
        depth_image = depth_image.transpose(EXIF_TRANSPOSES[orientation])
    if depth_image.size != stored_size:
        depth_image = depth_image.resize(stored_size, Image.Resampling.NEAREST)
    return np.asarray(depth_image, dtype=np.float32)


def measured_depth(
    raw_image: bytes | Image.Image, depth_value, prepared: PreparedImage, scale: DepthScale | None
) -> np.ndarray:
    """A source's depth cell or file for `raw_image` -> float32 metres on the grid of the stored `prepared` image."""
    source = raw_image if isinstance(raw_image, Image.Image) else Image.open(io.BytesIO(raw_image))  # header only
    metres = depth_in_metres(read_depth_values(depth_value), scale)
    stored_size = (prepared.image.width, prepared.image.height)
    return fit_depth_to_image(metres, source.size, exif_orientation(source), stored_size)
