"""What a depth model records as its base (`config.base_model_name_or_path`), so that every later folder (alignment,
SFT, export) still names it: the hub id, or the local folder's absolute path.
"""

from __future__ import annotations

import re
from pathlib import Path


# The hub cache keeps a repo's files under `models--{owner}--{name}/snapshots/{revision}`.
HUB_CACHE_SNAPSHOT = re.compile(r"models--(?P<owner>[^/]+?)--(?P<name>[^/]+)/snapshots/[^/]+/?$")


def base_model_provenance(name_or_path: str | Path) -> str:
    """What a model built from `name_or_path` records as its base: the hub id, or the local folder's absolute path.

    A hub id (`owner/name`) is never an absolute path, so the two cannot be confused later, when the folder may no
    longer exist (`config._name_or_path` is not saved at all). A folder in the hub cache is its repo's snapshot, so
    it records the repo id.
    """
    local = Path(name_or_path).expanduser()
    if not local.is_dir():
        return str(name_or_path)
    resolved = local.resolve()
    snapshot = HUB_CACHE_SNAPSHOT.search(resolved.as_posix())
    if snapshot:
        return f"{snapshot['owner']}/{snapshot['name']}"
    return str(resolved)


def hub_base_model(config) -> str | None:
    """The hub id of the base a depth model was built from, or None when it was a local folder or is unknown."""
    recorded = getattr(config, "base_model_name_or_path", None)
    if not recorded or Path(recorded).is_absolute():
        return None
    return recorded
