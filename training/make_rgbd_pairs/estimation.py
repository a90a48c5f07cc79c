"""RGB-D pairs from any image collection: a monocular depth map for every image, as a sharded parquet dataset.

    python -m training.make_rgbd_pairs --input photos/ --out data/photos_rgbd
    python -m training.make_rgbd_pairs --input data/saved_dataset --out data/rgbd --image-column image
    python -m training.make_rgbd_pairs --input user/some-dataset --split train --out data/rgbd \\
        --estimator depth-anything/Depth-Anything-V2-Metric-Indoor-Small-hf
    accelerate launch --num_processes 8 -m training.make_rgbd_pairs --input photos/ --out data/photos_rgbd

Input (`--input`): an image folder (searched recursively), a local `datasets` dataset (`save_to_disk` folder, or
parquet files / a folder of them; the image column is auto-detected or given with `--image-column`), or a hub dataset
id (downloaded with `datasets.load_dataset(id, split=--split)`).

Output (`--out DIR`): `DIR/data/shard-00000.parquet`, ... with one row per usable image:

* `image`: the image (`datasets.Image`): the source JPEG bytes when they need no change, else JPEG (q95) for JPEG
  sources and PNG for the rest; converted to RGB, EXIF rotation applied, downscaled to `--max-side`.
* `depth`: 16-bit PNG bytes of the same height and width, 0 = invalid. `depth_encoding` says how to read it:
  `uint16_png_millimetres` (metric checkpoints: millimetres, so up to 65.535 m) or `uint16_png_relative_x1000`
  (relative checkpoints: depth / median depth of the image x 1000, so 1000 is the image median, clipped at 65535).
  `decode_depth_png` gives metres (or median-relative depth) as float32 for both.
* `depth_is_metric`, `depth_encoding`, `estimator` (the `--estimator` id/path), `source_id` (path relative to the
  input folder, or dataset row index), `width`, `height`.

Plus `DIR/README.md` (a dataset card: columns, counts, skipped images, license note), `DIR/skipped.jsonl` (every
skipped image and why), `DIR/generation.json` (the settings; a rerun with other settings is refused) and
`DIR/shard_logs/` (per-shard counts and skips, from which the card is built).

Images are never resized to a common size: each is preprocessed like `MonocularDepthEstimator` does for it alone
(the DepthAnything processor keeps the aspect ratio), images whose preprocessed shapes match are batched together
(a bucket per shape), and each prediction is resized back to its own image. So a stored depth map is what the
estimator gives for that stored image by itself, only faster.

Throughput: decoding, RGB conversion, downscaling, image encoding and preprocessing run in DataLoader workers
(`--num-workers`); the estimator runs batched (`--batch-size`) in bf16 on CUDA, fp32 on CPU; depth PNGs are encoded
in a thread pool. Under `accelerate launch`, shard `i` goes to rank `i % world_size`.

Resuming: shard `i` always holds the same slice of the sorted input list (`--shard-size` items), is written to a
temporary file and atomically renamed, so a rerun only produces missing shards and a killed run loses only the
shard in progress.

Bad images never stop the job: corrupt, truncated, too small (< 16 px side) or too large (> `--max-pixels`, default
50 MP; PIL's decompression-bomb guard is caught too) images are skipped and listed; grayscale, CMYK, palette, RGBA
(composited on white), 16-bit and float images are converted to 8-bit RGB.

For training, `RGBDPairs(DIR, augment=True)` (a torch Dataset of `RGBDPair`s; Stage 1 alignment reads its pairs with
it too) and `load_rgbd_pair(row, augment, rng)` decode rows and apply the same random horizontal flip and small
rotation (default +-10 degrees) to image and depth, at load time: the stored pairs stay unaugmented.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from processing_depth import DEFAULT_DEPTH_ESTIMATOR, MonocularDepthEstimator, to_rgb_image
from training.depth_png import (
    PNG_COMPRESS_LEVEL,
    decode_depth_cell,
    decode_image_cell,
    encode_depth_png,
)
from training.load import find_data_files, load_rows


FORMAT_VERSION = 1
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jfif", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")
MIN_IMAGE_SIDE = 16
DEFAULT_MAX_PIXELS = 50_000_000
METRIC_DEPTH_ENCODING = "uint16_png_millimetres"
RELATIVE_DEPTH_ENCODING = "uint16_png_relative_x1000"
# Both encodings store depth x 1000: millimetres for metric depth, thousandths of the image median for relative.
JPEG_QUALITY = 95
EXIF_ORIENTATION_TAG = 0x0112
# Images wait in per-shape buckets until a bucket fills; past this many batches' worth the biggest bucket runs early,
# which bounds memory when a collection has many aspect ratios.
MAX_BUFFERED_BATCHES = 4
DEFAULT_MAX_ROTATION_DEGREES = 10.0
# Columns of a pair besides its image (`RGBDPair`).
PAIR_COLUMNS = ("depth", "depth_is_metric", "source_id")
CARD_SKIPPED_LISTED = 200


# --------------------------------------------------------------------------------------------------------------
# Depth PNG encoding
# --------------------------------------------------------------------------------------------------------------
def depth_encoding_name(is_metric: bool) -> str:
    return METRIC_DEPTH_ENCODING if is_metric else RELATIVE_DEPTH_ENCODING


# --------------------------------------------------------------------------------------------------------------
# Decoding images robustly
# --------------------------------------------------------------------------------------------------------------
class SkippedImage(Exception):
    """An input image that is not used; `reason` is a short keyword, `detail` a human-readable explanation."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class PreparedImage:
    """An input image as it is stored: RGB pixels, the bytes holding exactly them, and their (height, width)."""

    image: Image.Image
    data: bytes

    @property
    def size_hw(self) -> tuple[int, int]:
        return self.image.height, self.image.width


