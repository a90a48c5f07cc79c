"""Where the pairs come from: images alone (depth estimated), or RGB-D data with measured depth.

Every source lists its items once, in a fixed sorted order (`source_ids`: the shard slices are positions in that list),
and reads item `i` as `(image, depth)`: the image as raw bytes or a PIL image for `prepare_image`, the depth as stored
(a file, PNG bytes, an array; units applied later, `measured.py`) or `None`. A source without `provides_depth`
returns `None` for every item, and the estimator fills it; one with `provides_depth` is measured, and an item whose
depth is missing is skipped (`missing_depth`), never estimated.

* `ImageFolderSource`: every image under a folder (recursively).
* `PairFolderSource`: every (rgb, depth) file pair in folders with `rgb/` (or `color/`, `image/`) and `depth/`
  subfolders, matched by path without extension (`rgb/0001.jpg` <-> `depth/0001.png`): ScanNet, ARKitScenes, TUM
  (associated first), your own captures. Depth files are 16-bit PNGs, float TIFFs or `.npy` arrays.
* `NYUMatSource`: the NYU Depth v2 labelled `.mat` (MATLAB v7.3, i.e. HDF5).
* `DatasetSource`: one image column of a `datasets` dataset (parquet, `save_to_disk`, a hub id), and optionally a depth
  column (float metres as 2-D lists / arrays, or 16-bit PNG bytes).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from training.data_files import find_data_files
from training.make_rgbd_pairs.images import SkippedImage
from training.make_rgbd_pairs.reader import without_image_decoding


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jfif", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")
DEPTH_FILE_EXTENSIONS = (".png", ".tif", ".tiff", ".npy")
RGB_DIR_NAMES = ("rgb", "color", "image")
DEFAULT_DEPTH_DIR = "depth"
DEFAULT_DEPTH_COLUMN = "depth"
NYU_IMAGE_KEY, NYU_DEPTH_KEY = "images", "depths"
INPUT_TYPES = ("auto", "folder", "pairs", "mat", "disk", "parquet", "hub")
TABLE_INPUT_TYPES = ("disk", "parquet", "hub")
DATASET_FOLDER_FILES = ("dataset_dict.json", "state.json", "dataset_info.json")


def _visible_files(folder: Path, extensions: tuple[str, ...]) -> list[Path]:
    """Files under `folder` (recursively) with one of `extensions`, skipping hidden files and folders, sorted."""
    found = []
    for directory, subdirectories, files in os.walk(folder):
        subdirectories[:] = [name for name in subdirectories if not name.startswith(".")]
        found += [
            Path(directory) / name for name in files if not name.startswith(".") and name.lower().endswith(extensions)
        ]
    return sorted(found)


class ImageFolderSource:
    """Every image file under `root` (recursively), in sorted relative-path order; depth is estimated."""

    input_format = "image_folder"
    provides_depth = False
    depth_is_float = None

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.description = f"image folder `{self.root.resolve().name}`"
        self.reading = {}
        self.source_ids = [
            path.relative_to(self.root).as_posix() for path in _visible_files(self.root, IMAGE_EXTENSIONS)
        ]

    def __len__(self) -> int:
        return len(self.source_ids)

    def read(self, index: int) -> tuple[bytes, None]:
        try:
            return (self.root / self.source_ids[index]).read_bytes(), None
        except OSError as error:  # deleted or unreadable since the listing
            raise SkippedImage("missing", f"{type(error).__name__}: {error}") from error


def _files_by_key(folder: Path, extensions: tuple[str, ...]) -> dict[str, list[Path]]:
    """Files under `folder` by path without extension (`sub/0001`), the key a pair is matched on."""
    found: dict[str, list[Path]] = {}
    for path in _visible_files(folder, extensions):
        found.setdefault(path.relative_to(folder).with_suffix("").as_posix(), []).append(path)
    return found


def pair_folders(root: Path, rgb_names: tuple[str, ...], depth_dir: str) -> list[tuple[Path, str]]:
    """Every folder under `root` (itself included) with an rgb and a depth subfolder, and its rgb subfolder's name."""
    found = []
    for directory, subdirectories, _ in os.walk(root):
        subdirectories[:] = sorted(name for name in subdirectories if not name.startswith("."))
        rgb_name = next((name for name in rgb_names if name in subdirectories), None)
        if rgb_name is not None and depth_dir in subdirectories:
            found.append((Path(directory), rgb_name))
            subdirectories[:] = [name for name in subdirectories if name not in (rgb_name, depth_dir)]
    return found


