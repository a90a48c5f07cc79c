"""Ridge probe: from each merged token to the mean log-depth of its region (28x28 px at 112 px), on held-out scenes.

    python results/explore_issue14/probe.py MODEL_FOLDER [--data runs/base_cpu/data/test] [--scenes 300]

Prints R² and δ₁ of the probe (fit on half the scenes, tested on the other half) for the depth encoder's merged
tokens, the RGB tokens, and (for 'add') the fused tokens image + tanh(g) * depth.
"""

import argparse
import json

import numpy as np
import torch

from modeling_qwen2_5_vl_depth import Qwen2_5_VLDepthForConditionalGeneration
from processing_depth import Qwen2_5_VLDepthProcessor
from training.collator import DepthVLMCollator
from training.load import load_rows


parser = argparse.ArgumentParser()
parser.add_argument("model")
parser.add_argument("--data", default="runs/base_cpu/data/test")
parser.add_argument("--scenes", type=int, default=300)
parser.add_argument("--fusion", default=None, help="load with this fusion (default: the folder's)")
args = parser.parse_args()
torch.set_num_threads(1)
kwargs = {"depth_fusion": args.fusion} if args.fusion else {}
processor = Qwen2_5_VLDepthProcessor.from_pretrained(args.model, trust_remote_code=False, **kwargs)
model = Qwen2_5_VLDepthForConditionalGeneration.from_pretrained(args.model, **kwargs).eval()
rows = load_rows(args.data)
first = {}
for index, scene in enumerate(rows["scene_id"]):
    first.setdefault(scene, index)
picked = sorted(first.values())[: args.scenes]
rows = rows.select(picked)
# Unmarked images only (a point-depth marker changes the RGB image, not the depth).
collate = DepthVLMCollator(processor)
feats = {"depth": [], "rgb": [], "fused": []}
targets = []
with torch.no_grad():
    for start in range(0, len(rows), 32):
        batch = collate([rows[i] for i in range(start, min(start + 32, len(rows)))])
        grid = batch["image_grid_thw"]
        depth_values = batch["depth_values"].float()
        valid = depth_values > 0
        log_depth = torch.where(valid, depth_values.clamp_min(1e-3).log(), torch.zeros_like(depth_values))
        # 4 consecutive patches = one merged token.
        sums = log_depth.reshape(-1, 4 * depth_values.shape[1]).sum(1)
        counts = valid.reshape(-1, 4 * depth_values.shape[1]).sum(1).clamp_min(1)
        targets.append((sums / counts).numpy())
        rgb = torch.cat(model.model.get_image_features(batch["pixel_values"], grid).pooler_output)
        depth = torch.cat(model.model.get_depth_features(depth_values, grid).pooler_output)
        feats["rgb"].append(rgb.numpy())
        feats["depth"].append(depth.numpy())
        if hasattr(model.model, "depth_gate"):
            feats["fused"].append((rgb + model.model.depth_gate(depth)).numpy())
target = np.concatenate(targets)
half = len(target) // 2 // 16 * 16  # whole scenes on each side
report = {}
for name, parts in feats.items():
    if not parts:
        continue
    x = np.concatenate(parts).astype(np.float64)
    x = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    xa, ya, xb, yb = x[:half], target[:half], x[half:], target[half:]
    best = None
    for lam in (1e-3, 1e-2, 1e-1, 1, 10):
        w = np.linalg.solve(xa.T @ xa + lam * np.eye(x.shape[1]), xa.T @ ya)
        pred = xb @ w
        r2 = 1 - ((pred - yb) ** 2).sum() / ((yb - yb.mean()) ** 2).sum()
        ratio = np.exp(np.abs(pred - yb))
        d1 = float((ratio < 1.25).mean())
        if best is None or r2 > best["r2"]:
            best = {"r2": float(r2), "delta1": d1, "lambda": lam}
    report[name] = best
if hasattr(model.model, "depth_gate"):
    g = model.model.depth_gate.gate.tanh().abs()
    report["gate_abs_mean"] = float(g.mean())
print(json.dumps({"model": args.model, **report}))