def _exif_orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(EXIF_ORIENTATION_TAG, 1))
    except Exception:  # malformed EXIF is common in the wild and must not cost the image
        return 1


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB (`processing_depth.to_rgb_image`); a mode PIL cannot convert skips the image."""
    try:
        return to_rgb_image(image)
    except ValueError as error:
        raise SkippedImage("unsupported_mode", str(error)) from error


def _encode_image(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    if image_format == "JPEG":
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    else:
        image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def prepare_image(raw: bytes | Image.Image, max_side: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> PreparedImage:
    """Decode one input image into what is stored: RGB, upright, longer side <= `max_side`.

    Raises `SkippedImage` for images that cannot be used (unreadable, truncated, too small, too large).
    """
    with warnings.catch_warnings():
        # Sizes are checked against max_pixels below; PIL's own bomb warning would only repeat that.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = raw if isinstance(raw, Image.Image) else Image.open(io.BytesIO(raw))
        except Image.DecompressionBombError as error:
            raise SkippedImage("too_large", str(error)) from error
        except UnidentifiedImageError as error:
            raise SkippedImage("unreadable", "not an image format PIL can read") from error
        except (OSError, ValueError, SyntaxError) as error:
            raise SkippedImage("unreadable", f"{type(error).__name__}: {error}") from error

        width, height = image.size
        if width * height > max_pixels:
            raise SkippedImage("too_large", f"{width}x{height} is over --max-pixels {max_pixels}")
        if min(width, height) < MIN_IMAGE_SIDE:
            raise SkippedImage("too_small", f"{width}x{height}: a side is under {MIN_IMAGE_SIDE} px")
        scale = min(1.0, max_side / max(width, height))
        target = (max(1, round(width * scale)), max(1, round(height * scale)))
        if min(target) < MIN_IMAGE_SIDE:
            raise SkippedImage("too_small", f"{width}x{height} is under {MIN_IMAGE_SIDE} px a side at --max-side")
        source_format, source_mode = image.format, image.mode
        orientation = _exif_orientation(image)
        if scale < 1 and source_format == "JPEG":
            image.draft("RGB", target)  # decode at 1/2, 1/4 or 1/8 scale in the DCT domain: big photos load fast

        try:
            image.load()
        except Image.DecompressionBombError as error:
            raise SkippedImage("too_large", str(error)) from error
        except OSError as error:
            reason = "truncated" if "truncated" in str(error).lower() else "unreadable"
            raise SkippedImage(reason, f"{type(error).__name__}: {error}") from error
        except (ValueError, SyntaxError, EOFError) as error:
            raise SkippedImage("unreadable", f"{type(error).__name__}: {error}") from error

    if orientation != 1:
        image = ImageOps.exif_transpose(image)
        if orientation in (5, 6, 7, 8):  # these orientations swap width and height
            target = target[::-1]
    rgb = to_rgb(image)
    if rgb.size != target:
        rgb = rgb.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)

    unchanged = isinstance(raw, bytes) and source_mode == "RGB" and scale == 1 and orientation == 1
    if source_format == "JPEG" and unchanged:
        return PreparedImage(rgb, raw)  # no re-encoding: no extra loss and no CPU spent
    if source_format in ("JPEG", "MPO"):
        data = _encode_image(rgb, "JPEG")
        # Estimate depth from the pixels a reader will decode, not from the ones before JPEG compression.
        with Image.open(io.BytesIO(data)) as stored:
            rgb = stored.convert("RGB")
        return PreparedImage(rgb, data)
    return PreparedImage(rgb, _encode_image(rgb, "PNG"))


# --------------------------------------------------------------------------------------------------------------
# Inputs: image folders and `datasets` datasets
# --------------------------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------------------------
# Shards
# --------------------------------------------------------------------------------------------------------------
def num_shards_for(num_items: int, shard_size: int) -> int:
    return -(-num_items // shard_size)


def shard_item_range(shard: int, shard_size: int, num_items: int) -> range:
    """The input indices of shard `shard`: a fixed slice of the sorted input list."""
    return range(shard * shard_size, min((shard + 1) * shard_size, num_items))


def shards_for_rank(num_shards: int, rank: int, world_size: int) -> list[int]:
    """Shards written by process `rank` of `world_size`: round-robin, so every shard has exactly one owner."""
    return list(range(rank, num_shards, world_size))


def shard_path(out_dir: Path, shard: int) -> Path:
    return Path(out_dir) / "data" / f"shard-{shard:05d}.parquet"


def shard_log_path(out_dir: Path, shard: int) -> Path:
    return Path(out_dir) / "shard_logs" / f"shard-{shard:05d}.json"


def _temp_path(final_path: Path) -> Path:
    # Hidden and suffixed: neither the card's data_files glob nor datasets' own file discovery picks it up.
    return final_path.with_name(f".{final_path.name}.tmp-{os.getpid()}")


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp_path = _temp_path(path)
    temp_path.write_text(text)
    os.replace(temp_path, path)


def remove_stale_temp_files(out_dir: Path, shards: list[int]) -> list[Path]:
    """Delete temporary files a killed run left for `shards` (only this process's shards: others may be writing)."""
    removed = []
    for shard in shards:
        for final_path in (shard_path(out_dir, shard), shard_log_path(out_dir, shard)):
            for temp_path in final_path.parent.glob(f".{final_path.name}.tmp-*"):
                temp_path.unlink(missing_ok=True)
                removed.append(temp_path)
    return removed


def dataset_features():
    from datasets import Features, Value
    from datasets import Image as ImageFeature

    return Features(
        {
            "image": ImageFeature(),
            "depth": Value("binary"),
            "depth_is_metric": Value("bool"),
            "depth_encoding": Value("string"),
            "estimator": Value("string"),
            "source_id": Value("string"),
            "width": Value("int32"),
            "height": Value("int32"),
        }
    )


def write_shard(out_dir: Path, shard: int, rows: list[dict], skipped: list[dict], seconds: float) -> None:
    """Publish one shard: its log first, then the parquet file (atomically), which marks the shard done."""
    import datasets

    features = dataset_features()
    log = {"shard": shard, "rows": len(rows), "skipped": skipped, "seconds": round(seconds, 3)}
    _write_atomically(shard_log_path(out_dir, shard), json.dumps(log, indent=1) + "\n")
    final_path = shard_path(out_dir, shard)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    temp_path = _temp_path(final_path)
    columns = {name: [row[name] for row in rows] for name in features}  # also right for a shard with no rows
    bars_were_enabled = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # our own bar tracks images
    try:
        datasets.Dataset.from_dict(columns, features=features).to_parquet(str(temp_path))
    finally:
        if bars_were_enabled:
            datasets.enable_progress_bars()
    os.replace(temp_path, final_path)


# --------------------------------------------------------------------------------------------------------------
# Loading (DataLoader workers) and estimating (main process)
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorkItem:
    shard: int
    position: int  # index inside the shard
    index: int  # index in the input list
    source_id: str


class DecodeAndPreprocess(torch.utils.data.Dataset):
    """Worker side: read, decode, convert, downscale, encode for storage and preprocess one image (CPU only)."""

    def __init__(self, source, items: list[WorkItem], estimator: MonocularDepthEstimator, max_side, max_pixels):
        self.source = source
        self.items = items
        self.estimator = estimator  # only its image processor is used here: the model stays in the main process
        self.max_side = max_side
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> dict:
        item = self.items[k]
        loaded = {"item": item}
        try:
            prepared = prepare_image(self.source.read(item.index), self.max_side, self.max_pixels)
            loaded["image_bytes"] = prepared.data
            loaded["size_hw"] = prepared.size_hw
            loaded["pixel_values"] = self.estimator.preprocess([prepared.image])
        except SkippedImage as skip:
            loaded["skip"] = {"reason": skip.reason, "detail": skip.detail}
        except Exception as error:  # whatever else one odd file triggers must not stop the job
            loaded["skip"] = {"reason": "decode_error", "detail": f"{type(error).__name__}: {error}"}
        return loaded


def _keep_as_list(batch: list[dict]) -> list[dict]:
    # Images of different shapes cannot be stacked here; the main process buckets them by shape across batches.
    return batch


def _init_worker(worker_id: int) -> None:
    # Workers parallelise across images; intra-op threads in each would only oversubscribe the cores.
    torch.set_num_threads(1)


@dataclass
class ShardProgress:
    shard: int
    expected: int
    received: int = 0
    started: float | None = None  # when its first image came out of the DataLoader

    def __post_init__(self):
        self.rows: dict[int, Future] = {}
        self.skipped: list[dict] = []


class PairWriter:
    """Main-process side: buckets loaded images by shape, runs the estimator, encodes depth, writes finished shards."""

    def __init__(self, estimator, out_dir: Path, batch_size: int, encode_threads: int, progress_bar):
        self.estimator = estimator
        self.out_dir = out_dir
        self.batch_size = batch_size
        self.progress_bar = progress_bar
        self.is_metric = estimator.is_metric
        self.encoding = depth_encoding_name(self.is_metric)
        self.pin_memory = estimator.model.device.type == "cuda"
        # PIL releases the GIL while compressing, so threads encode depth PNGs while the accelerator runs.
        self.encoder = ThreadPoolExecutor(max_workers=max(1, encode_threads))
        self.buckets: dict[tuple, list[dict]] = {}
        self.shards: dict[int, ShardProgress] = {}
        self.rows_written = 0
        self.skipped = 0
        self.shards_written: list[int] = []

    def expect(self, shard: int, num_items: int) -> None:
        self.shards[shard] = ShardProgress(shard, num_items)

    def add(self, loaded: dict) -> None:
        item: WorkItem = loaded["item"]
        progress = self.shards[item.shard]
        progress.received += 1
        if progress.started is None:
            progress.started = time.perf_counter()
        if "skip" in loaded:
            progress.skipped.append({"source_id": item.source_id, **loaded["skip"]})
            self.skipped += 1
            self.progress_bar.update(1)
        else:
            shape = tuple(loaded["pixel_values"].shape[1:])
            bucket = self.buckets.setdefault(shape, [])
            bucket.append(loaded)
            if len(bucket) >= self.batch_size:
                self._run_bucket(shape)
            elif sum(len(waiting) for waiting in self.buckets.values()) > MAX_BUFFERED_BATCHES * self.batch_size:
                self._run_bucket(max(self.buckets, key=lambda key: len(self.buckets[key])))
        if progress.received == progress.expected:
            # Items arrive in input order, so every image still waiting belongs to this shard or an earlier one.
            for shape in list(self.buckets):
                self._run_bucket(shape)
            self._write(progress)

    def _run_bucket(self, shape: tuple) -> None:
        group = self.buckets.pop(shape)
        pixel_values = torch.cat([loaded["pixel_values"] for loaded in group])
        if self.pin_memory:
            # Pinned after stacking: pinning each image in the DataLoader would be undone by torch.cat.
            pixel_values = pixel_values.pin_memory()
        depths = self.estimator.predict(pixel_values, [loaded["size_hw"] for loaded in group])
        for loaded, depth in zip(group, depths):
            item = loaded["item"]
            self.shards[item.shard].rows[item.position] = self.encoder.submit(self._row, loaded, depth)
        self.progress_bar.update(len(group))

    def _row(self, loaded: dict, depth: np.ndarray) -> dict:
        height, width = loaded["size_hw"]
        return {
            "image": {"bytes": loaded["image_bytes"], "path": None},
            "depth": encode_depth_png(depth),
            "depth_is_metric": self.is_metric,
            "depth_encoding": self.encoding,
            "estimator": self.estimator.model_name_or_path,
            "source_id": loaded["item"].source_id,
            "width": width,
            "height": height,
        }

    def _write(self, progress: ShardProgress) -> None:
        rows = [progress.rows[position].result() for position in sorted(progress.rows)]
        write_shard(self.out_dir, progress.shard, rows, progress.skipped, time.perf_counter() - progress.started)
        self.rows_written += len(rows)
        self.shards_written.append(progress.shard)
        del self.shards[progress.shard]

    def close(self) -> None:
        self.encoder.shutdown(wait=True)


def generate_shards(
    source,
    shards: list[int],
    num_items: int,
    estimator: MonocularDepthEstimator,
    out_dir: Path,
    shard_size: int,
    batch_size: int = 32,
    num_workers: int = 4,
    max_side: int = 1024,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    encode_threads: int = 4,
    progress: bool = True,
    description: str = "RGB-D pairs",
) -> dict:
    """Write `shards` (all of them this process's and missing); returns counts and timing."""
    items = [
        WorkItem(shard, position, index, source.source_ids[index])
        for shard in shards
        for position, index in enumerate(shard_item_range(shard, shard_size, num_items))
    ]
    # A second estimator object for the workers, whose model is never loaded: a worker gets the image processor only
    # (loaded here, so that forked workers inherit it and spawned ones unpickle a few kilobytes).
    worker_estimator = MonocularDepthEstimator(estimator.model_name_or_path)
    worker_estimator.image_processor  # noqa: B018
    loader = torch.utils.data.DataLoader(
        DecodeAndPreprocess(source, items, worker_estimator, max_side, max_pixels),
        batch_size=batch_size,
        shuffle=False,  # shards complete in order, so each is written as soon as its last image is through
        num_workers=num_workers,
        collate_fn=_keep_as_list,
        worker_init_fn=_init_worker if num_workers > 0 else None,
        prefetch_factor=4 if num_workers > 0 else None,
    )
    bar = tqdm(total=len(items), unit="img", disable=not progress, desc=description, dynamic_ncols=True)
    writer = PairWriter(estimator, out_dir, batch_size, encode_threads, bar)
    for shard in shards:
        writer.expect(shard, len(shard_item_range(shard, shard_size, num_items)))
    start = time.perf_counter()
    try:
        for batch in loader:
            for loaded in batch:
                writer.add(loaded)
    finally:
        writer.close()
        bar.close()
    seconds = time.perf_counter() - start
    return {
        "items": len(items),
        "rows": writer.rows_written,
        "skipped": writer.skipped,
        "shards_written": writer.shards_written,
        "seconds": seconds,
    }


# --------------------------------------------------------------------------------------------------------------
# Settings record and dataset card
# --------------------------------------------------------------------------------------------------------------
def check_generation_info(out_dir: Path, info: dict, write: bool) -> None:
    """Refuse to mix shards made with different settings or inputs; record the settings (main process only)."""
    info_path = out_dir / "generation.json"
    text = json.dumps(info, indent=2, sort_keys=True) + "\n"
    if info_path.exists():
        existing = json.loads(info_path.read_text())
        keys = ("format_version", "estimator", "depth_encoding", "shard_size", "max_side", "max_pixels")
        differing = [key for key in (*keys, "num_items", "items_sha256") if existing.get(key) != info.get(key)]
        if differing:
            raise SystemExit(
                f"{out_dir} holds shards made with other settings or another input list ({', '.join(differing)} "
                f"differ): use a fresh --out, or the original settings.\nexisting: {existing}\nrequested: {info}"
            )
        return
    if write:
        _write_atomically(info_path, text)


def read_shard_logs(out_dir: Path, num_shards: int) -> tuple[list[dict], list[int]]:
    """Logs of the finished shards (those whose parquet exists) and the indices of missing shards."""
    logs, missing = [], []
    for shard in range(num_shards):
        log_path = shard_log_path(out_dir, shard)
        if shard_path(out_dir, shard).exists() and log_path.exists():
            logs.append(json.loads(log_path.read_text()))
        else:
            missing.append(shard)
    return logs, missing


def _yaml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid YAML scalar, whatever it contains


def write_card(out_dir: Path, info: dict, license_id: str) -> dict:
    """`README.md` (dataset card) and `skipped.jsonl` from the shard logs; returns the totals."""
    logs, missing = read_shard_logs(out_dir, info["num_shards"])
    skipped = [{**record, "shard": log["shard"]} for log in logs for record in log["skipped"]]
    rows = sum(log["rows"] for log in logs)
    reasons = Counter(record["reason"] for record in skipped)
    _write_atomically(out_dir / "skipped.jsonl", "".join(json.dumps(record) + "\n" for record in skipped))

    metric = info["depth_is_metric"]
    unit = "millimetres (value / 1000 = metres)" if metric else "depth / image median x 1000 (1000 = the median)"
    reason_lines = "\n".join(f"| `{reason}` | {count} |" for reason, count in sorted(reasons.items())) or "| - | 0 |"
    listed = "\n".join(
        f"| `{record['source_id']}` | `{record['reason']}` | {record['detail'][:120].replace('|', '/')} |"
        for record in skipped[:CARD_SKIPPED_LISTED]
    )
    more = (
        f"\n\n... and {len(skipped) - CARD_SKIPPED_LISTED} more: see `skipped.jsonl`."
        if len(skipped) > CARD_SKIPPED_LISTED
        else ""
    )
    estimator = info["estimator"]
    is_hub_id = not Path(estimator).exists() and estimator.count("/") == 1
    estimator_link = f"[`{estimator}`](https://huggingface.co/{estimator})" if is_hub_id else f"`{estimator}`"
    status = "complete" if not missing else f"**incomplete: {len(missing)} shards missing** (rerun the command)"
    card = f"""---
license: {license_id}
pretty_name: {_yaml_string("RGB-D pairs: " + info["input_description"])}
task_categories:
- depth-estimation
tags:
- rgb-d
- depth
- monocular-depth
configs:
- config_name: default
  data_files:
  - split: train
    path: data/shard-*.parquet
dataset_info:
  features:
  - name: image
    dtype: image
  - name: depth
    dtype: binary
  - name: depth_is_metric
    dtype: bool
  - name: depth_encoding
    dtype: string
  - name: estimator
    dtype: string
  - name: source_id
    dtype: string
  - name: width
    dtype: int32
  - name: height
    dtype: int32
---

# RGB-D pairs: {info["input_description"]}

Every usable image of {info["input_description"]} with a depth map predicted by
{estimator_link} ({"metric" if metric else "relative"} depth),
made with `python -m training.make_rgbd_pairs` (Qwen2.5-VL-Depth). The depth maps are **model predictions**, not
measurements.

## Counts

| input images | pairs (rows) | skipped | shards | status |
|---|---|---|---|---|
| {info["num_items"]} | {rows} | {len(skipped)} | {info["num_shards"] - len(missing)} / {info["num_shards"]} | {status} |

## Columns

| column | type | content |
|---|---|---|
| `image` | image | RGB, EXIF rotation applied, longer side <= {info["max_side"]} px; the source JPEG bytes when unchanged, else JPEG (q{JPEG_QUALITY}) for JPEG sources and PNG otherwise |
| `depth` | binary | 16-bit PNG, same height and width as `image`, 0 = invalid; {unit}, clipped at 65535 |
| `depth_is_metric` | bool | `{str(metric).lower()}`: {"depth in metres" if metric else "relative depth: no scale, only ratios within an image"} |
| `depth_encoding` | string | `{info["depth_encoding"]}` |
| `estimator` | string | `{info["estimator"]}` |
| `source_id` | string | path relative to the input folder, or row index in the input dataset |
| `width`, `height` | int32 | image size in pixels |

Depth is predicted for each image by itself, at the estimator's own preprocessing (aspect ratio kept), and resized
back to the image bilinearly. Relative checkpoints give affine-invariant disparity; it is stored as
`median(disparity) / disparity`, so 1000 is the image's median depth, and must not be read as metres.

## Loading

```python
import io

import numpy as np
from datasets import load_dataset
from PIL import Image

pairs = load_dataset("parquet", data_files="data/shard-*.parquet", split="train")  # or load_dataset(<this folder>)
row = pairs[0]
depth = np.asarray(Image.open(io.BytesIO(row["depth"])), dtype=np.float32) / 1000  # {"metres" if metric else "x median depth"}; 0 = invalid
```

With the Qwen2.5-VL-Depth code, `training.make_rgbd_pairs.RGBDPairs(<folder>, augment=True)` yields `RGBDPair`s
(`image`, `depth`, `depth_is_metric`, `source_id`) with the same random horizontal flip and rotation (up to
{DEFAULT_MAX_ROTATION_DEGREES:g} degrees; depth resampled nearest, 0 outside) applied to both.

## Skipped images

| reason | count |
|---|---|
{reason_lines}

{"| source_id | reason | detail |" + chr(10) + "|---|---|---|" + chr(10) + listed if skipped else "None."}{more}

The full list is in `skipped.jsonl`.

## License

`license: {license_id}`: images keep the license and terms of their source ({info["input_description"]}); depth maps
are outputs of `{info["estimator"]}`, under that model's license (Depth-Anything-V2-Small: Apache-2.0; the Base,
Large and Giant checkpoints: CC-BY-NC-4.0). Set `license` to what applies before publishing.

## Settings

```json
{json.dumps(info, indent=2, sort_keys=True)}
```
"""
    _write_atomically(out_dir / "README.md", card)
    return {"rows": rows, "skipped": len(skipped), "skipped_by_reason": dict(reasons), "missing_shards": missing}


# --------------------------------------------------------------------------------------------------------------
# Training-time loading and augmentation
# --------------------------------------------------------------------------------------------------------------
@dataclass
class RGBDPair:
    """An RGB image and its depth map, float32 (H, W): metres for metric rows, else median-relative; 0 = invalid.

    `depth_is_metric` and `source_id` are the row's, when its table has them. Not a dict, so the Trainer's removal of
    columns the model does not take passes it through to the collator untouched.
    """

    image: Image.Image
    depth: np.ndarray
    depth_is_metric: bool | None = None
    source_id: str | None = None


def transform_rgbd_pair(
    image: Image.Image, depth: np.ndarray, horizontal_flip: bool, rotation_degrees: float
) -> tuple[Image.Image, np.ndarray]:
    """One geometric transform applied identically to an image and its depth map.

    The depth map may have another resolution than the image, but not another aspect ratio: both are flipped and
    rotated about their own centre, which is the same transform of the scene. Depth is resampled nearest (every value
    is a real prediction, none is invented across an edge) and is 0 (invalid) where the rotated frame falls outside
    the original; the image is bilinear and black there. Rotation is counter-clockwise about the centre, like
    `PIL.Image.rotate`. No vertical flip: upside-down scenes are not physically plausible.
    """
    depth = np.asarray(depth, dtype=np.float32)
    depth_height, depth_width = depth.shape
    if abs(depth_width - depth_height * image.width / image.height) > 1:
        raise ValueError(
            f"Depth {depth.shape} does not have the aspect ratio of the image {(image.height, image.width)}."
        )
    if horizontal_flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        depth = depth[:, ::-1]
    if rotation_degrees:
        image = image.rotate(rotation_degrees, resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))
        depth_image = Image.fromarray(np.ascontiguousarray(depth))  # mode F: float32 kept exactly
        depth = np.asarray(depth_image.rotate(rotation_degrees, resample=Image.Resampling.NEAREST, fillcolor=0.0))
    return image, np.ascontiguousarray(depth, dtype=np.float32)


