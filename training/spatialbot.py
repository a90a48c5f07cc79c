"""SpatialBot's baseline as an experiment arm: depth shown to an RGB-only model as a second picture.

The "image" arm of the experiment (`--depth_fusion image` in `training.sft` and `training.build_depth_model`) trains
a model without depth modules (`config.depth_fusion="none"`). `DepthAsImageProcessor` draws each image's depth map as
a grey picture (log-depth over a fixed 0.1-100 m range, invalid pixels black) and puts it right after its image, as a
second image of the prompt, through the RGB tower. An image without depth gets no picture.

    from training.spatialbot import DepthAsImageProcessor

    processor = DepthAsImageProcessor.from_pretrained("runs/sft-image/model")
    inputs = processor(images=[image], text=[prompt], depth=[depth], return_tensors="pt")

It is not part of the shipped remote code: a folder it saves names it (`processor_class` in processor_config.json)
and loads through `load_trained_processor`, which `training.evaluate` uses for every model folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from transformers import AutoProcessor
from transformers.image_utils import make_flat_list_of_images
from transformers.processing_utils import ProcessorMixin

from configuration_depth import DEPTH_FUSIONS, RGB_ONLY_FUSION, DepthFusion
from processing_depth import Qwen2_5_VLDepthProcessor


# The arm's name where training scripts take a fusion mode; its model is RGB-only.
DEPTH_AS_IMAGE = "image"
# The arm's row, as the processor reads it (depth is read, and drawn; no depth tokens, no depth modules).
DEPTH_AS_IMAGE_FUSION = DepthFusion(
    name=DEPTH_AS_IMAGE,
    summary="drawn as a second picture through the RGB tower of an RGB-only model (SpatialBot's baseline)",
    fused_into="pixel_values",
)
# Every arm training scripts take: the model's fusion modes, then this one.
TRAINING_ARMS = (*DEPTH_FUSIONS, DEPTH_AS_IMAGE)
ARM_SUMMARIES = {
    **{name: fusion.summary for name, fusion in DEPTH_FUSIONS.items()},
    DEPTH_AS_IMAGE: DEPTH_AS_IMAGE_FUSION.summary,
}
# Log-depth is drawn over this range (the model config's default encoding range) as 8-bit grey.
DEPTH_PICTURE_RANGE_METERS = (0.1, 100.0)
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"


def depth_picture(depth: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """Metric depth (metres, 0 = invalid) as an RGB picture of `size` (W, H): log-depth over a fixed range as grey.

    The range is fixed, as in the depth encoder's input, so a grey level means the same distance in every picture;
    level 0 is kept for "no measurement".
    """
    near, far = DEPTH_PICTURE_RANGE_METERS
    valid = depth > 0
    level = (np.log(np.clip(depth, near, far)) - np.log(near)) / (np.log(far) - np.log(near))
    grey = np.where(valid, 1 + np.rint(level * 254), 0).astype(np.uint8)
    picture = Image.fromarray(grey, mode="L").resize(size, Image.Resampling.NEAREST)
    return picture.convert("RGB")


class DepthAsImageProcessor(Qwen2_5_VLDepthProcessor):
    r"""
    The processor of the "image" arm, for an RGB-only model: depth in, as `Qwen2_5_VLDepthProcessor` takes it (per
    image, metres or millimetres, estimated when missing and `depth_estimator` is set); out, each depth map as a second
    picture right after its image (`<|vision_end|><|vision_start|>` and the picture's own image placeholders). No
    `depth_values`: the pictures are in `pixel_values` and `image_grid_thw`, one entry each.

    `depth_fusion` is `"image"`, the arm's name; the model's own `config.depth_fusion` is `"none"`.
    """

    # An experiment arm, not remote code: its folders load through `load_trained_processor`.
    _auto_class = None

    def __init__(
        self, image_processor=None, tokenizer=None, chat_template=None, depth_estimator=None, invalid_depth="mask"
    ):
        super().__init__(image_processor, tokenizer, chat_template, RGB_ONLY_FUSION, depth_estimator, invalid_depth)
        self.depth_fusion = DEPTH_AS_IMAGE

    @property
    def fusion(self) -> DepthFusion:
        return DEPTH_AS_IMAGE_FUSION

    def _process_images(self, images, **kwargs):
        depth_maps = self.depth_maps(images, kwargs.pop("depth", None), kwargs.pop("depth_estimator_device", None))
        kwargs.pop("intrinsics", None)  # a depth picture is drawn in its image's pixels: the camera changes nothing
        pictures = []
        for image, depth in zip(make_flat_list_of_images(images), depth_maps):
            pictures.append(image)
            if depth is not None:
                pictures.append(depth_picture(depth, self._to_pil(image).size))
        processed = self.image_processor(pictures, **kwargs)
        replacements, index = [], 0
        for depth in depth_maps:
            replacement = self.replace_image_token(processed, image_idx=index)
            if depth is not None:  # the template wraps the image in a vision block; the picture gets its own
                index += 1
                replacement += VISION_END + VISION_START + self.replace_image_token(processed, image_idx=index)
            replacements.append(replacement)
            index += 1
        return processed, replacements


def model_depth_fusion(arm: str) -> str:
    """The model config's `depth_fusion` of a training arm: the "image" arm's model is RGB-only."""
    return RGB_ONLY_FUSION if arm == DEPTH_AS_IMAGE else arm


def processor_for_arm(pretrained_model_name_or_path: str | Path, arm: str, **kwargs) -> Qwen2_5_VLDepthProcessor:
    """The processor a training arm starts from: SpatialBot's for "image", the shipped one for the model's modes."""
    if arm == DEPTH_AS_IMAGE:
        return DepthAsImageProcessor.from_pretrained(pretrained_model_name_or_path, **kwargs)
    return Qwen2_5_VLDepthProcessor.from_pretrained(pretrained_model_name_or_path, depth_fusion=arm, **kwargs)


def load_trained_processor(pretrained_model_name_or_path: str | Path):
    """A trained model folder's processor: `DepthAsImageProcessor` if it saved the folder, else `AutoProcessor`'s
    (the folder's remote code)."""
    processor_dict, _ = ProcessorMixin.get_processor_dict(pretrained_model_name_or_path)
    if processor_dict.get("processor_class") == DepthAsImageProcessor.__name__:
        return DepthAsImageProcessor.from_pretrained(pretrained_model_name_or_path)
    return AutoProcessor.from_pretrained(pretrained_model_name_or_path, trust_remote_code=True)
