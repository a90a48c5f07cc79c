"""Spatial questions about a rendered scene, with answers computed from the geometry that made its pixels.

``candidate_questions`` lists every unambiguous question of each of the twelve ``QUESTION_TYPES`` (metric distances and
sizes, nearer/farther, left/right, above/below, the depth at a marked point, colour, shape, count), phrased from
``TEMPLATES``; ``select_questions`` picks a scene's few so that the types stay balanced over a dataset. Stage 0's dense
caption (``DESCRIBE_QUESTION``, ``describe_objects``) lives here too.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from training.world.render import Rendering, scene_metadata
from training.world.scene import Scene


@dataclass
class Question:
    question_type: str
    question: str
    answer: str
    answer_value: float | None
    choices: list[str]
    unit: str
    object_ids: list[int]
    marker: tuple[int, int] | None = None  # (u, v) pixel marked on the image for point_depth

    def to_dict(self) -> dict:
        return {
            "question_type": self.question_type,
            "question": self.question,
            "answer": self.answer,
            "answer_value": self.answer_value,
            "choices": list(self.choices),
            "unit": self.unit,
            "object_ids": list(self.object_ids),
            "marker": list(self.marker) if self.marker is not None else [],
        }


QUESTION_TYPES = (
    "distance_to_camera",
    "distance_between",
    "closer",
    "depth_order",
    "object_height",
    "object_width",
    "left_right",
    "above_below",
    "point_depth",
    "color",
    "shape",
    "count",
)
TEMPLATES = {
    "distance_to_camera": (
        "How far is the centre of the {a} from the camera, in metres?",
        "What is the distance between the camera and the centre of the {a}? Answer in metres.",
        "Estimate how many metres separate the camera from the centre of the {a}.",
        "How many metres away from the camera is the centre of the {a}?",
    ),
    "distance_between": (
        "How far apart are the {a} and the {b}? Give the centre-to-centre distance in metres.",
        "What is the distance in metres between the centres of the {a} and the {b}?",
        "Measured between their centres, how many metres separate the {a} from the {b}?",
    ),
    "closer": (
        "Which is closer to the camera: the {a} or the {b}?",
        "Between the {a} and the {b}, which one is nearer to the camera?",
        "Which object is nearer to the viewer, the {a} or the {b}?",
    ),
    "depth_order": (
        "Order the {a}, the {b} and the {c} from nearest to farthest from the camera.",
        "Sort these objects by distance from the camera, nearest first: the {a}, the {b}, the {c}.",
        "List the {a}, the {b} and the {c} from closest to the camera to farthest.",
    ),
    "object_height": (
        "How tall is the {a}, in metres?",
        "What is the real height of the {a} in metres?",
        "Estimate the height of the {a} in metres.",
    ),
    "object_width": (
        "How wide is the {a}, in metres?",
        "What is the real width of the {a} (its diameter or side length) in metres?",
        "Estimate the width of the {a} in metres.",
    ),
    "left_right": (
        "From the camera's viewpoint, is the {a} to the left or to the right of the {b}?",
        "In the image, is the {a} left or right of the {b}?",
        "Does the {a} appear to the left or to the right of the {b} in the picture?",
    ),
    "above_below": (
        "In the image, is the {a} above or below the {b}?",
        "Does the {a} appear above or below the {b} in the picture?",
        "From the camera's viewpoint, is the {a} higher (above) or lower (below) in the image than the {b}?",
    ),
    "point_depth": (
        "What is the depth, in metres, at the point marked by the red circle?",
        "How far from the camera along its viewing direction is the surface inside the red circle? Answer in metres.",
        "Estimate the metric depth (distance along the optical axis) of the point marked with the red circle.",
    ),
    "color": (
        "What colour is the {shape}?",
        "What is the colour of the {shape}?",
        "Which colour does the {shape} have?",
    ),
    "shape": (
        "What shape is the {color} object?",
        "What kind of shape is the {color} object?",
        "Which geometric shape is the {color} object?",
    ),
    "count": (
        "How many objects are there?",
        "How many objects are standing on the ground?",
        "Count the objects in the scene.",
    ),
}
# Minimum separations for choice questions, so the answer is unambiguous to a careful observer.
CLOSER_MIN_GAP_M = 0.25
CLOSER_MIN_GAP_REL = 0.10
IMAGE_MIN_GAP = 0.05  # fraction of the image width/height
REPEAT_PENALTY = 2


# Stage 0's dense caption: every object's colour and shape, in image order (a grounding signal on every object, where a
# question supervises one word about one object).
DESCRIBE_QUESTION = "Describe the scene: list the objects from left to right."


def describe_objects(objects: list[dict]) -> str:
    """The objects of `scene_metadata` as "green cone, orange cube, cyan cube", left to right in the image."""
    return ", ".join(obj["description"] for obj in sorted(objects, key=lambda obj: obj["center_pixel"][0]))


def question_corpus() -> str:
    """Every phrasing of every question type about every object, the scene description, and answers: the text a
    stand-in base's tokenizer is trained on, so each word of the world is one token, as in a real model's vocabulary
    (a tokenizer that splits "red" into "re" + "d" makes a from-scratch model learn to spell before it can look)."""
    from training.world.scene import COLORS, SHAPES

    objects = [f"{color} {shape}" for color in COLORS for shape in SHAPES]
    # Answers start a line of the chat template (no leading space), and so do its role names.
    answers = [*COLORS, *SHAPES, *objects, "left", "right", "above", "below", "system", "user", "assistant"]
    lines = [DESCRIBE_QUESTION, ", ".join(objects), "You are a helpful assistant.", *answers] * 20
    for templates in TEMPLATES.values():
        for index, template in enumerate(templates):
            for offset in range(len(objects)):
                a, b, c = (objects[(offset + step * (index + 1)) % len(objects)] for step in range(3))
                lines.append(template.format(a=a, b=b, c=c, shape=SHAPES[offset % len(SHAPES)], color=a.split()[0]))
    lines += [format_metres(value / 100) for value in range(0, 3000, 7)]
    return "\n".join(lines)


def format_metres(value: float) -> str:
    return f"{value:.2f} m"


def marker_radius(width: int) -> int:
    return max(3, round(width / 56))


def draw_marker(rgb: np.ndarray, u: int, v: int) -> np.ndarray:
    """Copy of ``rgb`` with a red ring (white halo) centred on pixel (u, v); the ring leaves the point visible."""
    marked = rgb.copy()
    radius = marker_radius(rgb.shape[1])
    reach = radius + 2
    rows = np.arange(max(v - reach, 0), min(v + reach + 1, rgb.shape[0]))
    cols = np.arange(max(u - reach, 0), min(u + reach + 1, rgb.shape[1]))
    distance = np.sqrt((rows[:, None] - v) ** 2 + (cols[None, :] - u) ** 2)
    patch = marked[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    patch[(distance > radius + 0.7) & (distance <= radius + 1.7)] = (255, 255, 255)
    patch[(distance > radius - 0.8) & (distance <= radius + 0.7)] = (230, 0, 0)
    return marked


def _pick_marker_pixels(rendering: Rendering, rng: np.random.Generator, count: int) -> list[tuple[int, int]]:
    """Valid pixels whose 5x5 neighbourhood is one smooth surface, so the marked depth is well defined."""
    depth, instance = rendering.depth, rendering.instance
    height, width = depth.shape
    margin = marker_radius(width) + 3
    centre = (slice(margin, height - margin), slice(margin, width - margin))
    core_depth, core_instance = depth[centre], instance[centre]
    smooth = core_depth > 0
    low, high = core_depth.copy(), core_depth.copy()
    for drow, dcol in itertools.product((-2, -1, 0, 1, 2), repeat=2):
        shifted = (slice(margin + drow, height - margin + drow), slice(margin + dcol, width - margin + dcol))
        smooth &= (instance[shifted] == core_instance) & (depth[shifted] > 0)
        low, high = np.minimum(low, depth[shifted]), np.maximum(high, depth[shifted])
    smooth &= (high - low) <= 0.03 * core_depth
    rows, cols = np.nonzero(smooth)
    on_object = core_instance[rows, cols] >= 0
    pixels = []
    for _ in range(count):
        pool = np.flatnonzero(on_object if (on_object.any() and rng.random() < 0.5) else ~on_object)
        if len(pool) == 0:
            pool = np.arange(len(rows))
        if len(pool) == 0:
            break
        pick = int(pool[rng.integers(len(pool))])
        pixels.append((int(cols[pick]) + margin, int(rows[pick]) + margin))
    return pixels


def candidate_questions(scene: Scene, rendering: Rendering, rng: np.random.Generator) -> dict[str, list[Question]]:
    """All answerable questions for a rendered scene, grouped by type (one random phrasing each)."""
    meta = scene_metadata(scene, rendering)
    objects = meta["objects"]
    height, width = rendering.depth.shape
    ids = range(len(objects))
    distance = [o["distance_to_camera"] for o in objects]
    desc = [o["description"] for o in objects]
    centres = [np.asarray(o["center_world"]) for o in objects]

    def phrase(kind: str, **names) -> str:
        templates = TEMPLATES[kind]
        return templates[int(rng.integers(len(templates)))].format(**names)

    def clearly_closer(i: int, j: int) -> bool:
        gap = abs(distance[i] - distance[j])
        return gap >= CLOSER_MIN_GAP_M and gap >= CLOSER_MIN_GAP_REL * min(distance[i], distance[j])

    out: dict[str, list[Question]] = {kind: [] for kind in QUESTION_TYPES}

    def ask(kind, ids, answer, value=None, choices=(), marker=None, **names) -> None:
        """Add a candidate; a numeric ``value`` makes it a metric question (unit "m", answer "2.35 m")."""
        unit = "m" if value is not None else ""
        out[kind].append(Question(kind, phrase(kind, **names), answer, value, list(choices), unit, list(ids), marker))

    for i in ids:
        ask("distance_to_camera", [i], format_metres(distance[i]), distance[i], a=desc[i])
        for kind, value in (
            ("object_height", objects[i]["size"]["height"]),
            ("object_width", objects[i]["size"]["width"]),
        ):
            ask(kind, [i], format_metres(value), value, a=desc[i])
        ask("shape", [i], objects[i]["shape"], color=objects[i]["color"])
        same_shape = [j for j in ids if objects[j]["shape"] == objects[i]["shape"]]
        if len(same_shape) == 1:  # "the cube" is only a unique reference if there is one cube
            ask("color", [i], objects[i]["color"], shape=objects[i]["shape"])
    ask("count", ids, str(len(objects)))

    for i, j in itertools.combinations(ids, 2):
        a, b = (i, j) if rng.random() < 0.5 else (j, i)
        pair = {"a": desc[a], "b": desc[b]}
        separation = float(np.linalg.norm(centres[a] - centres[b]))
        ask("distance_between", [a, b], format_metres(separation), separation, **pair)
        if clearly_closer(a, b):
            nearest = a if distance[a] < distance[b] else b
            ask("closer", [a, b], desc[nearest], choices=[desc[a], desc[b]], **pair)
        # Image-space relations must agree with the camera-frame coordinates and have a clear margin.
        du = (objects[a]["center_pixel"][0] - objects[b]["center_pixel"][0]) / width
        dx = objects[a]["center_camera"][0] - objects[b]["center_camera"][0]
        if abs(du) > IMAGE_MIN_GAP and np.sign(du) == np.sign(dx):
            ask("left_right", [a, b], "left" if du < 0 else "right", choices=["left", "right"], **pair)
        dv = (objects[a]["center_pixel"][1] - objects[b]["center_pixel"][1]) / height
        dy = objects[a]["center_camera"][1] - objects[b]["center_camera"][1]
        if abs(dv) > IMAGE_MIN_GAP and np.sign(dv) == np.sign(dy):
            ask("above_below", [a, b], "above" if dv < 0 else "below", choices=["above", "below"], **pair)

    for triple in itertools.combinations(ids, 3):
        order = sorted(triple, key=lambda k: distance[k])
        if all(clearly_closer(order[k], order[k + 1]) for k in range(2)):
            asked = [int(k) for k in rng.permutation(triple)]
            answer = ", ".join(desc[k] for k in order)
            names = {"a": desc[asked[0]], "b": desc[asked[1]], "c": desc[asked[2]]}
            ask("depth_order", asked, answer, choices=[desc[k] for k in asked], **names)

    for u, v in _pick_marker_pixels(rendering, rng, count=2):
        value = float(rendering.depth[v, u])
        instance = int(rendering.instance[v, u])
        ask("point_depth", [instance] if instance >= 0 else [], format_metres(value), value, marker=(u, v))
    return out


def select_questions(
    candidates: dict[str, list[Question]], k: int, type_counts: dict[str, int], rng: np.random.Generator
) -> list[Question]:
    """Pick k questions, favouring types used least so far (``type_counts`` is updated in place).

    Balancing greedily on running counts keeps every type near 1/12 of a shard even though some types (e.g.
    depth_order, which needs three well-separated objects) are not available in every scene.
    """
    pools = {kind: list(qs) for kind, qs in candidates.items() if qs}
    used_here: dict[str, int] = {}
    chosen = []
    for _ in range(k):
        if not pools:
            break
        tie_break = {kind: rng.random() for kind in pools}
        # A type may repeat within a scene only once it lags the others by REPEAT_PENALTY questions.
        kind = min(pools, key=lambda t: (type_counts.get(t, 0) + REPEAT_PENALTY * used_here.get(t, 0), tie_break[t]))
        pool = pools[kind]
        chosen.append(pool.pop(int(rng.integers(len(pool)))))
        used_here[kind] = used_here.get(kind, 0) + 1
        type_counts[kind] = type_counts.get(kind, 0) + 1
        if not pool:
            del pools[kind]
    return chosen