def augment_rgbd_pair(
    image: Image.Image,
    depth: np.ndarray,
    rng: np.random.Generator,
    max_rotation_degrees: float = DEFAULT_MAX_ROTATION_DEGREES,
    flip_probability: float = 0.5,
) -> tuple[Image.Image, np.ndarray]:
    """A random horizontal flip and a rotation in [-max, max] degrees, the same for image and depth."""
    horizontal_flip = bool(rng.random() < flip_probability)
    rotation_degrees = float(rng.uniform(-max_rotation_degrees, max_rotation_degrees))
    return transform_rgbd_pair(image, depth, horizontal_flip, rotation_degrees)


def decode_first_image(value) -> Image.Image:
    """An image cell (see `decode_image_cell`); an `images` column holds a list, whose first image is the scene's."""
    return decode_image_cell(value[0] if isinstance(value, (list, tuple)) else value)


def image_column_of(rows) -> str:
    for name in ("image", "images"):
        if name in rows.column_names:
            return name
    raise ValueError(f"RGB-D pairs need an 'image' or 'images' column; the columns are {rows.column_names}.")


def without_image_decoding(dataset, column: str):
    """`dataset` with its image column (of images, or of lists of images) left as raw `{"bytes", "path"}` cells, for
    our own decoding (upright RGB, with its guards) instead of `datasets`' PIL objects."""
    from datasets import Image as ImageFeature
    from datasets import LargeList, List

    feature = dataset.features[column]
    if isinstance(feature, ImageFeature):
        return dataset.cast_column(column, ImageFeature(decode=False))
    if isinstance(feature, (List, LargeList)) and isinstance(feature.feature, ImageFeature):
        return dataset.cast_column(column, List(ImageFeature(decode=False)))
    return dataset


