"""The experiment's protocol, enforced by the harness rather than kept as a convention (issue 21).

- **Rendered alike.** Every validation and test world is rendered exactly like its training world (same image size,
  questions per scene, supersampling and format), from its own split, so no scene is shared; `check_rendered_alike`
  reads each world's `generation.json` and refuses a mismatch before anything trains.
- **Test scenes never explored.** `EXPLORED_TEST_WORLDS` lists the (split, seed) test worlds whose scenes were read
  while recipes were chosen; a preset that reads its test set (`evaluate_test`) must render another one.
- **A constant baseline and depth controls beside every arm**: `training.controls` (the constant fitted on the
  training answers; depth removed, from another scene, or uninformative; the capacity-matched control's rows).
"""

from __future__ import annotations

import json
from pathlib import Path


# (split, world seed) of test worlds whose scenes were read while recipes were chosen: issue 14's exploration scored
# its runs on `make_world --preset test` (test split, seed 0; its 200 scenes are the first of the 1,000-scene set).
EXPLORED_TEST_WORLDS = frozenset({("test", 0)})
# What must agree between a training world and the worlds it is validated and tested on (`generation.json` keys).
RENDERING_KEYS = ("size", "questions_per_scene", "supersample", "format_version")


def generation_info(world: Path) -> dict:
    info = Path(world) / "generation.json"
    if not info.exists():
        raise FileNotFoundError(f"{world} has no generation.json: not a finished `training.make_world` folder.")
    return json.loads(info.read_text())


def check_rendered_alike(train: Path, others: dict[str, Path]) -> None:
    """Raise unless every world in `others` ({name: folder}) is rendered like `train` (`RENDERING_KEYS`) from a split
    of its own."""
    reference = generation_info(train)
    for name, folder in others.items():
        info = generation_info(folder)
        differences = [
            f"{key} {info.get(key)!r} (training: {reference.get(key)!r})"
            for key in RENDERING_KEYS
            if info.get(key) != reference.get(key)
        ]
        if differences:
            raise ValueError(
                f"The {name} world {folder} is not rendered like the training world {train}: " + "; ".join(differences)
            )
        if info["split"] == reference["split"]:
            raise ValueError(f"The {name} world {folder} uses the training split {info['split']!r}: scenes repeat.")


def check_test_world_unexplored(split: str, seed: int) -> None:
    if (split, seed) in EXPLORED_TEST_WORLDS:
        raise ValueError(
            f"The {split} world of seed {seed} was read while recipes were chosen (EXPLORED_TEST_WORLDS): a final "
            "test set must be rendered from another seed."
        )
