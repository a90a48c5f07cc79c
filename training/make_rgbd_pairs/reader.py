"""Reading pairs back for training: `RGBDPairs`, a torch Dataset of `RGBDPair`s, decoded and augmented at load time.

With `augment=True` a pair gets one random horizontal flip and small rotation, applied to image and depth alike; the
stored pairs stay unaugmented. Any table with an `images` (or `image`) column and depth in its image blocks
(`training.trl_layout`; an older table's `depth` column reads too) reads this way: these pairs, estimated or measured,
and the rendered world's rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from processing_depth import parse_intrinsics
from training.data_files import load_rows
from training.depth_png import decode_depth_cell, decode_image_cell
from training.trl_layout import DEPTH_KEY, INTRINSICS_KEY, first_depth, has_depth_layout, image_blocks


DEFAULT_MAX_ROTATION_DEGREES = 10.0
# Columns of a pair besides its image (`RGBDPair`): its depth (in `messages`, or an older table's column) and metadata.
PAIR_COLUMNS = ("messages", DEPTH_KEY, "depth_is_metric", "source_id")


@dataclass
class RGBDPair:
    """An RGB image and its depth map, float32 (H, W): metres for metric rows, else median-relative; 0 = invalid.

    `depth_is_metric` and `source_id` are the row's, when its table has them. Not a dict, so the Trainer's removal of
    columns the model does not take passes it through to the collator untouched.
    """

    image: Image.Image
    depth: np.ndarray
    depth_is_metric: bool | None = None
    source_id: str | None = None
    # The camera (fx, fy, cx, cy) in the image's pixels, when the row's image block has one (rendered worlds do);
    # a horizontal flip mirrors cx with the image.
    intrinsics: tuple[float, float, float, float] | None = None


def transform_rgbd_pair(
    image: Image.Image, depth: np.ndarray, horizontal_flip: bool, rotation_degrees: float
) -> tuple[Image.Image, np.ndarray]:
    """One geometric transform applied identically to an image and its depth map.

    The depth map may have another resolution than the image, but not another aspect ratio: both are flipped and
    rotated about their own centre, which is the same transform of the scene. Depth is resampled nearest (every value
    is a real prediction, none is invented across an edge) and is 0 (invalid) where the rotated frame falls outside
    the original; the image is bilinear and black there. Rotation is counter-clockwise about the centre, like
    `PIL.Image.rotate`. No vertical flip: upside-down scenes are not physically plausible.
    """
    depth = np.asarray(depth, dtype=np.float32)
    depth_height, depth_width = depth.shape
    if abs(depth_width - depth_height * image.width / image.height) > 1:
        raise ValueError(
            f"Depth {depth.shape} does not have the aspect ratio of the image {(image.height, image.width)}."
        )
    if horizontal_flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        depth = depth[:, ::-1]
    if rotation_degrees:
        image = image.rotate(rotation_degrees, resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))
        depth_image = Image.fromarray(np.ascontiguousarray(depth))  # mode F: float32 kept exactly
        depth = np.asarray(depth_image.rotate(rotation_degrees, resample=Image.Resampling.NEAREST, fillcolor=0.0))
    return image, np.ascontiguousarray(depth, dtype=np.float32)


def augment_rgbd_pair(
    image: Image.Image,
    depth: np.ndarray,
    rng: np.random.Generator,
    max_rotation_degrees: float = DEFAULT_MAX_ROTATION_DEGREES,
    flip_probability: float = 0.5,
) -> tuple[Image.Image, np.ndarray]:
    """A random horizontal flip and a rotation in [-max, max] degrees, the same for image and depth."""
    return transform_rgbd_pair(image, depth, *draw_augmentation(rng, max_rotation_degrees, flip_probability))


def draw_augmentation(
    rng: np.random.Generator, max_rotation_degrees: float, flip_probability: float = 0.5
) -> tuple[bool, float]:
    """(horizontal flip, rotation in degrees) of one pair, in that order from `rng`."""
    horizontal_flip = bool(rng.random() < flip_probability)
    return horizontal_flip, float(rng.uniform(-max_rotation_degrees, max_rotation_degrees))


def row_intrinsics(row: dict) -> tuple[float, float, float, float] | None:
    """The camera of a row's first image block (`trl_layout.INTRINSICS_KEY`), or None."""
    blocks = image_blocks(row.get("messages") or [])
    return parse_intrinsics(blocks[0].get(INTRINSICS_KEY)) if blocks else None