def load_rgbd_pair(
    row: dict,
    augment: bool = False,
    rng: np.random.Generator | None = None,
    max_rotation_degrees: float = DEFAULT_MAX_ROTATION_DEGREES,
) -> tuple[Image.Image, np.ndarray]:
    """A stored row -> (RGB image, depth float32 (H, W)), optionally augmented (see `augment_rgbd_pair`).

    Depth is in metres for metric rows (`depth_is_metric`), else median-relative (1.0 = the image median); 0 = invalid.
    The image is `row["image"]`, or the first of `row["images"]` (rendered-world rows), decoded (PIL) or raw
    (`{"bytes", "path"}`).
    """
    image = decode_first_image(row["image"] if "image" in row else row["images"])
    depth = decode_depth_cell(row["depth"])
    if augment:
        rng = rng if rng is not None else np.random.default_rng()
        image, depth = augment_rgbd_pair(image, depth, rng, max_rotation_degrees)
    return image, depth


class RGBDPairs(torch.utils.data.Dataset):
    """RGB-D pairs as a torch Dataset of `RGBDPair`s, decoded (and augmented) at load time.

    `pairs`: what this script writes (its output folder), any folder or file `training.load.load_rows` reads, or a
    `datasets.Dataset`, with an `image` (or `images`: the first is used) and a `depth` column; `indices` picks rows
    (default: all). With `augment=True` each item gets a random horizontal flip and rotation (up to
    `max_rotation_degrees`; 0: flips only) drawn from (seed, epoch, position): reproducible, the same in any
    DataLoader worker and on every rank, new every epoch once `set_epoch` is called, and the same again on resume.
    """

    def __init__(
        self,
        pairs,
        indices: Sequence[int] | None = None,
        augment: bool = False,
        seed: int = 0,
        max_rotation_degrees: float = DEFAULT_MAX_ROTATION_DEGREES,
    ):
        from datasets import Dataset

        rows = pairs if isinstance(pairs, Dataset) else load_rows(pairs)
        image_column = image_column_of(rows)
        if "depth" not in rows.column_names:
            raise ValueError(f"RGB-D pairs need a 'depth' column; the columns are {rows.column_names}.")
        columns = [name for name in (image_column, *PAIR_COLUMNS) if name in rows.column_names]
        self.rows = without_image_decoding(rows.select_columns(columns), image_column)
        self.indices = list(range(len(rows))) if indices is None else [int(index) for index in indices]
        self.augment = augment
        self.seed = seed
        self.max_rotation_degrees = max_rotation_degrees
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> RGBDPair:
        row = self.rows[self.indices[index]]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        image, depth = load_rgbd_pair(row, self.augment, rng, self.max_rotation_degrees)
        return RGBDPair(image, depth, row.get("depth_is_metric"), row.get("source_id"))


