"""The depth users have (issue 22): named, seeded corruptions of metric depth, the one table every part reads.

    from training.depth_corruptions import CORRUPTIONS, corruption, row_generator

    noisy = corruption("noise")(depth_m, row_generator(seed=0, row_key="test-0-0000000/3"))

Each row of `CORRUPTIONS` is a pure function `(depth_m, rng) -> depth_m` with its parameters: `depth_m` a float32
(H, W) map in metres where 0 or NaN (also inf) is "no measurement", `rng` a `numpy.random.Generator`. The result is a
float32 map in metres with invalid pixels set to 0, which is how `processing_depth.depth_to_meters` writes every
invalid pixel and what the model encodes as "no measurement"; it always passes the processor's checks (no negative
or NaN reading, the image's aspect ratio). The maps are what a user would hand the processor: `low-res` gives the
¼-size map itself, which the processor resizes to the image like any lower-resolution sensor's, and `relative` gives
depth divided by its median, which is how the processor's own relative estimators (`MonocularDepthEstimator`) report
depth: the processor has no separate "relative" flag, relative depth is passed as depth whose median pixel reads 1.

Seeding is per row: `row_generator(seed, row_key)` derives a generator from the base seed and the row's key (a test
question's id, a training row's index), so re-runs, and every arm evaluated on the same set, see the same corruption
of the same row, whatever the batch size or order. Where the corruptions are used:

- evaluation: `python -m training.evaluate run --depth-corruption NAME --corruption-seed S` corrupts the test set's
  depth before the processor (`SeededCorruption`, keyed by question id) and records it in results.json;
  `python -m training.robustness` runs every corruption beside clean depth and RGB-only and writes the table.
- training: `python -m training.sft --depth_augmentation realistic --depth_augmentation_p 0.5` rewrites the training
  rows (never the evaluation rows) with `DepthAugmentation`: each row, with probability p, one of the named
  corruptions, drawn from its own generator.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from processing_depth import ASPECT_RATIO_TOLERANCE, depth_to_meters
from training.depth_png import decode_depth_cell, encode_depth_png
from training.trl_layout import map_row_depths


# Sensor noise, after Khoshelham & Elberink, "Accuracy and Resolution of Kinect Depth Data for Indoor Mapping
# Applications", Sensors 12(2), 2012: a structured-light (triangulation) sensor measures disparity, so its depth error
# grows with z²; they measured a random error that "reaches 4 cm at the maximum range of 5 m". sigma = k z² with
# k = 0.04 m / (5 m)² = 1.6e-3 per metre: 2.6 cm at 4 m, 0.4 cm at 1.5 m.
NOISE_K_PER_M = 1.6e-3
# A noisy reading is never below 1 mm, the resolution of the 16-bit millimetre PNGs that datasets store depth in (a
# Gaussian tail must not turn a far reading into a negative distance, which the processor rejects, or into 0, which
# reads as a hole). At the world's farthest floor (55 m) that is 11 standard deviations away: never in practice.
MIN_READING_M = 1e-3
RANDOM_HOLE_FRACTION = 0.20
# Edge holes: the pixels nearest a depth discontinuity, a jump of more than 5% between neighbouring valid pixels (an
# object's outline against what is behind it; a floor seen at a grazing angle), where stereo and structured-light
# sensors lose their readings (occlusion shadows, mixed pixels).
EDGE_HOLE_FRACTION = 0.20
EDGE_RELATIVE_JUMP = 0.05
# "Realistic": sensor noise plus holes at the low end of the 10–30% range, the levels of the done-when test.
REALISTIC_HOLE_FRACTION = 0.10
QUANTISATION_STEP_M = 0.01
LOW_RESOLUTION_FACTOR = 4
SCALE_RANGE = (0.8, 1.25)


# ---- the corruptions ------------------------------------------------------------------------------------------------
def z_squared_noise(depth: np.ndarray, rng: np.random.Generator, k: float) -> np.ndarray:
    """Gaussian noise of standard deviation `k` z² on every valid pixel (at least `MIN_READING_M` after it)."""
    valid = depth > 0
    # One draw per pixel, valid or not, so a map's noise does not depend on where its holes are.
    noisy = depth + rng.standard_normal(depth.shape, dtype=np.float32) * (np.float32(k) * depth * depth)
    return np.where(valid, np.maximum(noisy, np.float32(MIN_READING_M)), np.float32(0))


def random_holes(depth: np.ndarray, rng: np.random.Generator, fraction: float) -> np.ndarray:
    """`fraction` of the valid pixels (rounded to a whole number) become invalid, chosen uniformly at random."""
    valid = np.flatnonzero(depth > 0)
    holes = rng.choice(valid, size=round(fraction * valid.size), replace=False, shuffle=False)
    out = depth.copy()
    out.flat[holes] = 0
    return out


def _dilate(mask: np.ndarray) -> np.ndarray:
    """`mask` grown by one pixel in all 8 directions (a 3x3 binary dilation)."""
    grown = mask.copy()
    grown[1:] |= mask[:-1]
    grown[:-1] |= mask[1:]
    rows = grown.copy()
    grown[:, 1:] |= rows[:, :-1]
    grown[:, :-1] |= rows[:, 1:]
    return grown


def depth_edges(depth: np.ndarray, relative_jump: float) -> np.ndarray:
    """Pixels on a depth discontinuity: both pixels of a horizontal or vertical pair of valid neighbours whose depths
    differ by more than `relative_jump` of the nearer one."""
    edges = np.zeros(depth.shape, dtype=bool)
    for axis in (0, 1):
        first = [slice(None)] * 2
        second = [slice(None)] * 2
        first[axis], second[axis] = slice(None, -1), slice(1, None)
        a, b = depth[tuple(first)], depth[tuple(second)]
        jump = (a > 0) & (b > 0) & (np.abs(a - b) > relative_jump * np.minimum(a, b))
        edges[tuple(first)] |= jump
        edges[tuple(second)] |= jump
    return edges


def edge_holes(depth: np.ndarray, rng: np.random.Generator, fraction: float, relative_jump: float) -> np.ndarray:
    """`fraction` of the valid pixels become invalid: those nearest a depth edge (`depth_edges`), a band around every
    discontinuity as wide as it takes; ties at the band's outer ring (and on a map without edges, all pixels) are
    broken at random."""
    valid = depth > 0
    wanted = round(fraction * int(valid.sum()))
    # Chebyshev distance to the nearest edge, ring by ring, until the band holds enough valid pixels.
    far = np.iinfo(np.int32).max
    distance = np.full(depth.shape, far, dtype=np.int32)
    band = depth_edges(depth, relative_jump)
    distance[band] = 0
    ring = 0
    while int((band & valid).sum()) < wanted and band.any() and not band.all():
        ring += 1
        grown = _dilate(band)
        distance[grown & ~band] = ring
        band = grown
    candidates = np.flatnonzero(valid)
    tie_break = rng.random(depth.size)[candidates]
    nearest = candidates[np.lexsort((tie_break, distance.flat[candidates]))[:wanted]]
    out = depth.copy()
    out.flat[nearest] = 0
    return out


def quantise(depth: np.ndarray, rng: np.random.Generator, step: float) -> np.ndarray:
    """Every valid reading rounded to a multiple of `step` (at least one step: a reading is never rounded to a hole)."""
    steps = np.maximum(np.rint(depth.astype(np.float64) / step), 1.0)
    return np.where(depth > 0, steps * step, 0).astype(np.float32)


def low_resolution(depth: np.ndarray, rng: np.random.Generator, factor: int) -> np.ndarray:
    """The map a sensor of 1/`factor` the resolution would give: each of its pixels the mean of the valid pixels under
    it (a sensor pixel integrates its footprint, hence the in-between depths at object edges that low-resolution
    time-of-flight sensors show), invalid where none is valid.

    Returned at the low resolution, as a user's sensor map would be: the processor resizes it to its image (same
    aspect ratio) by nearest neighbour. Where rounding the size to whole pixels would change the aspect ratio by more
    than the processor's `ASPECT_RATIO_TOLERANCE` (tiny or odd maps), the low-resolution map is returned upsampled
    back to the input's size by nearest neighbour instead: the same information, in the input's shape.
    """
    height, width = depth.shape
    small_height, small_width = max(1, round(height / factor)), max(1, round(width / factor))
    rows = np.arange(height) * small_height // height
    columns = np.arange(width) * small_width // width
    cell = (rows[:, None] * small_width + columns[None, :]).ravel()
    valid = (depth > 0).ravel()
    sums = np.bincount(cell, weights=np.where(valid, depth.ravel(), 0.0), minlength=small_height * small_width)
    counts = np.bincount(cell, weights=valid, minlength=small_height * small_width)
    small = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0).astype(np.float32)
    small = small.reshape(small_height, small_width)
    aspect, small_aspect = width / height, small_width / small_height
    if abs(small_aspect - aspect) / aspect > ASPECT_RATIO_TOLERANCE:
        return small[rows][:, columns]
    return small


def global_scale(depth: np.ndarray, rng: np.random.Generator, low: float, high: float) -> np.ndarray:
    """The whole map times one factor drawn log-uniformly from [`low`, `high`] (a miscalibrated or metric-estimator
    scale error: ×0.8 and ×1.25 are equally likely, being equally far from ×1 in log)."""
    factor = math.exp(rng.uniform(math.log(low), math.log(high)))
    return (depth * np.float32(factor)).astype(np.float32)


def relative_to_median(depth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Depth divided by the median of its valid pixels (1.0 = the median), as relative depth estimators give it."""
    valid = depth > 0
    if not valid.any():
        return depth.copy()
    return np.where(valid, depth / np.median(depth[valid]), 0).astype(np.float32)


