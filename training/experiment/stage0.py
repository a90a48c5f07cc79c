"""The stand-in base's own pieces: stage 0's scene descriptions, and its re-export as a plain Qwen2.5-VL folder."""

from __future__ import annotations

import json
import os
from pathlib import Path


def scene_descriptions(rows):
    """One description row per scene of `rows` (a `datasets.Dataset` of world rows without point markers), on the
    image of that scene's first row: the question `DESCRIBE_QUESTION`, the answer `describe_objects`."""
    from training.world import DESCRIBE_QUESTION, describe_objects

    first_of_scene: dict[str, int] = {}
    for index, (scene_id, marker) in enumerate(zip(rows["scene_id"], rows["marker"])):
        if marker:
            raise ValueError(
                f"Row {index} ({scene_id}) has a point marker drawn on its image: not a plain scene view."
            )
        first_of_scene.setdefault(scene_id, index)

    def describe(row: dict) -> dict:
        answer = describe_objects(json.loads(row["scene"])["objects"])
        messages = [
            {
                "role": "user",
                "content": [{"type": "image", "text": None}, {"type": "text", "text": DESCRIBE_QUESTION}],
            },
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ]
        return {
            "messages": messages, "question_type": "describe", "question": DESCRIBE_QUESTION, "answer": answer,
            "answer_value": None, "choices": [], "unit": "", "object_ids": [],
        }  # fmt: skip

    return rows.select(sorted(first_of_scene.values())).map(describe)


def save_as_plain_qwen2_5_vl(depth_folder: Path, out: Path) -> None:
    """Re-save a `depth_fusion="none"` model as a plain Qwen2.5-VL folder (transformers' own classes, no remote code),
    so the later stages start from exactly what they would get from a published checkpoint."""
    from transformers import AutoImageProcessor, AutoTokenizer, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from configuration_depth import Qwen2_5_VLDepthConfig

    depth_config = Qwen2_5_VLDepthConfig.from_pretrained(depth_folder)
    config = Qwen2_5_VLConfig(
        text_config=depth_config.text_config.to_dict(),
        vision_config=depth_config.vision_config.to_dict(),
        image_token_id=depth_config.image_token_id,
        video_token_id=depth_config.video_token_id,
        vision_start_token_id=depth_config.vision_start_token_id,
        vision_end_token_id=depth_config.vision_end_token_id,
        tie_word_embeddings=depth_config.tie_word_embeddings,
    )
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(depth_folder, config=config)
    staging = out.with_name(out.name + ".tmp")
    model.save_pretrained(staging)
    AutoTokenizer.from_pretrained(depth_folder, trust_remote_code=False).save_pretrained(staging)
    AutoImageProcessor.from_pretrained(depth_folder).save_pretrained(staging)
    os.replace(staging, out)