# --------------------------------------------------------------------------------------------------------------
# A tiny estimator for tests, benchmarks and offline smoke runs
# --------------------------------------------------------------------------------------------------------------
# --------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input", required=True, help="image folder, dataset folder, parquet file(s) or hub id")
    parser.add_argument("--out", required=True, type=Path, help="output folder (rerun the same command to resume)")
    parser.add_argument("--estimator", default=DEFAULT_DEPTH_ESTIMATOR, help="DepthAnything checkpoint id or folder")
    parser.add_argument("--input-type", choices=("auto", "folder", "disk", "parquet", "hub"), default="auto")
    parser.add_argument("--split", default="train", help="split of a dataset input")
    parser.add_argument("--image-column", default=None, help="image column of a dataset input (default: detected)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=4, help="DataLoader workers decoding images")
    parser.add_argument("--shard-size", type=int, default=1000, help="input images per parquet shard")
    parser.add_argument("--max-images", type=int, default=None, help="only the first N input images (sorted)")
    parser.add_argument("--max-side", type=int, default=1024, help="images are downscaled to this longer side")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="larger input images are skipped")
    parser.add_argument("--device", default=None, help="estimator device (default: this process's accelerator)")
    parser.add_argument("--encode-threads", type=int, default=4, help="threads encoding depth PNGs")
    parser.add_argument("--license", default="other", help="license id for the dataset card")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)
    for name in ("batch_size", "shard_size", "max_side"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.num_workers < 0:
        parser.error("--num-workers must be >= 0")
    return args


def distributed_state():
    """This process's rank and world size (1 process without a launcher), from `accelerate.PartialState`."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    # PartialState forms a CPU (gloo) process group only when told to run on CPU; without this, processes launched on
    # a machine with no accelerator would each believe they are alone and all write every shard.
    use_cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.accelerator.is_available()
    return PartialState(cpu=use_cpu)


def main(argv: list[str] | None = None) -> dict:
    """Run the CLI; returns this process's counts (plus the card's totals on the main process)."""
    args = parse_args(argv)
    state = distributed_state()
    out_dir: Path = args.out
    source = open_source(args.input, args.input_type, args.split, args.image_column)
    num_items = len(source) if args.max_images is None else min(len(source), args.max_images)
    if num_items == 0:
        raise SystemExit(f"No images found in {args.input}.")
    num_shards = num_shards_for(num_items, args.shard_size)

    estimator = MonocularDepthEstimator(args.estimator, device=args.device or state.device, batch_size=args.batch_size)
    is_metric = estimator.is_metric  # loads the model now: a wrong --estimator fails before any work
    info = {
        "format_version": FORMAT_VERSION,
        "input": str(args.input),
        "input_description": source.description,
        "estimator": args.estimator,
        "depth_is_metric": is_metric,
        "depth_encoding": depth_encoding_name(is_metric),
        "shard_size": args.shard_size,
        "max_side": args.max_side,
        "max_pixels": args.max_pixels,
        "num_items": num_items,
        "num_shards": num_shards,
        # The shard slices are only stable while the sorted input list is: a changed folder must not mix in.
        "items_sha256": hashlib.sha256("\n".join(source.source_ids[:num_items]).encode()).hexdigest(),
    }

    def write_pending(pending: list[int], rank_name: str) -> dict:
        return generate_shards(
            source,
            pending,
            num_items,
            estimator,
            out_dir,
            args.shard_size,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            max_side=args.max_side,
            max_pixels=args.max_pixels,
            encode_threads=args.encode_threads,
            progress=args.progress and state.is_local_main_process,
            description=f"{rank_name}RGB-D pairs",
        )

    return run_shard_job(state, out_dir, info, write_pending, lambda: write_card(out_dir, info, args.license), "image")


def run_shard_job(state, out_dir: Path, info: dict, write_pending, write_card, unit: str) -> dict:
    """What every rank of a sharded pairs job does once its settings (`info`) are known; `make_rgbd_pairs.main` and
    `ingest_sensor.main` both run it: record/check the settings, take this rank's shards, clear what a killed run left, write the missing
    ones (`write_pending(shards, rank_name)`, returning counts), then the main process writes the card."""
    # Every rank checks (so all fail together, before any barrier); the main one records.
    check_generation_info(out_dir, info, write=state.is_main_process)
    state.wait_for_everyone()
    num_shards = info["num_shards"]
    my_shards = shards_for_rank(num_shards, state.process_index, state.num_processes)
    remove_stale_temp_files(out_dir, my_shards)
    pending = [shard for shard in my_shards if not shard_path(out_dir, shard).exists()]
    rank_name = f"rank {state.process_index}/{state.num_processes}: " if state.num_processes > 1 else ""
    print(
        f"{rank_name}{info['num_items']} {unit}s in {num_shards} shards; {len(my_shards)} mine, {len(pending)} to write",
        file=sys.stderr,
    )
    result = write_pending(pending, rank_name)
    rate = result["items"] / result["seconds"] if result["seconds"] > 0 else float("nan")
    print(
        f"{rank_name}{result['items']} {unit}s ({result['rows']} rows, {result['skipped']} skipped) in "
        f"{result['seconds']:.1f} s: {rate:.1f} {unit}s/s",
        file=sys.stderr,
    )
    state.wait_for_everyone()
    if state.is_main_process:
        totals = write_card()
        result["totals"] = totals
        print(
            f"{out_dir}: {totals['rows']} rows, {totals['skipped']} skipped {totals['skipped_by_reason']}; "
            f"{num_shards - len(totals['missing_shards'])}/{num_shards} shards",
            file=sys.stderr,
        )
    return result


if __name__ == "__main__":
    main()