def _stores_float_depth(path: Path) -> bool:
    """Whether a depth file holds floats (metres: `.npy` float arrays, float TIFFs) rather than integer units."""
    try:
        if path.suffix.lower() == ".npy":
            return np.issubdtype(np.load(path, mmap_mode="r", allow_pickle=False).dtype, np.floating)
        with Image.open(path) as image:
            return image.mode == "F"
    except Exception:  # unreadable: its pair is skipped with the reason later; say "integer" so a scale is asked for
        return False


class PairFolderSource:
    """Every (rgb, depth) file pair under `root`: in each folder that has an rgb and a depth subfolder."""

    input_format = "folder"
    provides_depth = True

    def __init__(self, root: str | Path, rgb_dir: str | None = None, depth_dir: str = DEFAULT_DEPTH_DIR):
        self.root = Path(root)
        self.description = f"RGB-D folder `{self.root.resolve().name}`"
        rgb_names = (rgb_dir,) if rgb_dir else RGB_DIR_NAMES
        self.reading = {"rgb_dirs": list(rgb_names), "depth_dir": depth_dir}
        entries = []  # (match key, rgb files, depth files): one entry per name found on either side
        for scene, rgb_name in pair_folders(self.root, rgb_names, depth_dir):
            rgb_files = _files_by_key(scene / rgb_name, IMAGE_EXTENSIONS)
            depth_files = _files_by_key(scene / depth_dir, DEPTH_FILE_EXTENSIONS)
            prefix = scene.relative_to(self.root).as_posix()
            for key in set(rgb_files) | set(depth_files):
                entries.append((f"{prefix}/{key}", rgb_files.get(key, []), depth_files.get(key, [])))
        if not entries:
            raise SystemExit(
                f"No pairs under {self.root}: expected a folder with {' or '.join(f'{n}/' for n in rgb_names)} and "
                f"{depth_dir}/ subfolders (use --rgb-dir / --depth-dir for other names)."
            )
        entries.sort(key=lambda entry: entry[0])
        paired = [depth[0] for _, rgb, depth in entries if rgb and depth]
        if not paired:
            num_rgb = sum(len(rgb) for _, rgb, _ in entries)
            num_depth = sum(len(depth) for _, _, depth in entries)
            raise SystemExit(
                f"No RGB image under {self.root} has a depth file of the same name ({num_rgb} rgb, {num_depth} depth "
                f"files): pairs are matched by path without extension, rgb/0001.jpg <-> {depth_dir}/0001.png "
                f"({'/'.join(DEPTH_FILE_EXTENSIONS)})."
            )
        self.entries = entries
        self.source_ids = [(rgb or depth)[0].relative_to(self.root).as_posix() for _, rgb, depth in entries]
        self.depth_is_float = _stores_float_depth(paired[0])

    def __len__(self) -> int:
        return len(self.entries)

    def read(self, index: int) -> tuple[bytes, Path]:
        key, rgb_files, depth_files = self.entries[index]
        if not rgb_files:
            raise SkippedImage("missing_rgb", f"no rgb image for depth {depth_files[0].name}")
        if not depth_files:
            raise SkippedImage("missing_depth", f"no depth file named {Path(key).name}.* for {rgb_files[0].name}")
        if len(rgb_files) > 1 or len(depth_files) > 1:
            names = ", ".join(path.name for path in rgb_files + depth_files)
            raise SkippedImage("ambiguous_pair", f"several files share the name {Path(key).name}: {names}")
        try:
            return rgb_files[0].read_bytes(), depth_files[0]
        except OSError as error:
            raise SkippedImage("missing", f"{type(error).__name__}: {error}") from error


