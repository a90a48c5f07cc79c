"""The pair pipeline: DataLoader workers read and decode pairs, the main process estimates the missing depth.

Workers (`DecodeAndPreprocess`) run `prepare_image` on each source item and, for measured depth, convert it to metres on
the stored image's grid (`measured.measured_depth`); for an item without depth they run the estimator's image
processor instead. The main process (`PairWriter`) buckets the images to estimate by preprocessed shape, runs the
estimator batched, encodes the depth PNGs in a thread pool and writes each shard as soon as its last item is through
(`generate_shards`). A measured source never loads an estimator.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from processing_depth import MonocularDepthEstimator
from training.depth_png import encode_depth_png
from training.make_rgbd_pairs.images import DEFAULT_MAX_PIXELS, SkippedImage, prepare_image
from training.make_rgbd_pairs.measured import SENSOR_ESTIMATOR, DepthScale, measured_depth
from training.make_rgbd_pairs.shards import shard_item_range, write_shard
from training.trl_layout import image_turn


METRIC_DEPTH_ENCODING = "uint16_png_millimetres"
RELATIVE_DEPTH_ENCODING = "uint16_png_relative_x1000"
# Both encodings store depth x 1000: millimetres for metric depth, thousandths of the image median for relative.
# Images wait in per-shape buckets until a bucket fills; past this many batches' worth the biggest bucket runs early,
# which bounds memory when a collection has many aspect ratios.
MAX_BUFFERED_BATCHES = 4


def depth_encoding_name(is_metric: bool) -> str:
    return METRIC_DEPTH_ENCODING if is_metric else RELATIVE_DEPTH_ENCODING


@dataclass(frozen=True)
class WorkItem:
    shard: int
    position: int  # index inside the shard
    index: int  # index in the input list
    source_id: str


class DecodeAndPreprocess(torch.utils.data.Dataset):
    """Worker side (CPU only): read one item, decode, convert, downscale and encode its image for storage, and either
    bring its measured depth onto the stored grid or preprocess the image for the estimator."""

    def __init__(
        self,
        source,
        items: list[WorkItem],
        estimator: MonocularDepthEstimator | None,
        max_side: int,
        max_pixels: int,
        depth_scale: DepthScale | None = None,
    ):
        self.source = source
        self.items = items
        self.estimator = estimator  # only its image processor is used here: the model stays in the main process
        self.max_side = max_side
        self.max_pixels = max_pixels
        self.depth_scale = depth_scale

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> dict:
        item = self.items[k]
        loaded = {"item": item}
        try:
            raw_image, depth = self.source.read(item.index)
            prepared = prepare_image(raw_image, self.max_side, self.max_pixels)
            loaded["image_bytes"] = prepared.data
            loaded["size_hw"] = prepared.size_hw
            if self.source.provides_depth:
                loaded["depth"] = measured_depth(raw_image, depth, prepared, self.depth_scale)
            else:
                loaded["pixel_values"] = self.estimator.preprocess([prepared.image])
        except SkippedImage as skip:
            loaded["skip"] = {"reason": skip.reason, "detail": skip.detail}
        except Exception as error:  # whatever else one odd file triggers must not stop the job
            loaded["skip"] = {"reason": "read_error", "detail": f"{type(error).__name__}: {error}"}
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
    """Main-process side: buckets loaded images by shape, runs the estimator, encodes depth, writes finished shards.

    `estimator` is `None` for a measured source: every loaded item then brings its depth.
    """

    def __init__(self, estimator, out_dir: Path, batch_size: int, encode_threads: int, progress_bar):
        self.estimator = estimator
        self.out_dir = out_dir
        self.batch_size = batch_size
        self.progress_bar = progress_bar
        self.pin_memory = estimator is not None and estimator.model.device.type == "cuda"
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
        elif "depth" in loaded:  # measured: nothing to estimate
            progress.rows[item.position] = self.encoder.submit(self._row, loaded, loaded.pop("depth"), None)
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
            self.shards[item.shard].rows[item.position] = self.encoder.submit(self._row, loaded, depth, self.estimator)
        self.progress_bar.update(len(group))

    @staticmethod
    def _row(loaded: dict, depth: np.ndarray, estimator: MonocularDepthEstimator | None) -> dict:
        """A stored pair (`training.trl_layout`): the image, and its depth in the image block of a user turn."""
        height, width = loaded["size_hw"]
        is_metric = estimator is None or estimator.is_metric  # measured depth is metric
        return {
            "images": [{"bytes": loaded["image_bytes"], "path": None}],
            "messages": [image_turn(encode_depth_png(depth))],
            "depth_is_metric": is_metric,
            "depth_encoding": depth_encoding_name(is_metric),
            "estimator": SENSOR_ESTIMATOR if estimator is None else estimator.model_name_or_path,
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


def shard_work_items(source_ids: list[str], shards: list[int], shard_size: int, num_items: int) -> list[WorkItem]:
    """Every input item of `shards`, in shard order: the fixed slice of the sorted input list each shard holds."""
    return [
        WorkItem(shard, position, index, source_ids[index])
        for shard in shards
        for position, index in enumerate(shard_item_range(shard, shard_size, num_items))
    ]


def generate_shards(
    source,
    shards: list[int],
    num_items: int,
    estimator: MonocularDepthEstimator | None,
    out_dir: Path,
    shard_size: int,
    batch_size: int = 32,
    num_workers: int = 4,
    max_side: int = 1024,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    encode_threads: int = 4,
    progress: bool = True,
    description: str = "RGB-D pairs",
    depth_scale: DepthScale | None = None,
) -> dict:
    """Write `shards` (all of them this process's and missing); returns counts and timing. `estimator`: `None` for a
    measured source (whose stored units `depth_scale` converts)."""
    items = shard_work_items(source.source_ids, shards, shard_size, num_items)
    worker_estimator = None
    if estimator is not None:
        # A second estimator object for the workers, whose model is never loaded: a worker gets the image processor
        # only (loaded here, so that forked workers inherit it and spawned ones unpickle a few kilobytes).
        worker_estimator = MonocularDepthEstimator(estimator.model_name_or_path)
        worker_estimator.image_processor  # noqa: B018
    loader = torch.utils.data.DataLoader(
        DecodeAndPreprocess(source, items, worker_estimator, max_side, max_pixels, depth_scale),
        batch_size=batch_size,
        shuffle=False,  # shards complete in order, so each is written as soon as its last image is through
        num_workers=num_workers,
        collate_fn=_keep_as_list,
        worker_init_fn=_init_worker if num_workers > 0 else None,
        prefetch_factor=4 if num_workers > 0 else None,
    )
    bar = tqdm(total=len(items), unit="pair", disable=not progress, desc=description, dynamic_ncols=True)
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
