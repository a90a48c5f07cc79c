"""Alignment data: the distinct pairs of a table (one per scene) and their batches (a centred square, processed)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from processing_depth import Qwen2_5_VLDepthProcessor, resized_intrinsics
from training.depth_png import decode_depth_cell
from training.make_rgbd_pairs import RGBDPair, decode_first_image
from training.make_rgbd_pairs.reader import row_intrinsics
from training.trl_layout import first_depth, has_depth_layout


def select_pair_rows(table, metric_depth_only: bool = False) -> list[int]:
    """Row indices that are distinct RGB-D pairs: one per `scene_id` when the column exists.

    The world writes one row per question, so a scene's image repeats; point-depth questions draw a marker on their
    image, so a row without a marker is preferred as the scene's pair.
    """
    if not has_depth_layout(table.column_names):
        raise ValueError(f"The pairs need depth in `messages`; the columns are {table.column_names}.")
    indices = list(range(len(table)))
    if metric_depth_only and "depth_is_metric" in table.column_names:
        is_metric = list(table["depth_is_metric"])
        indices = [i for i in indices if is_metric[i]]
    if "scene_id" not in table.column_names:
        return indices
    scene_ids = list(table["scene_id"])
    markers = list(table["marker"]) if "marker" in table.column_names else [None] * len(table)
    chosen: dict[str, int] = {}
    for index in indices:
        scene = scene_ids[index]
        if scene not in chosen or (markers[chosen[scene]] and not markers[index]):
            chosen[scene] = index
    return sorted(chosen.values())


def center_square(image: Image.Image, depth: np.ndarray) -> tuple[Image.Image, np.ndarray]:
    """The centred square of both (depth may have another resolution of the same aspect ratio)."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    depth_height, depth_width = depth.shape
    depth_side = min(depth_height, depth_width)
    depth_top, depth_left = (depth_height - depth_side) // 2, (depth_width - depth_side) // 2
    return image, depth[depth_top : depth_top + depth_side, depth_left : depth_left + depth_side]


class RGBDPairCollator:
    """Pairs -> `pixel_values`, `image_grid_thw`, `depth_values` through the depth processor (no text).

    Every image becomes a `image_size` square (centre crop, bicubic resize; the image processor's pixel bounds still
    apply), so all images of a batch have the same grid and the depth encoder runs them as one SDPA batch. Depth keeps
    its resolution: the processor resizes it to the image by nearest neighbour (no invented depths at edges) and lays
    it out patch by patch like `pixel_values`.
    """

    def __init__(self, processor: Qwen2_5_VLDepthProcessor, image_size: int | None = 224):
        if not processor.fusion.has_depth:
            raise ValueError(f"The processor has depth_fusion={processor.depth_fusion!r}: it drops depth.")
        self.processor = processor
        self.image_size = image_size

    def __call__(self, pairs: Sequence[RGBDPair | dict | tuple]) -> dict[str, torch.Tensor]:
        images, depths, cameras = [], [], []
        for pair in pairs:
            camera = None
            if isinstance(pair, dict):
                image, depth = pair["images"] if "images" in pair else pair["image"], first_depth(pair)
                camera = row_intrinsics(pair)
            elif isinstance(pair, RGBDPair):
                image, depth, camera = pair.image, pair.depth, pair.intrinsics
            else:
                image, depth = pair
            image, depth = decode_first_image(image), decode_depth_cell(depth)
            if self.image_size is not None:
                width, height = image.size
                image, depth = center_square(image, depth)
                if camera is not None:  # the crop moves the principal point; the processor handles the resize
                    fx, fy, cx, cy = camera
                    camera = (fx, fy, cx - (width - image.size[0]) // 2, cy - (height - image.size[1]) // 2)
                    camera = resized_intrinsics(camera, image.size[::-1], (self.image_size, self.image_size))
                image = image.resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
            images.append(image)
            depths.append(depth)
            cameras.append(camera)
        known = any(camera is not None for camera in cameras)
        batch = self.processor(images=images, depth=depths, intrinsics=cameras if known else None, return_tensors="pt")
        keys = ("pixel_values", "image_grid_thw", "depth_values", *(("depth_intrinsics",) if known else ()))
        return {key: batch[key] for key in keys}