class NYUMatSource:
    """The NYU Depth v2 labelled `.mat` (MATLAB v7.3 = HDF5), read one row at a time with h5py.

    `images` (N, 3, W, H) uint8 and `depths` (N, W, H) float metres, transposed as MATLAB writes them; `rawDepths`
    (`--depth-column rawDepths`) is the raw depth (holes = 0) instead of the colourisation-inpainted `depths`.
    """

    input_format = "nyu_mat"
    provides_depth = True

    def __init__(self, path: str | Path, image_key: str = NYU_IMAGE_KEY, depth_key: str = NYU_DEPTH_KEY):
        import h5py

        self.path = Path(path)
        self.image_key, self.depth_key = image_key, depth_key
        self.reading = {"image_key": image_key, "depth_key": depth_key}
        self.description = f"NYU Depth v2 `{self.path.name}` (`{image_key}`, `{depth_key}`)"
        try:
            handle = h5py.File(self.path, "r")
        except OSError as error:
            raise SystemExit(
                f"{self.path} is not a MATLAB v7.3 (HDF5) file ({error}); the NYU Depth v2 labelled .mat is one."
            ) from None
        with handle:
            missing = [key for key in (image_key, depth_key) if key not in handle]
            if missing:
                raise SystemExit(f"{self.path} has no {missing}; its datasets are {sorted(handle)}.")
            images, depths = handle[image_key], handle[depth_key]
            # MATLAB stores column-major, so an H x W x 3 x N array reads back reversed: (N, 3, W, H).
            if images.ndim != 4 or images.shape[1] != 3 or depths.ndim != 3:
                raise SystemExit(
                    f"{self.path}: expected MATLAB's layout, {image_key} (N, 3, W, H) and {depth_key} (N, W, H); got "
                    f"{images.shape} and {depths.shape}."
                )
            if images.shape[0] != depths.shape[0]:
                raise SystemExit(f"{self.path}: {images.shape[0]} images but {depths.shape[0]} depth maps.")
            self.depth_is_float = np.issubdtype(depths.dtype, np.floating)
            self.source_ids = [str(index) for index in range(images.shape[0])]

    def __len__(self) -> int:
        return len(self.source_ids)

    def read(self, index: int) -> tuple[Image.Image, np.ndarray]:
        import h5py

        # Opened per read (about a millisecond): no HDF5 handle is shared with forked DataLoader workers.
        with h5py.File(self.path, "r") as handle:
            rgb = handle[self.image_key][index].transpose(2, 1, 0)  # (3, W, H) -> (H, W, 3)
            depth = handle[self.depth_key][index].T  # (W, H) -> (H, W)
        return Image.fromarray(np.ascontiguousarray(rgb)), depth


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


def _innermost_dtype(feature) -> str | None:
    """The dtype of the numbers in an array-like column (`List(List(Value))`, `Array2D`), else None."""
    from datasets import Array2D, LargeList, List, Sequence, Value

    while isinstance(feature, (List, LargeList, Sequence)):
        feature = feature.feature
    if isinstance(feature, Value) and feature.dtype != "binary":
        return feature.dtype
    if isinstance(feature, Array2D):
        return feature.dtype
    return None


