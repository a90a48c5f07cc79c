"""Where the RGB images come from: an image folder, or one image column of a local or hub `datasets` dataset.

A source lists its items once, in a fixed sorted order (`source_ids`), and reads item `i` as raw bytes (or a PIL image)
for `prepare_image`: the shard slices are positions in that list.
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from training.data_files import find_data_files
from training.make_rgbd_pairs.images import SkippedImage
from training.make_rgbd_pairs.reader import without_image_decoding


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jfif", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")


class ImageFolderSource:
    """Every image file under `root` (recursively), in sorted relative-path order."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.description = f"image folder `{self.root.resolve().name}`"
        found = []
        for directory, subdirectories, files in os.walk(self.root):
            subdirectories[:] = [name for name in subdirectories if not name.startswith(".")]
            for name in files:
                if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                    found.append((Path(directory) / name).relative_to(self.root).as_posix())
        self.source_ids = sorted(found)

    def __len__(self) -> int:
        return len(self.source_ids)

    def read(self, index: int) -> bytes:
        try:
            return (self.root / self.source_ids[index]).read_bytes()
        except OSError as error:  # deleted or unreadable since the listing
            raise SkippedImage("missing", f"{type(error).__name__}: {error}") from error


def find_image_column(features) -> str:
    """The column holding images: an `Image` feature (or a list of them), preferring names like `image`."""
    from datasets import Image as ImageFeature
    from datasets import LargeList, List

    candidates = [
        name
        for name, feature in features.items()
        if isinstance(feature, ImageFeature)
        or (isinstance(feature, (List, LargeList)) and isinstance(feature.feature, ImageFeature))
    ]
    if not candidates:
        raise SystemExit(
            f"No image column found among {list(features)}: pass --image-column (a column of images, image bytes or "
            "file paths)."
        )
    for preferred in ("image", "img", "images", "jpg", "png"):
        if preferred in candidates:
            return preferred
    return candidates[0]


class DatasetSource:
    """One image column of a `datasets.Dataset`; source ids are row indices."""

    def __init__(self, dataset, image_column: str | None, description: str):
        column = image_column or find_image_column(dataset.features)
        if column not in dataset.features:
            raise SystemExit(f"--image-column {column!r} is not a column; the columns are {list(dataset.features)}.")
        # Raw bytes, decoded by prepare_image: one code path with the same guards for every input kind.
        self.dataset = without_image_decoding(dataset.select_columns([column]), column)
        self.column = column
        self.description = description
        self.source_ids = [str(index) for index in range(len(dataset))]

    def __len__(self) -> int:
        return len(self.source_ids)

    def read(self, index: int) -> bytes | Image.Image:
        value = self.dataset[index][self.column]
        if isinstance(value, (list, tuple)):  # a list-of-images column: its first image
            value = value[0] if value else None
        if isinstance(value, dict):
            value = value.get("bytes") or value.get("path")
        if value is None:
            raise SkippedImage("missing", "the row has no image")
        if isinstance(value, str):
            try:
                return Path(value).read_bytes()
            except OSError as error:
                raise SkippedImage("missing", f"{type(error).__name__}: {error}") from error
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value)
        if isinstance(value, Image.Image):
            return value
        raise SkippedImage("unreadable", f"unsupported value of type {type(value).__name__} in {self.column!r}")


def _has_parquet_files(folder: Path) -> bool:
    try:
        return bool(find_data_files(folder))
    except FileNotFoundError:
        return False


def _has_images(folder: Path) -> bool:
    return any(path.suffix.lower() in IMAGE_EXTENSIONS for path in folder.rglob("*") if path.is_file())


def detect_input_type(source: str) -> str:
    path = Path(source)
    if path.is_file():
        if path.suffix == ".parquet":
            return "parquet"
        raise SystemExit(f"--input {source} is a file: give an image folder, a dataset folder or parquet files.")
    if path.is_dir():
        if any((path / name).exists() for name in ("dataset_dict.json", "state.json", "dataset_info.json")):
            return "disk"
        if _has_parquet_files(path) and not _has_images(path):
            return "parquet"
        return "folder"
    if source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise SystemExit(f"--input {source} does not exist.")
    return "hub"


def open_source(source: str, input_type: str = "auto", split: str = "train", image_column: str | None = None):
    """An `ImageFolderSource` or `DatasetSource` for `--input`."""
    import datasets

    if input_type == "auto":
        input_type = detect_input_type(source)
    if input_type == "folder":
        if image_column is not None:
            raise SystemExit("--image-column applies to datasets, not to image folders.")
        return ImageFolderSource(source)
    if input_type == "disk":
        loaded = datasets.load_from_disk(source)
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise SystemExit(f"Split {split!r} is not in {source}; it has {list(loaded)} (use --split).")
            loaded = loaded[split]
        return DatasetSource(loaded, image_column, f"dataset `{Path(source).resolve().name}` ({split})")
    if input_type == "parquet":
        path = Path(source)
        try:
            files = find_data_files(path)
        except FileNotFoundError as error:
            raise SystemExit(str(error)) from error
        loaded = datasets.Dataset.from_parquet([str(file) for file in files])
        return DatasetSource(loaded, image_column, f"parquet files `{path.resolve().name}`")
    if input_type == "hub":
        # Needs network access (or the datasets cache); downloaded once, then read by row like a local dataset:
        # fixed shard slices need random access, which streaming cannot give.
        loaded = datasets.load_dataset(source, split=split)
        return DatasetSource(loaded, image_column, f"hub dataset `{source}` ({split})")
    raise SystemExit(f"Unknown --input-type {input_type!r}.")
