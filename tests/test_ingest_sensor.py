"""ingest_sensor: real RGB-D data in every input format, read back exactly through the readers training uses.

Every test builds tiny inputs in the real layouts (rgb/ + depth/ 16-bit PNG folders, a MATLAB v7.3 HDF5 `.mat` laid
out as NYU Depth v2's, parquet and `save_to_disk` tables) and compares the stored depth, in metres, with the source
measurement rounded to the millimetre: depth values are chosen on whole millimetres (plus sub-half-millimetre noise
for float inputs), so the expected values do not depend on the encoder's rounding.
"""

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from training import ingest_sensor, make_rgbd_pairs
from training.depth_png import decode_depth_cell
from training.make_rgbd_pairs import METRIC_DEPTH_ENCODING, shard_path
from training.trl_layout import first_depth


REPO_ROOT = Path(__file__).resolve().parents[1]
HEIGHT, WIDTH = 30, 40  # not square, so a transposed layout cannot pass


def rgb_array(seed: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def millimetres(seed: int, height: int = HEIGHT, width: int = WIDTH, low: int = 400, high: int = 9000) -> np.ndarray:
    """Depth in whole millimetres with sensor holes (0) in the first row."""
    depth = np.random.default_rng(seed + 100).integers(low, high, (height, width)).astype(np.uint16)
    depth[0, : width // 2] = 0
    return depth


def metres_of(millimetre_values: np.ndarray) -> np.ndarray:
    """What the project's depth reader gives for a 16-bit millimetre PNG (0 stays 0)."""
    return millimetre_values.astype(np.float32) / 1000


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")  # uint16 -> a 16-bit grayscale PNG
    return buffer.getvalue()


def write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def run_cli(input_path, out_dir, *extra) -> dict:
    argv = ["--input", str(input_path), "--out", str(out_dir), "--num-workers", "0", "--no-progress", *extra]
    return ingest_sensor.main(argv)


def read_rows(out_dir: Path) -> list[dict]:
    files = sorted((out_dir / "data").glob("shard-*.parquet"))
    return [row for file in files for row in pq.read_table(file).to_pylist()]


def skipped_reasons(out_dir: Path) -> dict[str, str]:
    records = [json.loads(line) for line in (out_dir / "skipped.jsonl").read_text().splitlines()]
    return {record["source_id"]: record["reason"] for record in records}


def stored_image(row: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(row["images"][0]["bytes"])).convert("RGB"))


def card_yaml(out_dir: Path) -> dict:
    text = (out_dir / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


# --------------------------------------------------------------------------------------------------------------
# rgb/ + depth/ folders of 16-bit PNGs
# --------------------------------------------------------------------------------------------------------------
FOLDER_ROWS = ["scene_a/rgb/0001.png", "scene_a/rgb/0002.png", "scene_b/color/0001.png"]
FOLDER_SKIPS = {
    "scene_a/rgb/0003.png": "size_mismatch",
    "scene_a/rgb/0004.png": "missing_depth",
    "scene_a/depth/0005.png": "missing_rgb",
    "scene_a/rgb/0006.png": "depth_not_16bit",
    "scene_a/rgb/0007.png": "unreadable",
}
FOLDER_SHARD_SIZE = 3  # 8 pairs: shards of 3, 3 and 2


@pytest.fixture(scope="module")
def pair_folder(tmp_path_factory) -> tuple[Path, dict]:
    """Two scenes (rgb/ and color/ naming) with good pairs and every kind of bad one; returns (root, source depth)."""
    root = tmp_path_factory.mktemp("sensor_folder")
    sources = {}
    for name, seed in (("0001", 1), ("0002", 2)):
        sources[f"scene_a/rgb/{name}.png"] = (rgb_array(seed), millimetres(seed))
    for source_id, (rgb, depth) in sources.items():
        write_file(root / source_id, png_bytes(rgb))
        write_file(root / source_id.replace("/rgb/", "/depth/"), png_bytes(depth))
    # Depth registered at half the resolution (same aspect ratio): upsampled by nearest neighbour.
    half = millimetres(3, HEIGHT // 2, WIDTH // 2)
    write_file(root / "scene_b/color/0001.png", png_bytes(rgb_array(3)))
    write_file(root / "scene_b/depth/0001.png", png_bytes(half))
    sources["scene_b/color/0001.png"] = (rgb_array(3), np.repeat(np.repeat(half, 2, axis=0), 2, axis=1))
    write_file(root / "scene_b/depth/notes.txt", b"not a depth file")
    # Another aspect ratio: not registered to the image.
    write_file(root / "scene_a/rgb/0003.png", png_bytes(rgb_array(4)))
    write_file(root / "scene_a/depth/0003.png", png_bytes(millimetres(4, HEIGHT, WIDTH - 8)))
    write_file(root / "scene_a/rgb/0004.png", png_bytes(rgb_array(5)))  # no depth
    write_file(root / "scene_a/depth/0005.png", png_bytes(millimetres(6)))  # no rgb
    write_file(root / "scene_a/rgb/0006.png", png_bytes(rgb_array(7)))
    write_file(root / "scene_a/depth/0006.png", png_bytes((millimetres(7) // 40).astype(np.uint8)))  # 8-bit picture
    write_file(root / "scene_a/rgb/0007.png", b"\x89PNG not really")
    write_file(root / "scene_a/depth/0007.png", png_bytes(millimetres(8)))
    return root, sources


@pytest.fixture(scope="module")
def folder_pairs(pair_folder, tmp_path_factory) -> Path:
    out_dir = tmp_path_factory.mktemp("folder_pairs") / "out"
    run_cli(pair_folder[0], out_dir, "--depth-scale", "1000", "--shard-size", str(FOLDER_SHARD_SIZE))
    return out_dir


def test_folder_pairs_read_back_through_the_alignment_reader(pair_folder, folder_pairs):
    from training.align import select_pair_rows
    from training.data_files import load_rows

    _, sources = pair_folder
    rows = read_rows(folder_pairs)
    assert [row["source_id"] for row in rows] == FOLDER_ROWS
    # As `training.align` reads `--data`: every row is a metric pair.
    table = load_rows(folder_pairs)
    pairs = make_rgbd_pairs.RGBDPairs(table, select_pair_rows(table, metric_depth_only=True))
    assert len(pairs) == len(FOLDER_ROWS)
    for index, source_id in enumerate(FOLDER_ROWS):
        rgb, depth = sources[source_id]
        pair = pairs[index]
        np.testing.assert_array_equal(pair.depth, metres_of(depth), err_msg=source_id)  # exact, holes still 0
        assert (pair.depth[0, : WIDTH // 2] == 0).all()
        np.testing.assert_array_equal(np.asarray(pair.image), rgb)
        assert pair.depth_is_metric is True and pair.source_id == source_id
    for row in rows:
        assert row["depth_is_metric"] is True
        assert row["depth_encoding"] == METRIC_DEPTH_ENCODING
        assert row["estimator"] == make_rgbd_pairs.SENSOR_ESTIMATOR
        assert (row["width"], row["height"]) == (WIDTH, HEIGHT)


def test_folder_skips_bad_pairs_with_reasons(folder_pairs):
    assert skipped_reasons(folder_pairs) == FOLDER_SKIPS
    records = [json.loads(line) for line in (folder_pairs / "skipped.jsonl").read_text().splitlines()]
    mismatch = next(record for record in records if record["reason"] == "size_mismatch")
    assert "depth 32x30 vs image 40x30" in mismatch["detail"]


def test_output_has_the_rgbd_pairs_layout_and_a_card(folder_pairs):
    from datasets import Dataset, Features, load_dataset

    files = sorted((folder_pairs / "data").glob("shard-*.parquet"))
    assert [file.name for file in files] == ["shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet"]
    written = Dataset.from_parquet([str(file) for file in files])
    assert written.features == make_rgbd_pairs.dataset_features()

    card = card_yaml(folder_pairs)
    assert Features._from_yaml_list(card["dataset_info"]["features"]) == make_rgbd_pairs.dataset_features()
    assert card["dataset_info"]["splits"][0]["num_examples"] == len(FOLDER_ROWS)
    assert card["configs"] == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "data/shard-*.parquet"}]}
    ]
    assert card["task_categories"] == ["depth-estimation"] and card["size_categories"] == ["n<1K"]
    text = (folder_pairs / "README.md").read_text()
    assert "1000 units per metre" in text and "RGB-D folder" in text
    assert "| 8 | 3 | 5 | 3 / 3 | complete |" in text
    for source_id, reason in FOLDER_SKIPS.items():
        assert f"| `{source_id}` | `{reason}` |" in text
    assert len(load_dataset(str(folder_pairs), split="train")) == len(FOLDER_ROWS)  # the card's configs load it


def test_integer_depth_needs_a_scale_and_a_wrong_scale_stops_the_job(pair_folder, tmp_path):
    root, _ = pair_folder
    with pytest.raises(SystemExit, match="--depth-scale"):
        run_cli(root, tmp_path / "no_scale")
    # Millimetres read as metres: median depths of kilometres. Nothing is written.
    with pytest.raises(SystemExit, match=r"implausible_depth: median valid depth \d{4} m"):
        run_cli(root, tmp_path / "scale_1", "--depth-scale", "1")
    with pytest.raises(SystemExit, match="implausible_depth"):
        run_cli(root, tmp_path / "scale_1e6", "--depth-scale", "1000000")
    assert not (tmp_path / "scale_1" / "data").exists() and not (tmp_path / "scale_1e6" / "data").exists()


def test_resume_rewrites_only_the_missing_shard(pair_folder, folder_pairs, tmp_path):
    out_dir = tmp_path / "pairs"
    shutil.copytree(folder_pairs, out_dir)
    before = read_rows(out_dir)
    mtimes = {shard: os.stat(shard_path(out_dir, shard)).st_mtime_ns for shard in range(3)}
    shard_path(out_dir, 1).unlink()
    leftover = shard_path(out_dir, 1).with_name(".shard-00001.parquet.tmp-12345")  # a killed run's
    leftover.write_bytes(b"half a parquet file")
    time.sleep(0.01)  # a rewritten shard would get a visibly newer mtime

    result = run_cli(pair_folder[0], out_dir, "--depth-scale", "1000", "--shard-size", str(FOLDER_SHARD_SIZE))

    assert result["shards_written"] == [1]
    assert not leftover.exists()
    assert all(os.stat(shard_path(out_dir, shard)).st_mtime_ns == mtimes[shard] for shard in (0, 2))
    assert read_rows(out_dir) == before
    assert skipped_reasons(out_dir) == FOLDER_SKIPS
    assert run_cli(pair_folder[0], out_dir, "--depth-scale", "1000", "--shard-size", "3")["shards_written"] == []
    with pytest.raises(SystemExit, match="depth_scale"):  # another scale would mix two units in one dataset
        run_cli(pair_folder[0], out_dir, "--depth-scale", "tum", "--shard-size", str(FOLDER_SHARD_SIZE))


KILL_SCRIPT = """
import os, signal, sys
import datasets
from training import ingest_sensor

write_parquet = datasets.Dataset.to_parquet
calls = []

def die_while_writing_the_second_shard(self, path, *args, **kwargs):
    calls.append(path)
    if len(calls) == 2:
        with open(path, "wb") as partial:
            partial.write(b"PAR1 half a shard")
        os.kill(os.getpid(), signal.SIGKILL)
    return write_parquet(self, path, *args, **kwargs)

datasets.Dataset.to_parquet = die_while_writing_the_second_shard
ingest_sensor.main(sys.argv[1:])
"""


def test_a_kill_mid_write_leaves_no_partial_shard(pair_folder, folder_pairs, tmp_path):
    from training.data_files import find_data_files

    out_dir = tmp_path / "pairs"
    argv = ["--input", str(pair_folder[0]), "--out", str(out_dir), "--depth-scale", "1000"]
    argv += ["--shard-size", str(FOLDER_SHARD_SIZE), "--num-workers", "0", "--no-progress"]
    killed = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, *argv], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert shard_path(out_dir, 0).exists()
    assert not shard_path(out_dir, 1).exists() and not shard_path(out_dir, 2).exists()
    partial = list((out_dir / "data").glob(".shard-00001.parquet.tmp-*"))
    assert len(partial) == 1 and partial[0].read_bytes() == b"PAR1 half a shard"
    assert find_data_files(out_dir) == [shard_path(out_dir, 0)]  # readers never see the partial file

    result = run_cli(pair_folder[0], out_dir, "--depth-scale", "1000", "--shard-size", str(FOLDER_SHARD_SIZE))
    assert result["shards_written"] == [1, 2]
    assert not partial[0].exists()
    assert read_rows(out_dir) == read_rows(folder_pairs)


def test_preset_scales_tum_and_sunrgbd_are_exact(tmp_path):
    # TUM: 5000 units per metre, so 0.2 mm steps; the stored millimetres are the rounded values.
    tum_raw = millimetres(11, low=2000, high=60000)
    write_file(tmp_path / "tum/rgb/1.png", png_bytes(rgb_array(11)))
    write_file(tmp_path / "tum/depth/1.png", png_bytes(tum_raw))
    run_cli(tmp_path / "tum", tmp_path / "tum_out", "--depth-scale", "tum")
    tum_depth = decode_depth_cell(first_depth(read_rows(tmp_path / "tum_out")[0]))
    np.testing.assert_array_equal(tum_depth, metres_of(np.rint(tum_raw / 5.0).astype(np.uint16)))

    # SUN RGB-D: millimetres rotated left by 3 bits; depths over 8.191 m wrap their top bits around.
    sun_mm = millimetres(12, low=500, high=12000)
    assert (sun_mm > 8191).any()
    stored = (sun_mm << 3) | (sun_mm >> 13)
    write_file(tmp_path / "sun/image/1.jpg", png_bytes(rgb_array(12)))  # a PNG named .jpg: read by content
    write_file(tmp_path / "sun/depth/1.png", png_bytes(stored.astype(np.uint16)))
    run_cli(tmp_path / "sun", tmp_path / "sun_out", "--depth-scale", "sunrgbd")
    np.testing.assert_array_equal(
        decode_depth_cell(first_depth(read_rows(tmp_path / "sun_out")[0])), metres_of(sun_mm)
    )


def test_downscaled_image_keeps_measured_depths(tmp_path):
    rgb, depth = rgb_array(21, 48, 64), millimetres(21, 48, 64)
    write_file(tmp_path / "in/rgb/a.png", png_bytes(rgb))
    write_file(tmp_path / "in/depth/a.png", png_bytes(depth))
    run_cli(tmp_path / "in", tmp_path / "out", "--depth-scale", "1000", "--max-side", "32")
    row = read_rows(tmp_path / "out")[0]
    assert (row["width"], row["height"]) == (32, 24) and stored_image(row).shape == (24, 32, 3)
    # Nearest neighbour at half size takes every second sample (the one nearest each output pixel's centre).
    np.testing.assert_array_equal(decode_depth_cell(first_depth(row)), metres_of(depth[1::2, 1::2]))


def test_exif_rotation_turns_image_and_depth_together(tmp_path):
    rgb, depth = rgb_array(31), millimetres(31)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", exif=exif)
    write_file(tmp_path / "in/rgb/a.png", buffer.getvalue())
    write_file(tmp_path / "in/depth/a.png", png_bytes(depth))  # registered to the sensor's (unrotated) pixels
    run_cli(tmp_path / "in", tmp_path / "out", "--depth-scale", "1000")
    row = read_rows(tmp_path / "out")[0]
    assert (row["width"], row["height"]) == (HEIGHT, WIDTH)
    np.testing.assert_array_equal(stored_image(row), np.rot90(rgb, k=-1))
    np.testing.assert_array_equal(decode_depth_cell(first_depth(row)), metres_of(np.rot90(depth, k=-1)))


# --------------------------------------------------------------------------------------------------------------
# The NYU Depth v2 labelled .mat (MATLAB v7.3 = HDF5)
# --------------------------------------------------------------------------------------------------------------
def metres_with_noise(mm: np.ndarray, seed: int) -> np.ndarray:
    """Float metres that round to `mm` millimetres: noise under half a millimetre."""
    noise = np.random.default_rng(seed).uniform(-0.0004, 0.0004, mm.shape)
    return np.where(mm > 0, mm / 1000 + noise, 0).astype(np.float32)


def write_nyu_mat(path: Path, images: np.ndarray, datasets: dict[str, np.ndarray]) -> None:
    """A MATLAB v7.3 file as NYU ships it: HDF5 after a 512-byte MATLAB header, arrays stored column-major."""
    import h5py

    with h5py.File(path, "w", userblock_size=512) as handle:
        handle["images"] = images.transpose(0, 3, 2, 1)  # (N, H, W, 3) -> MATLAB's (N, 3, W, H)
        for name, depth in datasets.items():
            handle[name] = depth.transpose(0, 2, 1)  # (N, H, W) -> (N, W, H)
    with open(path, "r+b") as handle:
        handle.write(
            b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
        )


@pytest.fixture(scope="module")
def nyu_mat(tmp_path_factory) -> tuple[Path, np.ndarray, dict]:
    path = tmp_path_factory.mktemp("nyu") / "nyu_depth_v2_labeled.mat"
    images = np.stack([rgb_array(40 + i) for i in range(4)])
    filled_mm = np.stack([millimetres(40 + i) for i in range(4)])
    filled_mm[:, 0, :] = 700  # the inpainted maps have no holes
    raw_mm = filled_mm.copy()
    raw_mm[:, :3, :] = 0  # the raw maps do
    depths, raw_depths = metres_with_noise(filled_mm, 1), metres_with_noise(raw_mm, 2)
    raw_depths[1, 5, 5], raw_depths[1, 6, 6] = np.nan, np.inf  # also "no measurement"
    raw_mm[1, 5, 5] = raw_mm[1, 6, 6] = 0
    depths[3, 10, 10] = raw_depths[3, 10, 10] = -1.0  # a negative depth: the row is skipped
    write_nyu_mat(path, images, {"depths": depths, "rawDepths": raw_depths})
    return path, images, {"depths": filled_mm, "rawDepths": raw_mm}


@pytest.mark.parametrize("depth_key", ["depths", "rawDepths"])
def test_nyu_mat_reads_back_exactly(nyu_mat, depth_key, tmp_path):
    path, images, expected_mm = nyu_mat
    extra = [] if depth_key == "depths" else ["--depth-column", depth_key]
    result = run_cli(path, tmp_path / "out", "--shard-size", "2", *extra)  # float metres: no scale needed
    rows = read_rows(tmp_path / "out")
    assert [row["source_id"] for row in rows] == ["0", "1", "2"]
    for row in rows:
        index = int(row["source_id"])
        np.testing.assert_array_equal(stored_image(row), images[index])
        np.testing.assert_array_equal(decode_depth_cell(first_depth(row)), metres_of(expected_mm[depth_key][index]))
        assert row["depth_is_metric"] and (row["width"], row["height"]) == (WIDTH, HEIGHT)
    assert result["totals"]["skipped_by_reason"] == {"negative_depth": 1}
    assert "NYU Depth v2 `nyu_depth_v2_labeled.mat`" in (tmp_path / "out" / "README.md").read_text()


def test_nyu_mat_in_worker_processes_gives_the_same_rows(nyu_mat, tmp_path):
    run_cli(nyu_mat[0], tmp_path / "serial")
    run_cli(nyu_mat[0], tmp_path / "workers", "--num-workers", "2")
    assert read_rows(tmp_path / "workers") == read_rows(tmp_path / "serial")


def test_non_hdf5_mat_and_missing_keys_are_named(nyu_mat, tmp_path):
    old_mat = tmp_path / "v5.mat"
    old_mat.write_bytes(b"MATLAB 5.0 MAT-file" + bytes(200))
    with pytest.raises(SystemExit, match="not a MATLAB v7.3"):
        run_cli(old_mat, tmp_path / "out")
    with pytest.raises(SystemExit, match=r"has no \['depth_maps'\]"):
        run_cli(nyu_mat[0], tmp_path / "out", "--depth-column", "depth_maps")


# --------------------------------------------------------------------------------------------------------------
# datasets tables: parquet with float metres, save_to_disk with 16-bit PNG bytes
# --------------------------------------------------------------------------------------------------------------
def test_parquet_float_depth_reads_back_exactly(tmp_path):
    from datasets import Dataset, Features, List, Value
    from datasets import Image as ImageFeature

    mm = [millimetres(50 + i) for i in range(3)]
    depths = [metres_with_noise(value, 50 + i) for i, value in enumerate(mm)]
    depths[0][2, 2] = np.nan  # no measurement
    mm[0][2, 2] = 0
    depths[2] = np.full((HEIGHT, WIDTH), 0.001, dtype=np.float32)  # 1 mm everywhere: no sensor sees that
    features = Features({"image": ImageFeature(), "depth": List(List(Value("float32")))})
    table = Dataset.from_dict(
        {"image": [{"bytes": png_bytes(rgb_array(50 + i)), "path": None} for i in range(3)], "depth": depths},
        features=features,
    )
    table.to_parquet(str(tmp_path / "table.parquet"))

    result = run_cli(tmp_path / "table.parquet", tmp_path / "out")
    rows = read_rows(tmp_path / "out")
    assert [row["source_id"] for row in rows] == ["0", "1"]
    for row in rows:
        index = int(row["source_id"])
        np.testing.assert_array_equal(decode_depth_cell(first_depth(row)), metres_of(mm[index]))
        np.testing.assert_array_equal(stored_image(row), rgb_array(50 + index))
    assert result["totals"]["skipped_by_reason"] == {"implausible_depth": 1}

    # The same depths in millimetres, as floats, are read as metres by default: caught before anything is written.
    in_millimetres = table.map(lambda row: {"depth": (np.asarray(row["depth"]) * 1000).tolist()}, features=features)
    in_millimetres.to_parquet(str(tmp_path / "millimetres.parquet"))
    with pytest.raises(SystemExit, match="2 of the first 3 pairs have unusable depth"):
        run_cli(tmp_path / "millimetres.parquet", tmp_path / "wrong")
    run_cli(tmp_path / "millimetres.parquet", tmp_path / "right", "--depth-scale", "1000")
    assert [row["source_id"] for row in read_rows(tmp_path / "right")] == ["0", "1"]


def test_saved_dataset_with_png_depth_reads_back_exactly(tmp_path):
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    mm = [millimetres(60 + i) for i in range(2)]
    features = Features({"rgb": ImageFeature(), "depth_png": Value("binary"), "caption": Value("string")})
    Dataset.from_dict(
        {
            "rgb": [{"bytes": png_bytes(rgb_array(60 + i)), "path": None} for i in range(2)],
            "depth_png": [png_bytes(value) for value in mm],
            "caption": ["a", "b"],
        },
        features=features,
    ).save_to_disk(str(tmp_path / "saved"))

    with pytest.raises(SystemExit, match="--depth-scale"):
        run_cli(tmp_path / "saved", tmp_path / "no_scale", "--depth-column", "depth_png")
    run_cli(tmp_path / "saved", tmp_path / "out", "--depth-column", "depth_png", "--depth-scale", "1000")
    rows = read_rows(tmp_path / "out")
    assert [row["source_id"] for row in rows] == ["0", "1"]
    for row, expected in zip(rows, mm):
        np.testing.assert_array_equal(decode_depth_cell(first_depth(row)), metres_of(expected))
    with pytest.raises(SystemExit, match="'depth' is not a column"):
        run_cli(tmp_path / "saved", tmp_path / "default_column", "--depth-scale", "1000")


# --------------------------------------------------------------------------------------------------------------
# Depth units and values
# --------------------------------------------------------------------------------------------------------------
def test_depth_scale_presets_and_numbers():
    assert make_rgbd_pairs.parse_depth_scale("TUM").units_per_metre == 5000
    assert make_rgbd_pairs.parse_depth_scale("scannet").units_per_metre == 1000
    assert make_rgbd_pairs.parse_depth_scale("kitti").units_per_metre == 256
    assert make_rgbd_pairs.parse_depth_scale("4000").units_per_metre == 4000
    for bad in ("-5", "0", "nan", "millimetres"):
        with pytest.raises(argparse.ArgumentTypeError):
            make_rgbd_pairs.parse_depth_scale(bad)


def test_invalid_values_become_zero_and_unstorable_depths_are_not_clipped():
    scale = make_rgbd_pairs.parse_depth_scale("1")
    values = np.array([[2.0, 0.0, np.nan], [np.inf, -np.inf, 70.0], [1.5, 3.25, 80.0]])
    metres = make_rgbd_pairs.depth_in_metres(values, scale)
    np.testing.assert_array_equal(metres, np.array([[2.0, 0, 0], [0, 0, 0], [1.5, 3.25, 0]], dtype=np.float32))
    with pytest.raises(make_rgbd_pairs.SkippedImage, match="negative_depth"):
        make_rgbd_pairs.depth_in_metres(np.array([[1.0, -0.5]]), scale)
    with pytest.raises(make_rgbd_pairs.SkippedImage, match="no_valid_depth"):
        make_rgbd_pairs.depth_in_metres(np.array([[0.0, np.nan]]), scale)


@pytest.mark.slow
def test_accelerate_launch_two_processes(pair_folder, folder_pairs, tmp_path):
    out_dir = tmp_path / "pairs"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "training.ingest_sensor",
        "--input", str(pair_folder[0]), "--out", str(out_dir), "--depth-scale", "1000",
        "--shard-size", str(FOLDER_SHARD_SIZE), "--num-workers", "0", "--no-progress",
    ]  # fmt: skip
    environment = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    completed = subprocess.run(command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "rank 0/2" in completed.stderr and "rank 1/2" in completed.stderr
    assert read_rows(out_dir) == read_rows(folder_pairs)
    assert skipped_reasons(out_dir) == FOLDER_SKIPS


# --------------------------------------------------------------------------------------------------------------
# One builder: the sensor sources are make_rgbd_pairs' sources; jobs that would write nothing stop with the reason
# --------------------------------------------------------------------------------------------------------------
def test_make_rgbd_pairs_reads_sensor_inputs_without_an_estimator(pair_folder, folder_pairs, tmp_path):
    """The same folder through the one CLI: measured depth, the same rows, and no estimator is ever loaded (the id
    below does not exist)."""
    argv = ["--input", str(pair_folder[0]), "--out", str(tmp_path / "out"), "--depth-scale", "1000"]
    argv += ["--shard-size", str(FOLDER_SHARD_SIZE), "--num-workers", "0", "--no-progress"]
    make_rgbd_pairs.main([*argv, "--estimator", str(tmp_path / "no_such_estimator")])
    assert read_rows(tmp_path / "out") == read_rows(folder_pairs)
    assert make_rgbd_pairs.detect_input_type(str(pair_folder[0])) == "pairs"
    # Depth in the image block of the pair's one user turn, where the processor and TRL's collator read it.
    row = read_rows(folder_pairs)[0]
    assert [message["role"] for message in row["messages"]] == ["user"]
    assert [block["type"] for block in row["messages"][0]["content"]] == ["image"] and len(row["images"]) == 1


def test_a_folder_where_no_rgb_file_has_its_depth_partner_stops_with_the_reason(tmp_path):
    write_file(tmp_path / "in/rgb/0001.png", png_bytes(rgb_array(1)))
    write_file(tmp_path / "in/rgb/0002.png", png_bytes(rgb_array(2)))
    write_file(tmp_path / "in/depth/frame_0001.png", png_bytes(millimetres(1)))  # another naming scheme
    with pytest.raises(SystemExit, match=r"No RGB image under .* has a depth file of the same name \(2 rgb, 1 depth"):
        run_cli(tmp_path / "in", tmp_path / "out", "--depth-scale", "1000")
    assert not (tmp_path / "out" / "data").exists()


def test_a_depth_column_with_every_cell_empty_stops_with_the_reason(tmp_path):
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    features = Features({"image": ImageFeature(), "depth": Value("binary")})
    images = [{"bytes": png_bytes(rgb_array(70 + i)), "path": None} for i in range(3)]
    Dataset.from_dict({"image": images, "depth": [None, b"", None]}, features=features).to_parquet(
        str(tmp_path / "empty.parquet")
    )
    with pytest.raises(SystemExit, match=r"Every cell of the depth column 'depth' .* is empty \(3 rows\)"):
        run_cli(tmp_path / "empty.parquet", tmp_path / "out", "--depth-scale", "1000")
    assert not (tmp_path / "out" / "data").exists()
    # One empty cell among good ones is that row's skip, not the job's end.
    depth = [png_bytes(millimetres(70)), None, png_bytes(millimetres(72))]
    Dataset.from_dict({"image": images, "depth": depth}, features=features).to_parquet(str(tmp_path / "some.parquet"))
    result = run_cli(tmp_path / "some.parquet", tmp_path / "some", "--depth-scale", "1000")
    assert [row["source_id"] for row in read_rows(tmp_path / "some")] == ["0", "2"]
    assert result["totals"]["skipped_by_reason"] == {"missing_depth": 1}


def test_a_job_that_skips_every_input_stops_with_the_reasons(tmp_path):
    for name in ("a", "b"):  # depth of another aspect ratio: not registered, skipped, and not a settings problem
        write_file(tmp_path / f"in/rgb/{name}.png", png_bytes(rgb_array(80)))
        write_file(tmp_path / f"in/depth/{name}.png", png_bytes(millimetres(80, HEIGHT, WIDTH - 8)))
    with pytest.raises(
        SystemExit, match=r"No usable pair among the 2 inputs: every one was skipped \(size_mismatch: 2\)"
    ):
        run_cli(tmp_path / "in", tmp_path / "out", "--depth-scale", "1000")


def test_a_folder_of_float_npy_depth_is_metres_without_a_scale(tmp_path):
    mm = [millimetres(90 + i) for i in range(2)]
    for i, value in enumerate(mm):
        write_file(tmp_path / f"in/rgb/{i}.png", png_bytes(rgb_array(90 + i)))
        (tmp_path / "in/depth").mkdir(parents=True, exist_ok=True)
        np.save(tmp_path / f"in/depth/{i}.npy", metres_with_noise(value, 90 + i))
    run_cli(tmp_path / "in", tmp_path / "out")  # float depth is metres: no --depth-scale
    rows = read_rows(tmp_path / "out")
    assert [row["source_id"] for row in rows] == ["rgb/0.png", "rgb/1.png"]
    for row, expected in zip(rows, mm):
        np.testing.assert_array_equal(decode_depth_cell(first_depth(row)), metres_of(expected))
    assert "float metres" in (tmp_path / "out" / "README.md").read_text()
    # Integer .npy depth has no unit: the scale is still asked for.
    np.save(tmp_path / "in/depth/0.npy", mm[0].astype(np.int32))
    np.save(tmp_path / "in/depth/1.npy", mm[1].astype(np.int32))
    with pytest.raises(SystemExit, match="stores integer depth"):
        run_cli(tmp_path / "in", tmp_path / "integer")
