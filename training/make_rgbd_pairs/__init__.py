"""RGB-D pairs from any image collection or RGB-D dataset, as a sharded parquet dataset: one builder for depth
predicted by a monocular estimator and depth measured by a sensor.

    python -m training.make_rgbd_pairs --input photos/ --out data/photos_rgbd
    python -m training.make_rgbd_pairs --input user/some-dataset --split train --out data/rgbd \\
        --estimator depth-anything/Depth-Anything-V2-Metric-Indoor-Small-hf
    python -m training.make_rgbd_pairs --input nyu_depth_v2_labeled.mat --out data/nyu_rgbd
    python -m training.make_rgbd_pairs --input scannet_frames/ --depth-scale scannet --out data/scannet_rgbd
    python -m training.make_rgbd_pairs --input table.parquet --depth-column depth --out data/table_rgbd
    accelerate launch --num_processes 8 -m training.make_rgbd_pairs --input photos/ --out data/photos_rgbd

Input (`--input`, kind detected or given with `--input-type`; `sources.py`). Each source returns (image, depth or
None) per item; the estimator (`--estimator`) fills the Nones, and a source with measured depth never loads it:

* an image folder (searched recursively): depth estimated;
* a folder with `rgb/` (or `color/`, `image/`; `--rgb-dir`) and `depth/` (`--depth-dir`) subfolders, files matched by
  path without extension (`rgb/0001.jpg` <-> `depth/0001.png`; every folder below `--input` with both is used, one
  per scene as ScanNet and ARKitScenes exports are laid out): measured 16-bit PNGs, float TIFFs or `.npy` arrays;
* the NYU Depth v2 labelled `.mat` (`--depth-column rawDepths` for the raw depth instead of the inpainted `depths`);
* a `datasets` dataset (`save_to_disk` folder, parquet files, a hub id), its image column detected or given with
  `--image-column`: depth estimated, or measured from `--depth-column` (float metres or 16-bit PNG bytes).

Measured depth (`measured.py`): stored value / `--depth-scale` = metres (a number or a preset: `nyu`, `scannet`,
`arkitscenes`, `tum`, `kitti`, `sunrgbd`); integer depth needs the scale, float depth is metres. 0, NaN and inf are
"no measurement"; the map gets the image's EXIF rotation and is resized to it by nearest neighbour. If most of the
first 16 pairs have unusable depth (a wrong scale or column), the job stops before writing anything; a job that
would write no pair at all (no rgb file has a depth partner, every depth cell is empty, every input skipped) stops
with the reason. `python -m training.ingest_sensor` is this command for inputs that must bring their own depth.

Output (`--out DIR`): `DIR/data/shard-00000.parquet`, ... with one row per usable pair, in the project's depth layout
(`training.trl_layout`):

* `images`: the image (`datasets.Image`): the source JPEG bytes when they need no change, else JPEG (q95) for JPEG
  sources and PNG for the rest; converted to RGB, EXIF rotation applied, downscaled to `--max-side`.
* `messages`: one user turn whose image block's `depth` is 16-bit PNG bytes of the same height and width, 0 =
  invalid. `depth_encoding` says how to read it: `uint16_png_millimetres` (measured depth and metric checkpoints:
  millimetres, so up to 65.535 m) or `uint16_png_relative_x1000` (relative checkpoints: depth / median depth of the
  image x 1000, so 1000 is the image median, clipped at 65535). `decode_depth_png` gives metres (or median-relative
  depth) as float32 for both.
* `depth_is_metric`, `depth_encoding`, `estimator` (the `--estimator` id/path, or `sensor`), `source_id` (path
  relative to the input folder, or dataset row index), `width`, `height`.

Plus `DIR/README.md` (a dataset card: columns, counts, skipped inputs, license note), `DIR/skipped.jsonl` (every
skipped input and why), `DIR/generation.json` (the settings; a rerun with other settings is refused) and
`DIR/shard_logs/` (per-shard counts and skips, from which the card is built).

Estimated depth: images are never resized to a common size: each is preprocessed like `MonocularDepthEstimator` does
for it alone (the DepthAnything processor keeps the aspect ratio), images whose preprocessed shapes match are batched
together (a bucket per shape), and each prediction is resized back to its own image. So a stored depth map is what the
estimator gives for that stored image by itself, only faster.

Throughput: reading, decoding, RGB conversion, downscaling, image encoding, measured depth's conversion and the
estimator's preprocessing run in DataLoader workers (`--num-workers`); depth PNGs are encoded in a thread pool. The
estimator runs in bf16 on CUDA, a batch (`--batch-size`) per forward. On CPU it runs one image per forward (batching
only overflows the caches there) with channels-last convolutions, in fp32 by default; `--dtype bfloat16` on a CPU with
bf16 dot products (AVX512-BF16, AMX) is about twice as fast, within about 1% per pixel of fp32 (`MonocularDepthEstimator`;
`bench/results/depth_generation_da_v2_small_cpu_64.json` has both, against a naive `pipeline("depth-estimation")`
loop). Under `accelerate launch`, shard `i` goes to rank `i % world_size`.

Resuming: shard `i` always holds the same slice of the sorted input list (`--shard-size` items), is written to a
temporary file and atomically renamed, so a rerun only produces missing shards and a killed run loses only the
shard in progress.

Bad inputs never stop the job: corrupt, truncated, too small (< 16 px side) or too large (> `--max-pixels`, default
50 MP; PIL's decompression-bomb guard is caught too) images, unpaired, unregistered or unusable depth are skipped and
listed; grayscale, CMYK, palette, RGBA (composited on white), 16-bit and float images are converted to 8-bit RGB.

For training, `RGBDPairs(DIR, augment=True)` (a torch Dataset of `RGBDPair`s; Stage 1 alignment reads its pairs with
it too) and `load_rgbd_pair(row, augment, rng)` decode rows and apply the same random horizontal flip and small
rotation (default +-10 degrees) to image and depth, at load time: the stored pairs stay unaugmented.

Layout, in pipeline order:

* `sources.py`: where the pairs come from (`open_source`: images alone, or images with measured depth).
* `images.py`: one image decoded robustly into what is stored (`prepare_image`, `SkippedImage`).
* `measured.py`: measured depth in metres on the stored image's grid (`DepthScale`, `measured_depth`).
* `estimation.py`: the pipeline, which estimates the missing depth batched (`generate_shards`).
* `shards.py`: shard slices, atomic writes, resuming, and the per-rank job (`run_shard_job`).
* `card.py`: the dataset card and the list of skipped inputs (`write_card`).
* `reader.py`: reading pairs back for training (`RGBDPairs`, `load_rgbd_pair`).
* `cli.py`: the command line (`main`).
"""

