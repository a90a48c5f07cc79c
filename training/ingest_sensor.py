"""Sensor RGB-D data (NYU Depth v2, SUN RGB-D, ScanNet, ARKitScenes, TUM, your own) as RGB-D pairs: measured depth.

    python -m training.ingest_sensor --input nyu_depth_v2_labeled.mat --out data/nyu_rgbd
    python -m training.ingest_sensor --input scannet_frames/ --depth-scale scannet --out data/scannet_rgbd
    python -m training.ingest_sensor --input table.parquet --depth-column depth --out data/table_rgbd

An alias of `python -m training.make_rgbd_pairs` (same flags, same output) for inputs that must bring their own depth:
a folder is read as rgb/ + depth/ pairs and a dataset's depth column defaults to `depth`, and nothing is ever
estimated. Inputs, depth units and invalid pixels: `training.make_rgbd_pairs` (`sources.py`, `measured.py`).
"""

from __future__ import annotations

from training.make_rgbd_pairs.cli import main as make_rgbd_pairs_main


def main(argv: list[str] | None = None) -> dict:
    return make_rgbd_pairs_main(argv, measured_only=True, prog="python -m training.ingest_sensor")


if __name__ == "__main__":
    main()
