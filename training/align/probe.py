"""How much metric depth the merged tokens carry: a ridge probe, measured before and after alignment (issue 14's H5).

Contrastive alignment pulls each depth token towards its RGB token, which knows little about metric distance; it may
trade the depth encoder's metric information for agreement. The probe reads it back: a ridge regression from each
merged token to the mean log-depth of the image region it covers, fitted on half the held-out images and scored on
the other half (R², and δ₁ of the predicted depth). The RGB tower's tokens get the same probe as the reference of
what RGB alone carries.

With the pairs' camera intrinsics (rendered-world rows carry them), a second probe reads each token's mean lateral
position in metres, `X = z (u - cx) / fx` over its region (`lateral_r2`): what metric size needs and what depth alone
cannot give, since `fx` varies with the camera. A `depth_input="points"` encoder sees X; a `"depth"` one sees z and
the token's place in the image only.

A third probe reads each object's metric width and height (`object_size_probe`, `--objects`), and the three factors
of its width (pixel width, depth, focal length), from the merged token
that covers the object's centre and the mean of its 3 x 3 neighbourhood, fitted and scored per object over scenes of a
rendered world (their `scene` column names each object's size and centre pixel). Size is what intrinsics are for: the
same depth and pixel extent are up to 2x more metres under one camera than another, so a `points` encoder should
carry it where a `depth` one cannot. It bounds what a language model could read from one object's tokens.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from configuration_depth import DEFAULT_DEPTH_FUSION
from modeling_qwen2_5_vl_depth import pixel_rays
from training.align.data import RGBDPairCollator, select_pair_rows
from training.align.model import DepthAlignmentModel
from training.controls import DELTA1_THRESHOLD, delta1_maximising_constant
from training.data_files import load_rows
from training.make_rgbd_pairs import RGBDPairs
from training.model_loading import load_depth_model


# Ridge strengths tried; the one with the best R² on a held-out part of the fitting half is refitted on all of it.
RIDGE_STRENGTHS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


def region_log_depth(depth_values: torch.Tensor, merge_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per merged token: the mean log-depth (metres) of the valid pixels of its `merge_size`² patches, and whether it
    has any valid pixel. The processor lays a merge group's patches out contiguously, so they are consecutive rows."""
    per_token = depth_values.float().reshape(-1, merge_size**2 * depth_values.shape[-1])
    valid = torch.isfinite(per_token) & (per_token > 0)
    log_depth = torch.where(valid, per_token.clamp_min(1e-6).log(), torch.zeros_like(per_token))
    counts = valid.sum(-1)
    return (log_depth.sum(-1) / counts.clamp_min(1)).numpy(), (counts > 0).numpy()


def region_lateral_metres(depth_values: torch.Tensor, rays: torch.Tensor, merge_size: int) -> np.ndarray:
    """Per merged token: the mean camera-frame x (metres) of the valid pixels of its patches, `z * ray_x`, with `rays`
    as `modeling_qwen2_5_vl_depth.pixel_rays` gives them (same layout as `depth_values`)."""
    depth = depth_values.float()
    valid = torch.isfinite(depth) & (depth > 0)
    lateral = torch.where(valid, depth * rays[:, 0].float(), torch.zeros_like(depth))
    per_token = lateral.reshape(-1, merge_size**2 * depth.shape[-1]).sum(-1)
    counts = valid.reshape(-1, merge_size**2 * depth.shape[-1]).sum(-1)
    return (per_token / counts.clamp_min(1)).numpy()


def fit_ridge(features: np.ndarray, targets: np.ndarray, strength: float) -> np.ndarray:
    design = np.concatenate([features, np.ones((len(features), 1))], axis=1)
    return np.linalg.solve(design.T @ design + strength * np.eye(design.shape[1]), design.T @ targets)


def predict_ridge(weights: np.ndarray, features: np.ndarray) -> np.ndarray:
    return np.concatenate([features, np.ones((len(features), 1))], axis=1) @ weights