def noise_and_random_holes(depth: np.ndarray, rng: np.random.Generator, k: float, fraction: float) -> np.ndarray:
    """`z_squared_noise`, then `random_holes` (with one generator: its noise is the `noise` row's for the same row)."""
    return random_holes(z_squared_noise(depth, rng, k), rng, fraction)


# ---- the table ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DepthCorruption:
    """One named corruption: `function(depth_m, rng, **parameters)`, and what it does in a line."""

    name: str
    function: Callable[..., np.ndarray]
    parameters: tuple[tuple[str, Any], ...]
    description: str
    # Its maps are right only up to a scale, as a relative estimator's are: evaluation tells a processor that has a
    # `relative_depth_median` so (`depth_is_relative=True`), as a user of such an estimator would.
    relative: bool = False

    def __call__(self, depth: Any, rng: np.random.Generator) -> np.ndarray:
        """The corrupted map of `depth` (anything `processing_depth.depth_to_meters` reads; float metres with 0/NaN for
        no measurement is the usual), float32 metres with 0 for invalid pixels."""
        try:
            meters = depth_to_meters(depth, "mask")
        except (ValueError, TypeError) as error:
            raise type(error)(f"Depth corruption {self.name!r}: {error}") from error
        if not isinstance(rng, np.random.Generator):
            raise TypeError(
                f"Depth corruption {self.name!r} needs a numpy.random.Generator (see row_generator); got "
                f"{type(rng).__name__}."
            )
        return self.function(meters, rng, **dict(self.parameters))

    def describe(self) -> dict:
        """The JSON form results record."""
        described = {"name": self.name, "parameters": dict(self.parameters), "description": self.description}
        return {**described, "relative": True} if self.relative else described