def _num_empty_cells(column) -> int:
    """Cells of an Arrow column that hold nothing: null, empty bytes or lists, or an image struct with no data."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    empty = pc.is_null(column)
    if pa.types.is_struct(column.type) and {"bytes", "path"} <= {field.name for field in column.type}:
        empty = pc.or_(empty, pc.and_(pc.is_null(column.field("bytes")), pc.is_null(column.field("path"))))
    elif pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
        empty = pc.or_(empty, pc.equal(pc.binary_length(column), 0))
    elif pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        empty = pc.or_(empty, pc.equal(pc.list_value_length(column), 0))
    return int(pc.sum(pc.fill_null(empty, True).cast(pa.int64())).as_py() or 0)


class DatasetSource:
    """One image column of a `datasets.Dataset` and, when `depth_column` is given, its depth; source ids are row
    indices. A list-of-images column gives its first image."""

    input_format = "table"

    def __init__(self, dataset, image_column: str | None, description: str, depth_column: str | None = None):
        from datasets import Image as ImageFeature

        if depth_column is not None and depth_column not in dataset.features:
            raise SystemExit(
                f"--depth-column {depth_column!r} is not a column; the columns are {list(dataset.features)}."
            )
        column = image_column or find_image_column(
            {name: feature for name, feature in dataset.features.items() if name != depth_column}
        )
        if column not in dataset.features:
            raise SystemExit(f"--image-column {column!r} is not a column; the columns are {list(dataset.features)}.")
        # Raw bytes, decoded by prepare_image: one code path with the same guards for every input kind.
        self.dataset = without_image_decoding(dataset.select_columns([column]), column)
        self.column = column
        self.description = description
        self.source_ids = [str(index) for index in range(len(dataset))]
        self.depth_column = depth_column
        self.provides_depth = depth_column is not None
        self.depth_is_float = None
        self.reading = {"image_column": column}
        if depth_column is None:
            return
        depth_feature = dataset.features[depth_column]
        depths = dataset.select_columns([depth_column])
        if isinstance(depth_feature, ImageFeature):
            depths = depths.cast_column(depth_column, ImageFeature(decode=False))  # the 16-bit PNG bytes as stored
        if len(dataset) and _num_empty_cells(depths.data.column(depth_column)) == len(dataset):
            raise SystemExit(
                f"Every cell of the depth column {depth_column!r} of {description} is empty ({len(dataset)} rows): "
                f"there is no depth to pair. Pass --depth-column with the column that holds depth (the columns are "
                f"{list(dataset.features)})."
            )
        dtype = _innermost_dtype(depth_feature)
        self.depth_is_float = dtype is not None and dtype.startswith("float")
        self.depths = depths
        self.reading["depth_column"] = depth_column

    def __len__(self) -> int:
        return len(self.source_ids)

    def read(self, index: int) -> tuple[bytes | Image.Image, object]:
        # An empty depth cell stays `None`: `measured.read_depth_values` skips it ("missing_depth").
        depth = self.depths[index][self.depth_column] if self.depth_column is not None else None
        return self._image(index), depth

    def _image(self, index: int) -> bytes | Image.Image:
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


def detect_input_type(source: str, rgb_dir: str | None = None, depth_dir: str | None = None) -> str:
    """`--input-type` for `--input`: `mat`, `parquet`, `disk`, `pairs` (rgb/ + depth/ folders), `folder` or `hub`."""
    path = Path(source)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in (".mat", ".h5", ".hdf5"):
            return "mat"
        if suffix == ".parquet":
            return "parquet"
        raise SystemExit(
            f"--input {source} is a file: give an image folder, an RGB-D pair folder, a dataset folder, parquet "
            "file(s) or a .mat."
        )
    if path.is_dir():
        if any((path / name).exists() for name in DATASET_FOLDER_FILES):
            return "disk"
        if pair_folders(path, (rgb_dir,) if rgb_dir else RGB_DIR_NAMES, depth_dir or DEFAULT_DEPTH_DIR):
            return "pairs"
        if _has_parquet_files(path) and not _has_images(path):
            return "parquet"
        return "folder"
    if source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise SystemExit(f"--input {source} does not exist.")
    return "hub"


def open_source(
    source: str,
    input_type: str = "auto",
    split: str = "train",
    image_column: str | None = None,
    depth_column: str | None = None,
    rgb_dir: str | None = None,
    depth_dir: str | None = None,
):
    """The source of `--input` (see the module docstring); `depth_column` picks a dataset's (or a `.mat`'s) depth."""
    import datasets

    if input_type == "auto":
        input_type = detect_input_type(source, rgb_dir, depth_dir)
    if input_type in ("folder", "pairs") and (image_column or depth_column) is not None:
        raise SystemExit(
            f"--image-column and --depth-column apply to datasets and .mat files, not to {source}, a folder."
        )
    if input_type == "folder":
        return ImageFolderSource(source)
    if input_type == "pairs":
        return PairFolderSource(source, rgb_dir, depth_dir or DEFAULT_DEPTH_DIR)
    if input_type == "mat":
        return NYUMatSource(source, image_column or NYU_IMAGE_KEY, depth_column or NYU_DEPTH_KEY)
    if input_type == "disk":
        loaded = datasets.load_from_disk(source)
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise SystemExit(f"Split {split!r} is not in {source}; it has {list(loaded)} (use --split).")
            loaded = loaded[split]
        description = f"dataset `{Path(source).resolve().name}` ({split})"
    elif input_type == "parquet":
        try:
            files = find_data_files(Path(source))
        except FileNotFoundError as error:
            raise SystemExit(str(error)) from None
        loaded = datasets.Dataset.from_parquet([str(file) for file in files])
        description = f"parquet files `{Path(source).resolve().name}`"
    elif input_type == "hub":
        # Needs network access (or the datasets cache); downloaded once, then read by row like a local dataset:
        # fixed shard slices need random access, which streaming cannot give.
        loaded = datasets.load_dataset(source, split=split)
        description = f"hub dataset `{source}` ({split})"
    else:
        raise SystemExit(f"Unknown --input-type {input_type!r}; one of {', '.join(INPUT_TYPES)}.")
    return DatasetSource(loaded, image_column, description, depth_column)
