"""Controls that every result of the experiment is read against (issue 21): a constant guess and depth that carries
no information about the scene.

- `fit_constant_answers` fits one answer per question type on the training answers (the δ₁-maximising length for
  metric types, the majority option position for choices, the majority answer otherwise); `constant_predictions`
  answers a test set with it, scored by the same code as the models (`python -m training.evaluate constant`).
- `override_depth` evaluates a depth model with its depth taken from another scene (`shuffled`) or replaced by one
  uninformative map (`constant`) (`python -m training.evaluate run --depth-override ...`; `--no-depth` removes it).
- `with_uninformative_depth` gives the training rows of the capacity-matched control: the same depth modules, rows
  and steps as the depth arm, every depth map the same constant.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, replace

import numpy as np


# The capacity-matched control's depth: the same value at every pixel of every image, so the depth path carries no
# information about the scene while every depth module, parameter and step is there.
UNINFORMATIVE_DEPTH_M = 4.0
DEPTH_OVERRIDES = ("shuffled", "constant")


# ---- the constant baseline -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConstantAnswer:
    """One question type's constant answer: a length (`metres`), a fixed answer (`text`), or an option position
    (`position`: the i-th option of every question; for orders, the options permuted by `position`)."""

    question_type: str
    metres: float | None = None
    text: str | None = None
    position: tuple[int, ...] | None = None

    def describe(self) -> dict:
        """The JSON form results.json records (a position as a list)."""
        fields = {key: value for key, value in asdict(self).items() if value is not None and key != "question_type"}
        return {key: list(value) if isinstance(value, tuple) else value for key, value in fields.items()}

    def answer(self, choices: list[str]) -> str:
        if self.metres is not None:
            from training.world import format_metres  # exactly the format the models are trained to answer in

            return format_metres(self.metres)
        if self.text is not None:
            return self.text
        if len(self.position) == 1:
            return choices[self.position[0]] if self.position[0] < len(choices) else ""
        if sorted(self.position) != list(range(len(choices))):
            return ""
        return ", ".join(choices[i] for i in self.position)


# δ₁'s ratio: a length is right when max(pred/gt, gt/pred) is below it (`training.evaluate` scores by it). Here,
# beside the constant fitted for it, so that light modules (the token probes) read it without the evaluator.
DELTA1_THRESHOLD = 1.25


def delta1_maximising_constant(values: np.ndarray, threshold: float) -> float:
    """The length c that the most `values` are within δ₁ of (max(v/c, c/v) < threshold): exact, by a sliding window
    of width 2·log(threshold) over the sorted log values (the window's geometric centre is the constant)."""
    logs = np.sort(np.log(np.asarray(values, dtype=np.float64)))
    if len(logs) == 0:
        raise ValueError("No training answers to fit a constant to.")
    width = 2 * math.log(threshold)
    ends = np.searchsorted(logs, logs + width, side="left")  # strict: a ratio of exactly 1.25 is not within δ₁
    best = int(np.argmax(ends - np.arange(len(logs))))
    return float(math.exp(logs[best] + width / 2 - 1e-9))


def fit_constant_answers(rows, delta1_threshold: float) -> dict[str, ConstantAnswer]:
    """Per question type of `rows` (columns question_type, answer, answer_value, choices), the constant answer that
    scores best on them: the δ₁-maximising length (δ₁ at `delta1_threshold`, the metric it is scored by), the
    majority option position (choices, orders), or the majority answer (counts, colours, shapes)."""
    by_type: dict[str, list[dict]] = {}
    for question_type, answer, value, choices in zip(
        rows["question_type"], rows["answer"], rows["answer_value"], rows["choices"]
    ):
        by_type.setdefault(question_type, []).append({"answer": answer, "value": value, "choices": choices})
    constants = {}
    for question_type, items in by_type.items():
        if all(item["value"] is not None for item in items):
            values = np.array([item["value"] for item in items])
            constants[question_type] = ConstantAnswer(
                question_type, metres=delta1_maximising_constant(values, delta1_threshold)
            )
        elif question_type == "depth_order":
            positions = Counter(
                tuple(item["choices"].index(part.strip()) for part in item["answer"].split(",")) for item in items
            )
            constants[question_type] = ConstantAnswer(question_type, position=positions.most_common(1)[0][0])
        elif all(item["choices"] for item in items):  # options per question: the majority position
            positions = Counter((item["choices"].index(item["answer"]),) for item in items)
            constants[question_type] = ConstantAnswer(question_type, position=positions.most_common(1)[0][0])
        else:
            answers = Counter(item["answer"] for item in items)
            constants[question_type] = ConstantAnswer(question_type, text=answers.most_common(1)[0][0])
    return constants


def constant_predictions(constants: dict[str, ConstantAnswer], samples) -> list[str]:
    """The constant baseline's answer to every sample (question types it was not fitted on get an empty answer,
    which counts as unreadable)."""
    return [
        constants[s.question_type].answer(list(s.choices)) if s.question_type in constants else "" for s in samples
    ]


# ---- depth controls ---------------------------------------------------------------------------------------------
def scene_of(sample) -> str:
    """The scene a world sample was asked about (`SpatialSample.id` is "scene_id/row")."""
    return sample.id.rpartition("/")[0]


def override_depth(samples: list, mode: str, seed: int = 0) -> list:
    """`samples` with their depth replaced: `shuffled` gives each the depth of a sample of another scene (a seeded
    derangement over scenes: every map comes from a different scene than its question's), `constant` one
    `UNINFORMATIVE_DEPTH_M` map of the same size."""
    from training.benchmarks import load_depth

    if mode not in DEPTH_OVERRIDES:
        raise ValueError(f"Unknown depth override {mode!r}: expected one of {', '.join(DEPTH_OVERRIDES)}.")
    if mode == "constant":
        return [replace(s, depth=np.full_like(load_depth(s.depth), UNINFORMATIVE_DEPTH_M)) for s in samples]
    scenes = sorted({scene_of(s) for s in samples})
    if len(scenes) < 2:
        raise ValueError("Shuffled depth needs samples from at least two scenes.")
    # A random cyclic shift of a random order of the scenes: no scene keeps its own depth.
    rng = np.random.default_rng(seed)
    order = [scenes[i] for i in rng.permutation(len(scenes))]
    donor_scene = {scene: order[(index + 1) % len(order)] for index, scene in enumerate(order)}
    first_sample = {}
    for s in samples:
        first_sample.setdefault(scene_of(s), s)
    # A depth map goes with its camera: another scene's depth is placed with that scene's intrinsics.
    donors = {scene: first_sample[donor_scene[scene]] for scene in scenes}
    return [replace(s, depth=donors[scene_of(s)].depth, intrinsics=donors[scene_of(s)].intrinsics) for s in samples]


def median_depth(samples) -> float:
    """The median, over scenes, of each scene's median valid depth (its first sample's map): the metres at which a
    processor reads relative depth (`relative_depth_median`), fitted on training samples like the constants."""
    from training.benchmarks import load_depth

    first_sample = {}
    for s in samples:
        if s.depth is not None:
            first_sample.setdefault(scene_of(s), s)
    medians = []
    for s in first_sample.values():
        depth = load_depth(s.depth)
        if (depth > 0).any():
            medians.append(float(np.median(depth[depth > 0])))
    if not medians:
        raise ValueError("No sample with valid depth to take a median depth from.")
    return float(np.median(medians))


def _constant_depth_png(shape: tuple[int, int], cache: dict) -> bytes:
    if shape not in cache:
        from training.depth_png import encode_depth_png

        cache[shape] = encode_depth_png(np.full(shape, UNINFORMATIVE_DEPTH_M, dtype=np.float32))
    return cache[shape]


def with_uninformative_depth(rows):
    """World rows (a `datasets.Dataset`) whose every depth map is the constant `UNINFORMATIVE_DEPTH_M` map of its
    size, in a `depth` column or inside the image blocks of `messages`: the capacity-matched control's training
    data."""
    from training.depth_png import decode_depth_cell
    from training.trl_layout import map_row_depths

    cache: dict = {}

    def replace_row(row: dict) -> dict:
        return map_row_depths(row, lambda cell: _constant_depth_png(decode_depth_cell(cell).shape, cache))

    return rows.map(replace_row, desc="constant depth")