CORRUPTIONS: dict[str, DepthCorruption] = {
    row.name: row
    for row in (
        DepthCorruption(
            "noise",
            z_squared_noise,
            (("k", NOISE_K_PER_M),),
            f"structured-light noise, std k·z² with k = {NOISE_K_PER_M:g}/m (2.6 cm at 4 m; Khoshelham & Elberink 2012)",
        ),
        DepthCorruption(
            "holes-random",
            random_holes,
            (("fraction", RANDOM_HOLE_FRACTION),),
            f"{RANDOM_HOLE_FRACTION:.0%} of the valid pixels invalid, at random",
        ),
        DepthCorruption(
            "holes-edges",
            edge_holes,
            (("fraction", EDGE_HOLE_FRACTION), ("relative_jump", EDGE_RELATIVE_JUMP)),
            f"{EDGE_HOLE_FRACTION:.0%} of the valid pixels invalid: those nearest a depth discontinuity "
            f"(a jump > {EDGE_RELATIVE_JUMP:.0%})",
        ),
        DepthCorruption(
            "quantise",
            quantise,
            (("step", QUANTISATION_STEP_M),),
            f"readings rounded to {QUANTISATION_STEP_M * 100:g} cm steps",
        ),
        DepthCorruption(
            "low-res",
            low_resolution,
            (("factor", LOW_RESOLUTION_FACTOR),),
            f"a 1/{LOW_RESOLUTION_FACTOR}-size sensor (area mean of valid pixels), resized to the image by the processor",
        ),
        DepthCorruption(
            "scale",
            global_scale,
            (("low", SCALE_RANGE[0]), ("high", SCALE_RANGE[1])),
            f"one global scale error per map, log-uniform in ×{SCALE_RANGE[0]} … ×{SCALE_RANGE[1]}",
        ),
        DepthCorruption(
            "relative",
            relative_to_median,
            (),
            "divided by its median (1 = the median), as relative depth estimators give it",
            relative=True,
        ),
        DepthCorruption(
            "realistic",
            noise_and_random_holes,
            (("k", NOISE_K_PER_M), ("fraction", REALISTIC_HOLE_FRACTION)),
            f"the noise row plus {REALISTIC_HOLE_FRACTION:.0%} of the valid pixels invalid at random",
        ),
    )
}
CORRUPTION_NAMES = tuple(CORRUPTIONS)


