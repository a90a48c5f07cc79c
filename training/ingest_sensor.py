"""Sensor RGB-D data (NYU Depth v2, SUN RGB-D, ScanNet, ARKitScenes, TUM, your own) as RGB-D pairs: measured depth.

    python -m training.ingest_sensor --input nyu_depth_v2_labeled.mat --out data/nyu_rgbd
    python -m training.ingest_sensor --input scannet_frames/ --depth-scale scannet --out data/scannet_rgbd
    python -m training.ingest_sensor --input my_captures/ --depth-scale 1000 --out data/my_rgbd
    python -m training.ingest_sensor --input table.parquet --depth-column depth --out data/table_rgbd
    accelerate launch --num_processes 4 -m training.ingest_sensor --input scans/ --depth-scale 1000 --out data/scans

Real metric depth goes in as it was measured, with no estimator: the output is exactly what
`training.make_rgbd_pairs` writes for a metric estimator (`DIR/data/shard-*.parquet` with `image`, `depth` (16-bit
PNG, millimetres), `depth_is_metric` = true, `depth_encoding` = `uint16_png_millimetres`, `estimator` = `sensor`,
`source_id`, `width`, `height`; `README.md`, `skipped.jsonl`, `generation.json`, `shard_logs/`), so everything that
reads those pairs (`training.align`, `RGBDPairs`) reads these.

Inputs (`--input`, kind detected or given with `--input-type`):

* a folder with `rgb/` (or `color/`, `image/`; `--rgb-dir`) and `depth/` (`--depth-dir`) subfolders, files matched
  by path without extension (`rgb/0001.jpg` <-> `depth/0001.png`). Every folder below `--input` that has both is
  used (one per scene, as ScanNet and ARKitScenes exports are laid out). Depth files are 16-bit PNGs, float TIFFs or
  `.npy` arrays. TUM's rgb and depth timestamps differ: pair them (associate.py) and give the pairs one name first.
* the NYU Depth v2 labelled `.mat` (MATLAB v7.3, i.e. HDF5): `images` (N, 3, W, H) uint8 and `depths` (N, W, H)
  float metres, transposed as MATLAB writes them. `--depth-column rawDepths` takes the raw depth (holes = 0) instead
  of the colourisation-inpainted `depths`.
* a `datasets` table: parquet file(s) or a `save_to_disk` folder, with an image column (`--image-column`, detected)
  and a depth column (`--depth-column`, default `depth`) of float metres (2-D lists / arrays) or 16-bit PNG bytes.

Depth units (`--depth-scale`): stored value / scale = metres. A number (units per metre) or a dataset's name:
`nyu`, `scannet`, `arkitscenes` (1000: millimetres), `tum` (5000), `kitti` (256), `sunrgbd` (millimetres rotated
left by 3 bits in 16, as SUN RGB-D and SUN3D store them). Integer depth (16-bit PNGs, integer arrays) has no unit of
its own, so the scale is required for it; float depth is read as metres unless a scale is given.

Invalid pixels: 0, NaN and +-inf mean "no measurement" and are stored as 0 (sensor holes stay holes); depths beyond
what a 16-bit millimetre PNG holds (65.535 m) are stored as 0 too, not clipped, since a clipped value would be a false
measurement. A row with a negative depth (not a distance: a sign convention or a sentinel to convert first), with no
valid pixel, or whose median valid depth is outside 0.05-65.535 m (no RGB-D sensor measures that: a wrong scale) is
skipped with its reason. If most of the first 16 rows fail for such a reason, the job stops before writing anything
and says why: that catches unit mistakes (metres read as millimetres, a 1000 scale given as 1), though not a 1000 vs
5000 mix-up, whose depths are both plausible.

Images are converted to RGB, EXIF rotation applied and the longer side capped at `--max-side`, exactly as
`make_rgbd_pairs.prepare_image` does; the depth map gets the same rotation and is resized to the stored image by
nearest neighbour, so every stored depth is a real measurement. A depth map must have the image's size or, for depth
registered at a lower resolution (ARKitScenes' low-resolution depth), exactly its aspect ratio; any other pair is
skipped (`size_mismatch`): a depth camera with another field of view (ScanNet's 1296x968 colour vs 640x480 depth) is
not registered to the image, and resizing would pair wrong pixels. Corrupt, truncated, tiny, huge and unpaired files
are skipped with reasons too, never stopping the job.

Resuming, atomic shards and ranks work as in `make_rgbd_pairs`: shard `i` always holds the same slice of the sorted
input list, is written to a hidden temporary file and renamed, a rerun writes only missing shards (after removing
temporary files a killed run left), and under `accelerate launch` shard `i` goes to rank `i % world_size`.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from training.data_files import find_data_files
from training.dataset_files import card_front_matter, columns_table, skipped_section, write_atomically
from training.depth_png import MAX_DEPTH_PNG, encode_depth_png
from training.make_rgbd_pairs import (
    DEFAULT_MAX_PIXELS,
    FORMAT_VERSION,
    IMAGE_EXTENSIONS,
    METRIC_DEPTH_ENCODING,
    DatasetSource,
    SkippedImage,
    WorkItem,
    dataset_features,
    distributed_state,
    exif_orientation,
    find_image_column,
    num_shards_for,
    prepare_image,
    read_shard_logs,
    run_shard_job,
    shard_item_range,
    shard_path,
    write_shard,
)


SENSOR_ESTIMATOR = "sensor"  # the `estimator` column of measured rows: no model made this depth
DEPTH_FILE_EXTENSIONS = (".png", ".tif", ".tiff", ".npy")
RGB_DIR_NAMES = ("rgb", "color", "image")
DEFAULT_DEPTH_DIR = "depth"
NYU_IMAGE_KEY, NYU_DEPTH_KEY = "images", "depths"
PLAUSIBLE_MEDIAN_DEPTH = (0.05, MAX_DEPTH_PNG)  # metres; closer than any RGB-D sensor's minimum range, or unstorable
PROBE_ROWS = 16
# Skips that say the depth (or the way it is read) is off: when most probed rows have one, the settings are wrong,
# not a file here and there.
SETTINGS_REASONS = (
    "negative_depth",
    "no_valid_depth",
    "implausible_depth",
    "depth_not_16bit",
    "unreadable_depth",
    "read_error",
)
SETTINGS_CHECKED = ("input_format", "input_reading", "depth_scale")


# --------------------------------------------------------------------------------------------------------------
# Depth units
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DepthScale:
    """Stored depth / `units_per_metre` = metres, after undoing a bit rotation some datasets store depth with."""

    units_per_metre: float
    name: str = ""
    rotate_right_bits: int = 0

    def describe(self) -> str:
        text = f"{self.units_per_metre:g} units per metre"
        if self.rotate_right_bits:
            text += f", 16-bit values rotated right by {self.rotate_right_bits} bits first"
        return f"{self.name} ({text})" if self.name else text

    def to_metres(self, values: np.ndarray) -> np.ndarray:
        if self.rotate_right_bits:
            if values.min() < 0 or values.max() > np.iinfo(np.uint16).max:
                raise SkippedImage("unreadable", "bit-rotated depth must be 16-bit (0..65535)")
            values = values.astype(np.uint16)
            values = (values >> self.rotate_right_bits) | (values << (16 - self.rotate_right_bits))
        return values.astype(np.float64) / self.units_per_metre


DEPTH_SCALE_PRESETS = {
    "nyu": DepthScale(1000, "nyu"),
    "scannet": DepthScale(1000, "scannet"),
    "arkitscenes": DepthScale(1000, "arkitscenes"),
    "tum": DepthScale(5000, "tum"),
    "kitti": DepthScale(256, "kitti"),
    # SUN RGB-D and SUN3D's depthRead.m: bitor(bitshift(d, -3), bitshift(d, 16 - 3)) / 1000.
    "sunrgbd": DepthScale(1000, "sunrgbd", rotate_right_bits=3),
}
FLOAT_METRES = DepthScale(1.0, "float metres")


def parse_depth_scale(text: str) -> DepthScale:
    """`--depth-scale`: units per metre (a positive number) or a preset name."""
    if text.lower() in DEPTH_SCALE_PRESETS:
        return DEPTH_SCALE_PRESETS[text.lower()]
    try:
        units_per_metre = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a number of units per metre nor one of {sorted(DEPTH_SCALE_PRESETS)}"
        ) from None
    if not np.isfinite(units_per_metre) or units_per_metre <= 0:
        raise argparse.ArgumentTypeError(f"the depth scale must be a positive number of units per metre, not {text}")
    return DepthScale(units_per_metre)


def read_depth_values(value) -> np.ndarray:
    """A depth cell or file as stored: an integer or float array (H, W), units not yet applied."""
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (str, Path)):
        path = Path(value)
        try:
            if path.suffix.lower() == ".npy":
                return np.load(path, allow_pickle=False)
            value = path.read_bytes()
        except (OSError, ValueError) as error:
            raise SkippedImage("unreadable_depth", f"{type(error).__name__}: {error}") from error
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            with Image.open(io.BytesIO(bytes(value))) as image:
                image.load()
                return read_depth_values(image)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
            raise SkippedImage("unreadable_depth", f"{type(error).__name__}: {error}") from error
    if isinstance(value, Image.Image):
        if value.mode.startswith("I") or value.mode == "F":  # I;16 (16-bit PNG), I (how PIL may open it), F (TIFF)
            return np.asarray(value)
        raise SkippedImage(
            "depth_not_16bit",
            f"a {value.mode} depth image is an 8-bit picture, not a measurement: need 16-bit or float",
        )
    if value is None:
        raise SkippedImage("missing_depth", "the row has no depth")
    return np.asarray(value)


def depth_in_metres(values: np.ndarray, scale: DepthScale | None) -> np.ndarray:
    """Stored depth -> float32 metres, 0 where invalid. Raises `SkippedImage` for depth that is not usable.

    0, NaN and +-inf are "no measurement" and become 0; values beyond what a 16-bit millimetre PNG holds become 0 too
    (clipping them would store a false measurement). Negative values are not distances: the row is skipped.
    """
    if values.ndim == 3 and values.shape[0] == 1:
        values = values[0]
    if values.ndim != 2:
        raise SkippedImage("unreadable_depth", f"depth must be 2-D (H, W); got shape {values.shape}")
    if values.dtype == np.uint8:
        raise SkippedImage("depth_not_16bit", "8-bit depth is a visualisation, not a measurement")
    if np.issubdtype(values.dtype, np.integer):
        if scale is None:
            raise SkippedImage("unreadable_depth", "integer depth needs --depth-scale (units per metre)")
        metres = scale.to_metres(values)
    elif np.issubdtype(values.dtype, np.floating):
        metres = (scale or FLOAT_METRES).to_metres(values)
    else:
        raise SkippedImage("unreadable_depth", f"depth of dtype {values.dtype} is not a number")
    finite = np.isfinite(metres)
    negative = finite & (metres < 0)
    if negative.any():
        raise SkippedImage(
            "negative_depth",
            f"{int(negative.sum())} pixels < 0 (min {metres[negative].min():.4g}): depth must be a distance; mark "
            "missing pixels with 0 or NaN",
        )
    valid = finite & (metres > 0)
    if not valid.any():
        raise SkippedImage("no_valid_depth", "every pixel is 0, NaN or inf")
    median = float(np.median(metres[valid]))
    low, high = PLAUSIBLE_MEDIAN_DEPTH
    if not low <= median <= high:
        scale_text = scale.describe() if scale is not None else FLOAT_METRES.describe()
        raise SkippedImage(
            "implausible_depth",
            f"median valid depth {median:.4g} m is outside {low:g}-{high:g} m: is the depth scale ({scale_text}) right?",
        )
    valid &= metres <= MAX_DEPTH_PNG
    return np.where(valid, metres, 0.0).astype(np.float32)


# PIL's transposes that undo each EXIF orientation, as ImageOps.exif_transpose applies them to the image.
EXIF_TRANSPOSES = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def fit_depth_to_image(
    depth: np.ndarray, source_size: tuple[int, int], orientation: int, stored_size: tuple[int, int]
) -> np.ndarray:
    """Depth registered to the source image (`source_size` = (width, height)) -> depth on the stored image's grid.

    The image's EXIF rotation is applied, then the map is resized by nearest neighbour to `stored_size`, so every value
    is one the sensor measured. Only a depth map of the image's size or exactly its aspect ratio is registered to it.
    """
    depth_height, depth_width = depth.shape
    width, height = source_size
    if depth_width * height != width * depth_height:
        raise SkippedImage(
            "size_mismatch",
            f"depth {depth_width}x{depth_height} vs image {width}x{height} (width x height): another aspect ratio, so "
            "the depth is not registered to the image",
        )
    depth_image = Image.fromarray(np.ascontiguousarray(depth, dtype=np.float32))  # mode F: values kept exactly
    if orientation in EXIF_TRANSPOSES:
        depth_image = depth_image.transpose(EXIF_TRANSPOSES[orientation])
    if depth_image.size != stored_size:
        depth_image = depth_image.resize(stored_size, Image.Resampling.NEAREST)
    return np.asarray(depth_image, dtype=np.float32)


@dataclass(frozen=True)
class RowSettings:
    depth_scale: DepthScale | None
    max_side: int
    max_pixels: int


def make_row(raw_image: bytes | Image.Image, depth_value, source_id: str, settings: RowSettings) -> dict:
    """One stored row from a source image and its depth; raises `SkippedImage` for a pair that cannot be used."""
    prepared = prepare_image(raw_image, settings.max_side, settings.max_pixels)
    source = raw_image if isinstance(raw_image, Image.Image) else Image.open(io.BytesIO(raw_image))  # header only
    metres = depth_in_metres(read_depth_values(depth_value), settings.depth_scale)
    stored_size = (prepared.image.width, prepared.image.height)
    depth = fit_depth_to_image(metres, source.size, exif_orientation(source), stored_size)
    return {
        "image": {"bytes": prepared.data, "path": None},
        "depth": encode_depth_png(depth),
        "depth_is_metric": True,
        "depth_encoding": METRIC_DEPTH_ENCODING,
        "estimator": SENSOR_ESTIMATOR,
        "source_id": source_id,
        "width": prepared.image.width,
        "height": prepared.image.height,
    }


# --------------------------------------------------------------------------------------------------------------
# Inputs: rgb/ + depth/ folders, the NYU Depth v2 .mat, datasets tables
# --------------------------------------------------------------------------------------------------------------
def _files_by_key(folder: Path, extensions: tuple[str, ...]) -> dict[str, list[Path]]:
    """Files under `folder` by path without extension (`sub/0001`), the key a pair is matched on."""
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_file() and path.suffix.lower() in extensions and not any(p.startswith(".") for p in relative.parts):
            found.setdefault(relative.with_suffix("").as_posix(), []).append(path)
    return found


class PairFolderSource:
    """Every (rgb, depth) file pair under `root`: in each folder that has an rgb and a depth subfolder."""

    input_format = "folder"
    depth_is_float = False  # 16-bit PNGs have no unit: --depth-scale is required

    def __init__(self, root: str | Path, rgb_dir: str | None = None, depth_dir: str = DEFAULT_DEPTH_DIR):
        self.root = Path(root)
        self.description = f"RGB-D folder `{self.root.resolve().name}`"
        rgb_names = (rgb_dir,) if rgb_dir else RGB_DIR_NAMES
        self.reading = {"rgb_dirs": list(rgb_names), "depth_dir": depth_dir}
        entries = []  # (match key, rgb files, depth files): one entry per name found on either side
        for directory, subdirectories, _ in os.walk(self.root):
            subdirectories[:] = sorted(name for name in subdirectories if not name.startswith("."))
            rgb_name = next((name for name in rgb_names if name in subdirectories), None)
            if rgb_name is None or depth_dir not in subdirectories:
                continue
            scene = Path(directory)
            subdirectories[:] = [name for name in subdirectories if name not in (rgb_name, depth_dir)]
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
        self.entries = entries
        self.source_ids = [(rgb or depth)[0].relative_to(self.root).as_posix() for _, rgb, depth in entries]

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
    """The NYU Depth v2 labelled `.mat` (MATLAB v7.3 = HDF5), read one row at a time with h5py."""

    input_format = "nyu_mat"

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


class TableSource:
    """An image column and a depth column of a `datasets.Dataset`; source ids are row indices."""

    input_format = "table"

    def __init__(self, dataset, image_column: str | None, depth_column: str | None, description: str):
        from datasets import Image as ImageFeature

        depth_column = depth_column or DEFAULT_DEPTH_DIR
        if depth_column not in dataset.features:
            raise SystemExit(
                f"--depth-column {depth_column!r} is not a column; the columns are {list(dataset.features)}."
            )
        if image_column is None:
            image_column = find_image_column({k: v for k, v in dataset.features.items() if k != depth_column})
        self.images = DatasetSource(dataset, image_column, description)
        depth_feature = dataset.features[depth_column]
        depths = dataset.select_columns([depth_column])
        if isinstance(depth_feature, ImageFeature):
            depths = depths.cast_column(depth_column, ImageFeature(decode=False))  # the 16-bit PNG bytes as stored
        dtype = _innermost_dtype(depth_feature)
        self.depth_is_float = dtype is not None and dtype.startswith("float")
        self.depths = depths
        self.depth_column = depth_column
        self.reading = {"image_column": image_column, "depth_column": depth_column}
        self.description = description
        self.source_ids = self.images.source_ids

    def __len__(self) -> int:
        return len(self.source_ids)

    def read(self, index: int) -> tuple[bytes | Image.Image, object]:
        return self.images.read(index), self.depths[index][self.depth_column]


def detect_input_type(source: str) -> str:
    path = Path(source)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in (".mat", ".h5", ".hdf5"):
            return "mat"
        if suffix == ".parquet":
            return "parquet"
        raise SystemExit(
            f"--input {source} is a file: give a .mat, parquet file(s), a dataset folder or a pair folder."
        )
    if not path.is_dir():
        raise SystemExit(f"--input {source} does not exist.")
    if any((path / name).exists() for name in ("dataset_dict.json", "state.json", "dataset_info.json")):
        return "disk"
    if not (path / DEFAULT_DEPTH_DIR).is_dir() and any(path.rglob("*.parquet")):
        return "parquet"
    return "folder"


def open_source(args: argparse.Namespace):
    import datasets

    input_type = args.input_type if args.input_type != "auto" else detect_input_type(args.input)
    if input_type == "folder":
        return PairFolderSource(args.input, args.rgb_dir, args.depth_dir or DEFAULT_DEPTH_DIR)
    if input_type == "mat":
        return NYUMatSource(args.input, args.image_column or NYU_IMAGE_KEY, args.depth_column or NYU_DEPTH_KEY)
    path = Path(args.input)
    if input_type == "disk":
        loaded = datasets.load_from_disk(args.input)
        if isinstance(loaded, datasets.DatasetDict):
            if args.split not in loaded:
                raise SystemExit(f"Split {args.split!r} is not in {args.input}; it has {list(loaded)} (use --split).")
            loaded = loaded[args.split]
        description = f"dataset `{path.resolve().name}` ({args.split})"
    elif input_type == "parquet":
        try:
            files = find_data_files(path)
        except FileNotFoundError as error:
            raise SystemExit(str(error)) from None
        loaded = datasets.Dataset.from_parquet([str(file) for file in files])
        description = f"parquet files `{path.resolve().name}`"
    else:
        raise SystemExit(f"Unknown --input-type {input_type!r}.")
    return TableSource(loaded, args.image_column, args.depth_column, description)


# --------------------------------------------------------------------------------------------------------------
# Writing shards
# --------------------------------------------------------------------------------------------------------------
@dataclass
class ReadAndEncode(torch.utils.data.Dataset):
    """Worker side: read a pair, convert, resize and encode it; a stored row or the reason it is skipped."""

    source: PairFolderSource | NYUMatSource | TableSource
    items: list[WorkItem]
    settings: RowSettings

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> dict:
        item = self.items[k]
        try:
            raw_image, depth_value = self.source.read(item.index)
            return {"item": item, "row": make_row(raw_image, depth_value, item.source_id, self.settings)}
        except SkippedImage as skip:
            return {"item": item, "skip": {"source_id": item.source_id, "reason": skip.reason, "detail": skip.detail}}
        except Exception as error:  # whatever else one odd file triggers must not stop the job
            detail = f"{type(error).__name__}: {error}"
            return {"item": item, "skip": {"source_id": item.source_id, "reason": "read_error", "detail": detail}}


def probe_depth_settings(source, settings: RowSettings, num_items: int) -> None:
    """Stop before any work when most of the first rows are unusable for a reason that points at the settings (a wrong
    scale, column or sign convention) rather than at a file here and there, instead of writing a dataset of skips."""
    items = [WorkItem(0, index, index, source.source_ids[index]) for index in range(min(num_items, PROBE_ROWS))]
    probed = ReadAndEncode(source, items, settings)
    results = [probed[k] for k in range(len(items))]
    telling = [result["skip"] for result in results if result.get("skip", {}).get("reason") in SETTINGS_REASONS]
    if 2 * len(telling) > len(results):
        examples = "\n".join(f"  {skip['source_id']}: {skip['reason']}: {skip['detail']}" for skip in telling[:3])
        raise SystemExit(
            f"{len(telling)} of the first {len(results)} pairs have unusable depth, for example:\n{examples}\nCheck "
            "--depth-scale (integer depth: 1000 = millimetres (NYU, ScanNet, ARKitScenes), 5000 = TUM, 256 = KITTI; "
            "float depth is metres unless a scale is given) and --depth-column."
        )


def shard_work_items(source_ids: list[str], shards: list[int], shard_size: int, num_items: int) -> list[WorkItem]:
    """Every input item of `shards`, in shard order: the fixed slice of the sorted input list each shard holds."""
    return [
        WorkItem(shard, position, index, source_ids[index])
        for shard in shards
        for position, index in enumerate(shard_item_range(shard, shard_size, num_items))
    ]


def write_pending_shards(
    source,
    items: list[WorkItem],
    settings: RowSettings,
    out_dir: Path,
    num_workers: int,
    progress: bool,
    description: str,
) -> dict:
    """Read, encode and write the shards of `items` (this process's missing ones); returns counts and timing."""
    loader = torch.utils.data.DataLoader(
        ReadAndEncode(source, items, settings),
        batch_size=8,
        shuffle=False,  # shards complete in order, so each is written as soon as its last pair is through
        num_workers=num_workers,
        collate_fn=list,
        prefetch_factor=4 if num_workers > 0 else None,
    )
    expected = Counter(item.shard for item in items)
    rows: dict[int, list[dict]] = {shard: [] for shard in expected}
    skipped: dict[int, list[dict]] = {shard: [] for shard in expected}
    started: dict[int, float] = {}
    written, num_rows, num_skipped = [], 0, 0
    bar = tqdm(total=len(items), unit="pair", disable=not progress, desc=description, dynamic_ncols=True)
    start = time.perf_counter()
    try:
        for batch in loader:
            for result in batch:
                shard = result["item"].shard
                started.setdefault(shard, time.perf_counter())
                if "row" in result:
                    rows[shard].append(result["row"])
                else:
                    skipped[shard].append(result["skip"])
                bar.update(1)
                if len(rows[shard]) + len(skipped[shard]) == expected[shard]:
                    seconds = time.perf_counter() - started[shard]
                    write_shard(out_dir, shard, rows[shard], skipped[shard], seconds)
                    num_rows += len(rows.pop(shard))
                    num_skipped += len(skipped.pop(shard))
                    written.append(shard)
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    return {
        "items": len(items),
        "rows": num_rows,
        "skipped": num_skipped,
        "shards_written": written,
        "seconds": seconds,
    }


# --------------------------------------------------------------------------------------------------------------
# Settings record and dataset card
# --------------------------------------------------------------------------------------------------------------
def check_sensor_settings(out_dir: Path, info: dict) -> None:
    """Refuse to resume with another depth scale, input kind or columns (`check_generation_info` checks the rest)."""
    info_path = out_dir / "generation.json"
    if info_path.exists():
        existing = json.loads(info_path.read_text())
        differing = [key for key in SETTINGS_CHECKED if existing.get(key) != info.get(key)]
        if differing:
            raise SystemExit(
                f"{out_dir} holds shards made with other settings ({', '.join(differing)} differ): use a fresh "
                f"--out, or the original settings.\nexisting: {existing}\nrequested: {info}"
            )


COLUMN_DESCRIPTIONS = {
    "image": "RGB, EXIF rotation applied, longer side <= {max_side} px; the source JPEG bytes when unchanged, else "
    "JPEG (q95) for JPEG sources and PNG otherwise",
    "depth": "16-bit PNG at the image's height and width: millimetres (value / 1000 = metres), 0 = no measurement",
    "depth_is_metric": "`true`: measured metric depth",
    "depth_encoding": "`" + METRIC_DEPTH_ENCODING + "`",
    "estimator": "`" + SENSOR_ESTIMATOR + "`: measured by a depth sensor, not predicted by a model",
    "source_id": "the rgb file's path relative to the input folder, or the row index in the input",
    "width": "image width in pixels",
    "height": "image height in pixels",
}


def write_card(out_dir: Path, info: dict, license_id: str) -> dict:
    """`README.md` (dataset card) and `skipped.jsonl` from the shard logs; returns the totals."""
    logs, missing = read_shard_logs(out_dir, info["num_shards"])
    skipped = [{**record, "shard": log["shard"]} for log in logs for record in log["skipped"]]
    rows = sum(log["rows"] for log in logs)
    write_atomically(out_dir / "skipped.jsonl", "".join(json.dumps(record) + "\n" for record in skipped))
    features = dataset_features()
    shard_files = [shard_path(out_dir, log["shard"]) for log in logs]
    front_matter = card_front_matter(
        features,
        split_files={"train": shard_files},
        data_files={"train": "data/shard-*.parquet"},
        license_id=license_id,
        pretty_name="Sensor RGB-D pairs: " + info["input_description"],
        task_categories=["depth-estimation"],
        tags=["rgb-d", "depth", "metric-depth", "sensor"],
    )
    status = "complete" if not missing else f"**incomplete: {len(missing)} shards missing** (rerun the command)"
    descriptions = {**COLUMN_DESCRIPTIONS, "image": COLUMN_DESCRIPTIONS["image"].format(max_side=info["max_side"])}
    body = f"""
# Sensor RGB-D pairs: {info["input_description"]}

Every usable RGB-D pair of {info["input_description"]} with its **measured** depth, made with
`python -m training.ingest_sensor` (Qwen2.5-VL-Depth). Source depth units: {info["depth_scale"]}.
Pixels with no measurement (0, NaN, inf in the source) and depths beyond 65.535 m are 0. Depth was resized to the
stored image by nearest neighbour only, so every stored value is a measurement (to the millimetre).

## Counts

| input pairs | pairs (rows) | skipped | shards | status |
|---|---|---|---|---|
| {info["num_items"]} | {rows} | {len(skipped)} | {info["num_shards"] - len(missing)} / {info["num_shards"]} | {status} |

## Columns

{columns_table(features, descriptions)}

## Loading

```python
from datasets import load_dataset
from training.depth_png import decode_depth_png  # or: np.asarray(PIL.Image.open(io.BytesIO(b)), np.float32) / 1000

pairs = load_dataset("<this folder>", split="train")
depth_metres = decode_depth_png(pairs[0]["depth"])  # float32 (H, W), 0 = no measurement
```

`training.make_rgbd_pairs.RGBDPairs(<folder>, augment=True)` and `training.align --data <folder>` read it as is.

## Skipped pairs

{skipped_section(skipped)}

The full list is in `skipped.jsonl`.

## License

`license: {license_id}`: images and depth keep the license and terms of their source ({info["input_description"]}:
NYU Depth v2, SUN RGB-D, ScanNet, ARKitScenes and TUM each have their own terms of use). Set `license` to what applies
before publishing.

## Settings

```json
{json.dumps(info, indent=2, sort_keys=True)}
```
"""
    write_atomically(out_dir / "README.md", front_matter + body)
    reasons = Counter(record["reason"] for record in skipped)
    return {"rows": rows, "skipped": len(skipped), "skipped_by_reason": dict(reasons), "missing_shards": missing}


# --------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--input", required=True, help="rgb/+depth/ folder, NYU .mat, parquet file(s) or dataset folder"
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder (rerun the same command to resume)")
    parser.add_argument("--input-type", choices=("auto", "folder", "mat", "disk", "parquet"), default="auto")
    parser.add_argument(
        "--depth-scale",
        type=parse_depth_scale,
        default=None,
        help=f"stored depth units per metre, or one of {', '.join(DEPTH_SCALE_PRESETS)} (required for integer depth)",
    )
    parser.add_argument("--rgb-dir", default=None, help=f"rgb subfolder name (default: {'/'.join(RGB_DIR_NAMES)})")
    parser.add_argument("--depth-dir", default=None, help=f"depth subfolder name (default: {DEFAULT_DEPTH_DIR})")
    parser.add_argument(
        "--image-column", default=None, help="image column / .mat dataset (default: detected / images)"
    )
    parser.add_argument("--depth-column", default=None, help="depth column / .mat dataset (default: depth / depths)")
    parser.add_argument("--split", default="train", help="split of a save_to_disk DatasetDict")
    parser.add_argument("--shard-size", type=int, default=1000, help="input pairs per parquet shard")
    parser.add_argument("--max-items", type=int, default=None, help="only the first N input pairs (sorted)")
    parser.add_argument("--max-side", type=int, default=1024, help="images are downscaled to this longer side")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="larger input images are skipped")
    parser.add_argument("--num-workers", type=int, default=4, help="DataLoader workers reading and encoding pairs")
    parser.add_argument("--license", default="other", help="license id for the dataset card")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)
    for name in ("shard_size", "max_side"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.num_workers < 0:
        parser.error("--num-workers must be >= 0")
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run the CLI; returns this process's counts (plus the card's totals on the main process)."""
    args = parse_args(argv)
    state = distributed_state()
    out_dir: Path = args.out
    source = open_source(args)
    if args.depth_scale is None and not source.depth_is_float:
        raise SystemExit(
            f"{source.description} stores integer depth (16-bit PNGs), which has no unit of its own: pass "
            f"--depth-scale (units per metre: 1000 for millimetres (NYU, ScanNet, ARKitScenes), 5000 for TUM, 256 for "
            f"KITTI) or a preset ({', '.join(DEPTH_SCALE_PRESETS)})."
        )
    num_items = len(source) if args.max_items is None else min(len(source), args.max_items)
    if num_items == 0:
        raise SystemExit(f"No pairs found in {args.input}.")
    settings = RowSettings(args.depth_scale, args.max_side, args.max_pixels)
    probe_depth_settings(source, settings, num_items)  # every rank: they all stop together, before any barrier
    info = {
        "input": str(args.input),
        "input_description": source.description,
        "input_format": source.input_format,
        "input_reading": source.reading,
        "estimator": SENSOR_ESTIMATOR,
        "depth_scale": (args.depth_scale or FLOAT_METRES).describe(),
        "depth_is_metric": True,
        "depth_encoding": METRIC_DEPTH_ENCODING,
        "max_side": args.max_side,
        "max_pixels": args.max_pixels,
        **shard_layout_info(source.source_ids[:num_items], args.shard_size),
    }
    check_sensor_settings(out_dir, info)

    def write_pending(pending: list[int], rank_name: str) -> dict:
        items = shard_work_items(source.source_ids, pending, args.shard_size, num_items)
        progress = args.progress and state.is_local_main_process
        description = f"{rank_name}sensor RGB-D pairs"
        return write_pending_shards(source, items, settings, out_dir, args.num_workers, progress, description)

    return run_shard_job(state, out_dir, info, write_pending, lambda: write_card(out_dir, info, args.license), "pair")


def shard_layout_info(source_ids: list[str], shard_size: int) -> dict:
    """The settings that fix which input goes to which shard; a rerun must match them to resume."""
    return {
        "format_version": FORMAT_VERSION,
        "shard_size": shard_size,
        "num_items": len(source_ids),
        "num_shards": num_shards_for(len(source_ids), shard_size),
        # The shard slices are only stable while the sorted input list is: a changed folder must not mix in.
        "items_sha256": hashlib.sha256("\n".join(source_ids).encode()).hexdigest(),
    }


if __name__ == "__main__":
    main()
