"""The dataset card (`README.md`) and `skipped.jsonl` of an output folder, built from its shard logs: one card for
estimated and measured depth alike, which says which of the two its depth maps are."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from training.dataset_files import card_front_matter, columns_table, skipped_section, write_atomically
from training.make_rgbd_pairs.images import JPEG_QUALITY
from training.make_rgbd_pairs.measured import SENSOR_ESTIMATOR
from training.make_rgbd_pairs.reader import DEFAULT_MAX_ROTATION_DEGREES
from training.make_rgbd_pairs.shards import dataset_features, read_shard_logs, shard_path


def _depth_text(info: dict) -> dict[str, str]:
    """What the card says about the depth maps: measured by a sensor, or predicted by `info["estimator"]`."""
    estimator = info["estimator"]
    if estimator == SENSOR_ESTIMATOR:
        return {
            "title": "Sensor RGB-D pairs",
            "summary": f"Every usable RGB-D pair of {info['input_description']} with its **measured** depth. Source "
            f"depth units: {info.get('depth_scale')}. Pixels with no measurement (0, NaN, inf in the source) and "
            "depths beyond 65.535 m are 0. Depth was resized to the stored image by nearest neighbour only, so every "
            "stored value is a measurement (to the millimetre).",
            "unit": "millimetres (value / 1000 = metres), 0 = no measurement",
            "metric": "`true`: measured metric depth",
            "estimator": f"`{SENSOR_ESTIMATOR}`: measured by a depth sensor, not predicted by a model",
            "license": "images and depth keep the license and terms of their source (NYU Depth v2, SUN RGB-D, "
            "ScanNet, ARKitScenes and TUM each have their own terms of use)",
            "tag": "sensor",
        }
    is_hub_id = not Path(estimator).exists() and estimator.count("/") == 1
    link = f"[`{estimator}`](https://huggingface.co/{estimator})" if is_hub_id else f"`{estimator}`"
    metric = info["depth_is_metric"]
    return {
        "title": "RGB-D pairs",
        "summary": f"Every usable image of {info['input_description']} with a depth map predicted by {link} "
        f"({'metric' if metric else 'relative'} depth). The depth maps are **model predictions**, not measurements: "
        "each is predicted for its image alone, at the estimator's own preprocessing (aspect ratio kept), and resized "
        "back to the image bilinearly. Relative checkpoints give affine-invariant disparity; it is stored as "
        "`median(disparity) / disparity`, so 1000 is the image's median depth, and must not be read as metres.",
        "unit": (
            "millimetres (value / 1000 = metres)" if metric else "depth / image median x 1000 (1000 = the median)"
        )
        + ", 0 = invalid, clipped at 65535",
        "metric": f"`{str(metric).lower()}`: "
        + ("depth in metres" if metric else "relative depth: no scale, only ratios within an image"),
        "estimator": f"`{estimator}`",
        "license": f"images keep the license and terms of their source; depth maps are outputs of `{estimator}`, "
        "under that model's license (Depth-Anything-V2-Small: Apache-2.0; the Base, Large and Giant checkpoints: "
        "CC-BY-NC-4.0)",
        "tag": "monocular-depth",
    }


def write_card(out_dir: Path, info: dict, license_id: str) -> dict:
    """`README.md` (dataset card) and `skipped.jsonl` from the shard logs; returns the totals."""
    logs, missing = read_shard_logs(out_dir, info["num_shards"])
    skipped = [{**record, "shard": log["shard"]} for log in logs for record in log["skipped"]]
    rows = sum(log["rows"] for log in logs)
    write_atomically(out_dir / "skipped.jsonl", "".join(json.dumps(record) + "\n" for record in skipped))
    text = _depth_text(info)
    features = dataset_features()
    front_matter = card_front_matter(
        features,
        split_files={"train": [shard_path(out_dir, log["shard"]) for log in logs]},
        data_files={"train": "data/shard-*.parquet"},
        license_id=license_id,
        pretty_name=f"{text['title']}: {info['input_description']}",
        task_categories=["depth-estimation"],
        tags=["rgb-d", "depth", "metric-depth" if info["depth_is_metric"] else "relative-depth", text["tag"]],
    )
    descriptions = {
        "images": f"the RGB image: EXIF rotation applied, longer side <= {info['max_side']} px; the source JPEG bytes "
        f"when unchanged, else JPEG (q{JPEG_QUALITY}) for JPEG sources and PNG otherwise",
        "messages": "one user turn whose image block holds `depth`: a 16-bit PNG at the image's height and width, "
        f"{text['unit']} (`training.trl_layout`)",
        "depth_is_metric": text["metric"],
        "depth_encoding": f"`{info['depth_encoding']}`",
        "estimator": text["estimator"],
        "source_id": "the input's path relative to the input folder, or its row index in the input",
        "width": "image width in pixels",
        "height": "image height in pixels",
    }
    status = "complete" if not missing else f"**incomplete: {len(missing)} shards missing** (rerun the command)"
    body = f"""
# {text["title"]}: {info["input_description"]}

{text["summary"]} Made with `python -m training.make_rgbd_pairs` (Qwen2.5-VL-Depth).

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
depth = decode_depth_png(pairs[0]["messages"][0]["content"][0]["depth"])  # float32 (H, W), 0 = invalid
```

`training.make_rgbd_pairs.RGBDPairs(<folder>, augment=True)` yields `RGBDPair`s (`image`, `depth`,
`depth_is_metric`, `source_id`) with the same random horizontal flip and rotation (up to
{DEFAULT_MAX_ROTATION_DEGREES:g} degrees; depth resampled nearest, 0 outside) applied to both; `training.align --data
<folder>` reads it as is.

## Skipped inputs

{skipped_section(skipped)}

The full list is in `skipped.jsonl`.

## License

`license: {license_id}`: {text["license"]}. Set `license` to what applies before publishing.

## Settings

```json
{json.dumps(info, indent=2, sort_keys=True)}
```
"""
    write_atomically(out_dir / "README.md", front_matter + body)
    reasons = Counter(record["reason"] for record in skipped)
    return {"rows": rows, "skipped": len(skipped), "skipped_by_reason": dict(reasons), "missing_shards": missing}