def corruption(name: str) -> DepthCorruption:
    """The row of `CORRUPTIONS` named `name`."""
    if name not in CORRUPTIONS:
        raise ValueError(f"Unknown depth corruption {name!r}: expected one of {', '.join(CORRUPTION_NAMES)}.")
    return CORRUPTIONS[name]


def row_generator(seed: int, row_key: str | int) -> np.random.Generator:
    """The generator of one row: from the base `seed` and the row's key (hashed with SHA-256, as Python's own `hash`
    of a string changes from process to process)."""
    digest = hashlib.sha256(str(row_key).encode("utf-8")).digest()
    return np.random.default_rng([int(seed), int.from_bytes(digest[:8], "little")])


@dataclass(frozen=True)
class SeededCorruption:
    """A corruption with its base seed, applied per row: `(depth, row_key) -> depth`, the same map for the same row on
    every run. Evaluation keys rows by question id."""

    corruption: DepthCorruption
    seed: int = 0

    @classmethod
    def named(cls, name: str, seed: int = 0) -> SeededCorruption:
        return cls(corruption(name), seed)

    def __call__(self, depth: Any, row_key: str | int) -> np.ndarray:
        return self.corruption(depth, row_generator(self.seed, row_key))

    def describe(self) -> dict:
        return {**self.corruption.describe(), "seed": self.seed}


# ---- training-time augmentation -------------------------------------------------------------------------------------
def parse_corruption_names(names: str | Sequence[str]) -> tuple[str, ...]:
    """`"realistic"`, `"noise,holes-edges"` or a list of names -> the names, each checked against the table."""
    if isinstance(names, str):
        names = names.split(",")
    parsed = tuple(name.strip() for name in names if name.strip())
    if not parsed:
        raise ValueError(f"No depth corruption named: give one or more of {', '.join(CORRUPTION_NAMES)}.")
    for name in parsed:
        corruption(name)
    return parsed


# The column an augmented dataset gains: which corruption each row's depth went through ("" for none).
AUGMENTATION_COLUMN = "depth_augmentation"


@dataclass(frozen=True)
class DepthAugmentation:
    """Training rows whose depth is corrupted: each row, with probability `probability`, by one of `names` drawn
    uniformly, all from the row's own generator (`row_generator(seed, row index)`).

    The draw is made once per row when the rows are rewritten (`apply`), not at every step: every epoch sees the same
    corrupted rows (with the project's single-epoch runs, the same as drawing anew), runs are reproducible, and rows
    processed ahead (`training.processed_cache`) stay what the collator would build.
    """

    names: tuple[str, ...]
    probability: float = 0.5
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "names", parse_corruption_names(self.names))
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"The depth augmentation probability must be in [0, 1]; got {self.probability}.")

    def draw(self, row_key: str | int) -> tuple[DepthCorruption | None, np.random.Generator]:
        """The corruption of one row (None: left clean) and the generator it then draws from."""
        rng = row_generator(self.seed, row_key)
        if rng.random() >= self.probability:
            return None, rng
        return CORRUPTIONS[self.names[int(rng.integers(len(self.names)))]], rng

    def augment_row(self, row: dict, index: int) -> dict:
        """One row (either depth layout) with each of its depth maps corrupted by its row's draw, stored as the 16-bit
        millimetre PNGs datasets hold, and the corruption's name in `AUGMENTATION_COLUMN`."""
        chosen, rng = self.draw(index)
        if chosen is None:
            return {AUGMENTATION_COLUMN: ""}
        return {
            **map_row_depths(row, lambda cell: encode_depth_png(chosen(decode_depth_cell(cell), rng))),
            AUGMENTATION_COLUMN: chosen.name,
        }

    def apply(self, rows, num_proc: int | None = None):
        """`rows` (a `datasets.Dataset` of training rows) with their depth augmented (`augment_row`).

        `datasets` caches the result under a key made of the source rows, this augmentation's settings and the source
        of the code that corrupts and stores depth: its own key would hash `augment_row` but not the corruptions it
        calls, so a changed corruption could be read back stale from the cache.
        """
        import inspect
        import sys

        from datasets.fingerprint import Hasher

        modules = (__name__, "training.depth_png", "training.trl_layout", "processing_depth")
        fingerprint = Hasher.hash(
            {
                "rows": rows._fingerprint,
                "augmentation": self.describe(),
                "sources": [inspect.getsource(sys.modules[name]) for name in modules],
            }
        )
        return rows.map(
            self.augment_row,
            with_indices=True,
            num_proc=num_proc,
            new_fingerprint=fingerprint,
            desc=f"depth augmentation ({','.join(self.names)})",
        )

    def describe(self) -> dict:
        return {"names": list(self.names), "probability": self.probability, "seed": self.seed}
