"""The dataset card (`README.md`) and `skipped.jsonl` of an output folder, built from its shard logs."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from training.dataset_files import write_atomically
from training.make_rgbd_pairs.images import JPEG_QUALITY
from training.make_rgbd_pairs.reader import DEFAULT_MAX_ROTATION_DEGREES
from training.make_rgbd_pairs.shards import read_shard_logs


CARD_SKIPPED_LISTED = 200


def _yaml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid YAML scalar, whatever it contains


def write_card(out_dir: Path, info: dict, license_id: str) -> dict:
    """`README.md` (dataset card) and `skipped.jsonl` from the shard logs; returns the totals."""
    logs, missing = read_shard_logs(out_dir, info["num_shards"])
    skipped = [{**record, "shard": log["shard"]} for log in logs for record in log["skipped"]]
    rows = sum(log["rows"] for log in logs)
    reasons = Counter(record["reason"] for record in skipped)
    write_atomically(out_dir / "skipped.jsonl", "".join(json.dumps(record) + "\n" for record in skipped))

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
    write_atomically(out_dir / "README.md", card)
    return {"rows": rows, "skipped": len(skipped), "skipped_by_reason": dict(reasons), "missing_shards": missing}
