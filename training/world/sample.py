"""One sample of the world: a scene sampled, rendered and asked about, and the encodings a dataset row stores."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np
from PIL import Image

from training.world.questions import Question, candidate_questions, select_questions
from training.world.render import Rendering, render, scene_metadata
from training.world.scene import Scene
from training.world.scene_sampling import SPLIT_IDS, sample_scene


@dataclass
class Sample:
    scene: Scene
    rendering: Rendering
    metadata: dict
    questions: list[Question]


def make_sample(
    split: str,
    index: int,
    seed: int,
    size: int,
    questions_per_scene: int = 6,
    type_counts: dict[str, int] | None = None,
    supersample: int = 1,
) -> Sample:
    """Sample, render and ask questions about one scene; deterministic in (split, index, seed, size)."""
    scene = sample_scene(split, index, seed)
    rendering = render(scene, size, supersample=supersample)
    # Question sampling has its own stream so that it cannot perturb scene sampling (and vice versa).
    question_rng = np.random.default_rng([seed, SPLIT_IDS[split], index, 1])
    candidates = candidate_questions(scene, rendering, question_rng)
    counts = {} if type_counts is None else type_counts
    questions = select_questions(candidates, questions_per_scene, counts, question_rng)
    return Sample(scene, rendering, scene_metadata(scene, rendering), questions)


def encode_png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def metadata_json(metadata: dict) -> str:
    return json.dumps(metadata, sort_keys=True, separators=(",", ":"))