def decode_first_image(value) -> Image.Image:
    """An image cell (see `decode_image_cell`); an `images` column holds a list, whose first image is the scene's."""
    return decode_image_cell(value[0] if isinstance(value, (list, tuple)) else value)


def image_column_of(rows) -> str:
    for name in ("images", "image"):
        if name in rows.column_names:
            return name
    raise ValueError(f"RGB-D pairs need an 'images' or 'image' column; the columns are {rows.column_names}.")


def without_image_decoding(dataset, column: str):
    """`dataset` with its image column (of images, or of lists of images) left as raw `{"bytes", "path"}` cells, for
    our own decoding (upright RGB, with its guards) instead of `datasets`' PIL objects."""
    from datasets import Image as ImageFeature
    from datasets import LargeList, List

    feature = dataset.features[column]
    if isinstance(feature, ImageFeature):
        return dataset.cast_column(column, ImageFeature(decode=False))
    if isinstance(feature, (List, LargeList)) and isinstance(feature.feature, ImageFeature):
        return dataset.cast_column(column, List(ImageFeature(decode=False)))
    return dataset


def load_rgbd_pair(
    row: dict,
    augment: bool = False,
    rng: np.random.Generator | None = None,
    max_rotation_degrees: float = DEFAULT_MAX_ROTATION_DEGREES,
) -> tuple[Image.Image, np.ndarray]:
    """A stored row -> (RGB image, depth float32 (H, W)), optionally augmented (see `augment_rgbd_pair`).

    Depth is in metres for metric rows (`depth_is_metric`), else median-relative (1.0 = the image median); 0 = invalid.
    The image is the first of `row["images"]` (or an older table's `row["image"]`), decoded (PIL) or raw
    (`{"bytes", "path"}`); the depth is its image block's.
    """
    image = decode_first_image(row["images"] if "images" in row else row["image"])
    depth = first_depth(row)
    if depth is None:
        raise ValueError(f"Row {row.get('source_id', '')!r} has no depth in its first image block.")
    depth = decode_depth_cell(depth)
    if augment:
        rng = rng if rng is not None else np.random.default_rng()
        image, depth = augment_rgbd_pair(image, depth, rng, max_rotation_degrees)
    return image, depth


class RGBDPairs(torch.utils.data.Dataset):
    """RGB-D pairs as a torch Dataset of `RGBDPair`s, decoded (and augmented) at load time.

    `pairs`: what `python -m training.make_rgbd_pairs` writes (its output folder), any folder or file
    `training.data_files.load_rows` reads, or a `datasets.Dataset`, with an `images` column (the first is used) and depth in
    the image blocks of `messages` (or older `image` and `depth` columns); `indices` picks rows (default: all). With
    `augment=True` each item gets a random horizontal flip and rotation (up to `max_rotation_degrees`; 0: flips only)
    drawn from (seed, epoch, position): reproducible, the same in any DataLoader worker and on every rank, new every
    epoch once `set_epoch` is called, and the same again on resume.
    """

    def __init__(
        self,
        pairs,
        indices: Sequence[int] | None = None,
        augment: bool = False,
        seed: int = 0,
        max_rotation_degrees: float = DEFAULT_MAX_ROTATION_DEGREES,
    ):
        from datasets import Dataset

        rows = pairs if isinstance(pairs, Dataset) else load_rows(pairs)
        image_column = image_column_of(rows)
        if not has_depth_layout(rows.column_names):
            raise ValueError(f"RGB-D pairs need depth in `messages`; the columns are {rows.column_names}.")
        columns = [name for name in (image_column, *PAIR_COLUMNS) if name in rows.column_names]
        self.rows = without_image_decoding(rows.select_columns(columns), image_column)
        self.indices = list(range(len(rows))) if indices is None else [int(index) for index in indices]
        self.augment = augment
        self.seed = seed
        self.max_rotation_degrees = max_rotation_degrees
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> RGBDPair:
        row = self.rows[self.indices[index]]
        image, depth = load_rgbd_pair(row)
        flip = False
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            flip, degrees = draw_augmentation(rng, self.max_rotation_degrees)
            image, depth = transform_rgbd_pair(image, depth, flip, degrees)
        # A rotation about the image centre keeps K (exactly when the principal point is the centre, as rendered).
        camera = row_intrinsics(row)
        if camera is not None and flip:
            fx, fy, cx, cy = camera
            camera = (fx, fy, image.width - 1 - cx, cy)
        return RGBDPair(image, depth, row.get("depth_is_metric"), row.get("source_id"), camera)