def r_squared(predicted: np.ndarray, targets: np.ndarray) -> float:
    """1 - residual / total sum of squares; NaN where the targets do not vary (R² is undefined there)."""
    total = ((targets - targets.mean()) ** 2).sum()
    if total == 0:
        return float("nan")
    return float(1 - ((predicted - targets) ** 2).sum() / total)


def ridge_probe(features: np.ndarray, targets: np.ndarray, image_of_token: np.ndarray) -> dict[str, float]:
    """Fit on the first half of the images (strength chosen on that half's last quarter of images), score on the
    second half: R² of log-depth and δ₁ (share of tokens whose predicted depth is within 1.25x of the truth)."""
    images = np.unique(image_of_token)
    fit_images = images[: len(images) // 2]
    inner_images = fit_images[: max(1, 3 * len(fit_images) // 4)]
    fit, test = np.isin(image_of_token, fit_images), ~np.isin(image_of_token, fit_images)
    inner, tune = fit & np.isin(image_of_token, inner_images), fit & ~np.isin(image_of_token, inner_images)
    if not tune.any() or not test.any():
        raise ValueError(f"The probe needs at least 4 images with valid depth; got {len(images)}.")
    features = features.astype(np.float64)
    # The least squared error on the tuning images: the same choice as the best R² there (the total sum of squares is
    # shared by every strength), and still defined where the tuning targets do not vary.
    strength = min(
        RIDGE_STRENGTHS,
        key=lambda s: float(
            ((predict_ridge(fit_ridge(features[inner], targets[inner], s), features[tune]) - targets[tune]) ** 2).sum()
        ),
    )
    predicted = predict_ridge(fit_ridge(features[fit], targets[fit], strength), features[test])
    ratio = np.exp(np.abs(predicted - targets[test]))
    return {
        "r2": r_squared(predicted, targets[test]),
        "delta1": float((ratio < DELTA1_THRESHOLD).mean()),
        "ridge_strength": strength,
        "tokens": int(test.sum()),
    }


@dataclass
class EncodedBatch:
    """One collated batch of pairs and both towers' merged tokens (CPU, float32), what every probe reads."""

    start: int  # index of the batch's first pair
    image_grid_thw: torch.Tensor
    depth_values: torch.Tensor
    depth_intrinsics: torch.Tensor | None
    depth: np.ndarray
    rgb: np.ndarray


@torch.no_grad()
def encode_pairs(
    model: DepthAlignmentModel, pairs: Sequence, collator: RGBDPairCollator, batch_size: int = 32
) -> list[EncodedBatch]:
    """Both towers over `pairs`, once, for every probe of them (`metric_depth_probe`, `object_features`)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    encoded = []
    for start in range(0, len(pairs), batch_size):
        batch = collator([pairs[index] for index in range(start, min(start + batch_size, len(pairs)))])
        grid = batch["image_grid_thw"].to(device)
        cameras = batch.get("depth_intrinsics")
        depth = model.depth_tokens(batch["depth_values"].to(device), grid, cameras)
        rgb = model.rgb_tokens(batch["pixel_values"].to(device), grid)
        encoded.append(
            EncodedBatch(
                start,
                batch["image_grid_thw"],
                batch["depth_values"],
                cameras,
                depth.float().cpu().numpy(),
                rgb.float().cpu().numpy(),
            )  # fmt: skip
        )
    model.train(was_training)
    return encoded


def metric_depth_probe(
    model: DepthAlignmentModel,
    pairs: Sequence,
    collator: RGBDPairCollator,
    batch_size: int = 32,
    encoded: list[EncodedBatch] | None = None,
) -> dict[str, dict[str, float]]:
    """The ridge probe of the depth encoder's and the RGB tower's merged tokens over `pairs` (held-out RGB-D pairs):
    `{"depth": {"r2", "delta1", ...}, "rgb": {...}}`. `encoded`: `encode_pairs` of them, if already run."""
    encoded = encode_pairs(model, pairs, collator, batch_size) if encoded is None else encoded
    features: dict[str, list[np.ndarray]] = {"depth": [], "rgb": []}
    targets, lateral_targets, image_of_token = [], [], []
    merge_size = model.depth_encoder.spatial_merge_size
    for batch in encoded:
        target, valid = region_log_depth(batch.depth_values, merge_size)
        tokens_per_image = model.tokens_per_image(batch.image_grid_thw)
        image_index = np.repeat(np.arange(batch.start, batch.start + len(tokens_per_image)), tokens_per_image)
        features["depth"].append(batch.depth[valid])
        features["rgb"].append(batch.rgb[valid])
        targets.append(target[valid])
        image_of_token.append(image_index[valid])
        if batch.depth_intrinsics is not None:
            vision = model.depth_model_config.vision_config
            fov = model.depth_model_config.default_horizontal_fov_degrees  # for rows without a camera, as the model
            rays = pixel_rays(batch.image_grid_thw, batch.depth_intrinsics, vision.patch_size, merge_size, fov)
            lateral_targets.append(region_lateral_metres(batch.depth_values, rays, merge_size)[valid])
    targets_, images_ = np.concatenate(targets), np.concatenate(image_of_token)
    report = {name: ridge_probe(np.concatenate(parts), targets_, images_) for name, parts in features.items()}
    if lateral_targets and len(lateral_targets) == len(targets):  # every batch had its cameras
        lateral = np.concatenate(lateral_targets)
        for name, parts in features.items():
            report[name]["lateral_r2"] = ridge_probe(np.concatenate(parts), lateral, images_)["r2"]
    return report


# What the size probe reads per object, each as a log, in the order of its report: the metric width and height, and
# the three factors of width (`width = pixel_width * centre_depth / focal_length` for an object facing the camera),
# to tell which one the tokens miss.
OBJECT_SIZE_TARGETS = ("width", "height", "pixel_width", "centre_depth", "focal_length")


# The true log pixel width joins the token features at this scale, so that the ridge's shrinkage hardly touches it.
ORACLE_COLUMN_SCALE = 10.0


def object_log_targets(obj: dict, scene: dict) -> dict[str, float]:
    """`OBJECT_SIZE_TARGETS` of one object of a rendered scene (its `size`, `center_camera` and the scene's
    `intrinsics`, in the pixels of the rendering)."""
    focal, depth = float(scene["intrinsics"]["fx"]), float(obj["center_camera"][2])
    width, height = float(obj["size"]["width"]), float(obj["size"]["height"])
    values = {
        "width": width,
        "height": height,
        "pixel_width": width * focal / depth,
        "centre_depth": depth,
        "focal_length": focal,
    }
    return {name: math.log(values[name]) for name in OBJECT_SIZE_TARGETS}


def object_token_features(tokens: np.ndarray, grid_hw: tuple[int, int], centre_token: tuple[int, int]) -> np.ndarray:
    """One object's features from one image's merged tokens (row-major over the merged grid, as the processor lays
    them out): the token at `centre_token` (row, column) and the mean of its 3 x 3 neighbourhood inside the grid."""
    rows, cols = grid_hw
    if tokens.shape[0] != rows * cols:
        raise ValueError(f"{tokens.shape[0]} tokens do not fill a merged grid of {rows} x {cols}.")
    row, col = centre_token
    if not (0 <= row < rows and 0 <= col < cols):
        raise ValueError(f"Token ({row}, {col}) is outside the merged grid of {rows} x {cols}.")
    grid = tokens.reshape(rows, cols, -1)
    around = grid[max(0, row - 1) : row + 2, max(0, col - 1) : col + 2].reshape(-1, tokens.shape[-1])
    return np.concatenate([grid[row, col], around.mean(0)])


def centre_token_of(centre_pixel: Sequence[float], scene_size: Sequence[int], image_size: int, token_pixels: int):
    """The merged token (row, column) covering an object's centre pixel `(u, v)` of its `scene_size` (width, height)
    rendering, once the image is the collator's `image_size` square (the world renders squares: a plain resize)."""
    width, height = scene_size
    if width != height:
        raise ValueError(f"The size probe expects square renderings; got {width} x {height}.")
    u, v = (float(c) * image_size / width for c in centre_pixel)
    last = image_size // token_pixels - 1
    return min(last, max(0, math.floor(v / token_pixels))), min(last, max(0, math.floor(u / token_pixels)))


def constant_probe(targets: np.ndarray, image_of_sample: np.ndarray) -> dict[str, float]:
    """The best constant guess under the ridge probe's split: `training.controls.delta1_maximising_constant` of the
    fitting half (how `training.evaluate constant` fits its guess, for δ₁ rather than squared error), scored on the
    other half. `targets` are logs."""
    images = np.unique(image_of_sample)
    fit = np.isin(image_of_sample, images[: len(images) // 2])
    guess = math.log(delta1_maximising_constant(np.exp(targets[fit]), DELTA1_THRESHOLD))
    return {
        "r2": r_squared(np.full(int((~fit).sum()), guess), targets[~fit]),
        "delta1": float((np.exp(np.abs(guess - targets[~fit])) < DELTA1_THRESHOLD).mean()),
    }


def object_features(
    model: DepthAlignmentModel,
    pairs: Sequence,
    scenes: Sequence[dict],
    collator: RGBDPairCollator,
    batch_size: int = 32,
    encoded: list[EncodedBatch] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
    """Per object of `scenes[i]` (the scene of `pairs[i]`, one image per scene): its features
    (`object_token_features`) from the depth encoder (`"depth"`), the RGB tower (`"rgb"`) and both side by side
    (`"depth+rgb"`, what an `add` or `concat` model's image tokens hold); its log size and size factors
    (`OBJECT_SIZE_TARGETS`); and the index of its image. `encoded`: `encode_pairs` of the pairs, if already run."""
    if len(scenes) != len(pairs):
        raise ValueError(f"{len(pairs)} pairs but {len(scenes)} scenes: give each pair its scene.")
    encoded = encode_pairs(model, pairs, collator, batch_size) if encoded is None else encoded
    vision = model.depth_model_config.vision_config
    merge = vision.spatial_merge_size
    features: dict[str, list[np.ndarray]] = {"depth": [], "rgb": []}
    targets: dict[str, list[float]] = {name: [] for name in OBJECT_SIZE_TARGETS}
    image_of_sample = []
    for batch in encoded:
        counts = np.cumsum(model.tokens_per_image(batch.image_grid_thw))[:-1]
        per_image = {"depth": np.split(batch.depth, counts), "rgb": np.split(batch.rgb, counts)}
        for offset, (_, rows, cols) in enumerate(batch.image_grid_thw.tolist()):
            if cols != rows:
                raise ValueError(f"The size probe expects square images; got a grid of {rows} x {cols} patches.")
            scene = scenes[batch.start + offset]
            for obj in scene["objects"]:
                centre = centre_token_of(
                    obj["center_pixel"], scene["image_size"], rows * vision.patch_size, vision.patch_size * merge
                )
                for name in features:
                    features[name].append(
                        object_token_features(per_image[name][offset], (rows // merge, cols // merge), centre)
                    )
                for name, value in object_log_targets(obj, scene).items():
                    targets[name].append(value)
                image_of_sample.append(batch.start + offset)
    stacked = {name: np.stack(parts) for name, parts in features.items()}
    stacked["depth+rgb"] = np.concatenate([stacked["depth"], stacked["rgb"]], axis=1)
    return stacked, {name: np.asarray(values) for name, values in targets.items()}, np.asarray(image_of_sample)


def object_size_probe(
    model: DepthAlignmentModel,
    pairs: Sequence,
    scenes: Sequence[dict],
    collator: RGBDPairCollator,
    batch_size: int = 32,
    encoded: list[EncodedBatch] | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """The ridge probe of each of `OBJECT_SIZE_TARGETS` from `object_features`, with the best constant beside it
    (`{"width": {"depth": {"r2", "delta1", ...}, "rgb": ..., "depth+rgb": ..., "constant": ...}, ...}`), and under
    `"width_given_pixel_width"` what the tokens add to the true pixel width, with the ceiling of no camera."""
    features, targets, images = object_features(model, pairs, scenes, collator, batch_size, encoded)
    report = {}
    for name, target in targets.items():
        report[name] = {source: ridge_probe(parts, target, images) for source, parts in features.items()}
        report[name]["constant"] = constant_probe(target, images)
    # What the tokens' depth and camera are worth once the extent is known: width read from the features plus the
    # true log pixel width (scaled up so the ridge hardly shrinks it), against the pixel width alone, and the
    # ceiling of an input without the camera: the exact pixel width and depth over the best constant focal length.
    oracle = targets["pixel_width"][:, None] * ORACLE_COLUMN_SCALE
    report["width_given_pixel_width"] = {
        source: ridge_probe(np.concatenate([parts, oracle], axis=1), targets["width"], images)
        for source, parts in features.items()
    }
    report["width_given_pixel_width"]["pixel width alone"] = ridge_probe(oracle, targets["width"], images)
    # An exact extent and depth over a constant focal length f0 err by exactly f / f0: the best f0 is the δ₁ constant.
    focal = np.exp(targets["focal_length"])
    guess = delta1_maximising_constant(focal, DELTA1_THRESHOLD)
    report["width_given_pixel_width"]["exact extent and depth, constant focal"] = {
        "delta1": float((np.maximum(focal / guess, guess / focal) < DELTA1_THRESHOLD).mean())
    }
    return report


def main(argv: list[str] | None = None) -> dict:
    """`python -m training.align.probe MODEL [MODEL ...] --data PAIRS`: the probe of saved depth models' tokens."""
    parser = argparse.ArgumentParser(prog="python -m training.align.probe", description=main.__doc__)
    parser.add_argument("models", nargs="+", help="depth-model folders (with a depth encoder), or plain bases")
    parser.add_argument("--data", required=True, help="held-out RGB-D pairs or rendered-world rows")
    parser.add_argument("--pairs", type=int, default=300, help="use the first this many distinct pairs")
    parser.add_argument("--image_size", type=int, default=224, help="square side of the images (as in alignment)")
    parser.add_argument(
        "--objects",
        action="store_true",
        help="also probe each object's width and height (rendered-world rows with a `scene` column)",
    )
    args = parser.parse_args(argv)
    table = load_rows(args.data)
    rows = select_pair_rows(table)[: args.pairs]
    pairs = RGBDPairs(table, rows)
    scenes = None
    if args.objects:
        if "scene" not in table.column_names:
            raise ValueError(f"--objects needs rendered-world rows with a `scene` column; {args.data} has none.")
        scene_column = table.select_columns(["scene"])
        scenes = [json.loads(scene_column[index]["scene"]) for index in rows]
    report = {}
    for folder in args.models:
        depth_model, processor = load_depth_model(folder, depth_fusion=DEFAULT_DEPTH_FUSION)
        model = DepthAlignmentModel.from_depth_model(depth_model)
        collator = RGBDPairCollator(processor, args.image_size)
        encoded = encode_pairs(model, pairs, collator)  # once, for both probes
        report[folder] = metric_depth_probe(model, pairs, collator, encoded=encoded)
        if scenes is not None:
            report[folder]["objects"] = object_size_probe(model, pairs, scenes, collator, encoded=encoded)
        print(json.dumps({folder: report[folder]}), flush=True)
    return report


if __name__ == "__main__":
    main()