from training.make_rgbd_pairs.card import write_card
from training.make_rgbd_pairs.cli import distributed_state, main, parse_args, probe_depth_settings
from training.make_rgbd_pairs.estimation import (
    MAX_BUFFERED_BATCHES,
    METRIC_DEPTH_ENCODING,
    RELATIVE_DEPTH_ENCODING,
    DecodeAndPreprocess,
    PairWriter,
    ShardProgress,
    WorkItem,
    depth_encoding_name,
    generate_shards,
    shard_work_items,
)
from training.make_rgbd_pairs.images import (
    DEFAULT_MAX_PIXELS,
    EXIF_ORIENTATION_TAG,
    JPEG_QUALITY,
    MIN_IMAGE_SIDE,
    PreparedImage,
    SkippedImage,
    exif_orientation,
    prepare_image,
    to_rgb,
)
from training.make_rgbd_pairs.measured import (
    DEPTH_SCALE_PRESETS,
    FLOAT_METRES,
    SENSOR_ESTIMATOR,
    DepthScale,
    depth_in_metres,
    fit_depth_to_image,
    measured_depth,
    parse_depth_scale,
    read_depth_values,
)
from training.make_rgbd_pairs.reader import (
    DEFAULT_MAX_ROTATION_DEGREES,
    PAIR_COLUMNS,
    RGBDPair,
    RGBDPairs,
    augment_rgbd_pair,
    decode_first_image,
    image_column_of,
    load_rgbd_pair,
    transform_rgbd_pair,
    without_image_decoding,
)
from training.make_rgbd_pairs.shards import (
    FORMAT_VERSION,
    check_generation_info,
    dataset_features,
    num_shards_for,
    read_shard_logs,
    remove_stale_temp_files,
    run_shard_job,
    shard_item_range,
    shard_log_path,
    shard_path,
    shards_for_rank,
    write_shard,
)
from training.make_rgbd_pairs.sources import (
    DEPTH_FILE_EXTENSIONS,
    IMAGE_EXTENSIONS,
    DatasetSource,
    ImageFolderSource,
    NYUMatSource,
    PairFolderSource,
    detect_input_type,
    find_image_column,
    open_source,
)


__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEPTH_FILE_EXTENSIONS",
    "DEPTH_SCALE_PRESETS",
    "FLOAT_METRES",
    "DEFAULT_MAX_ROTATION_DEGREES",
    "EXIF_ORIENTATION_TAG",
    "FORMAT_VERSION",
    "IMAGE_EXTENSIONS",
    "JPEG_QUALITY",
    "MAX_BUFFERED_BATCHES",
    "METRIC_DEPTH_ENCODING",
    "MIN_IMAGE_SIDE",
    "PAIR_COLUMNS",
    "RELATIVE_DEPTH_ENCODING",
    "SENSOR_ESTIMATOR",
    "DatasetSource",
    "DecodeAndPreprocess",
    "DepthScale",
    "NYUMatSource",
    "PairFolderSource",
    "ImageFolderSource",
    "PairWriter",
    "PreparedImage",
    "RGBDPair",
    "RGBDPairs",
    "ShardProgress",
    "SkippedImage",
    "WorkItem",
    "augment_rgbd_pair",
    "check_generation_info",
    "dataset_features",
    "decode_first_image",
    "depth_encoding_name",
    "depth_in_metres",
    "fit_depth_to_image",
    "measured_depth",
    "parse_depth_scale",
    "probe_depth_settings",
    "read_depth_values",
    "shard_work_items",
    "detect_input_type",
    "distributed_state",
    "find_image_column",
    "generate_shards",
    "image_column_of",
    "load_rgbd_pair",
    "main",
    "num_shards_for",
    "open_source",
    "parse_args",
    "prepare_image",
    "read_shard_logs",
    "remove_stale_temp_files",
    "run_shard_job",
    "shard_item_range",
    "shard_log_path",
    "shard_path",
    "shards_for_rank",
    "to_rgb",
    "exif_orientation",
    "transform_rgbd_pair",
    "without_image_decoding",
    "write_card",
    "write_shard",
]
