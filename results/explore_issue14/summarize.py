"""Table of every explore run: δ₁ distance/point, closer/colour/shape accuracy, final depth-path stats, wall times."""

import json
import sys
from pathlib import Path


root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/explore")
cols = ["distance_to_camera", "point_depth", "closer", "color", "shape", "distance_between"]
print(
    "| run | dist δ₁ | point δ₁ | closer acc (unread) | colour | shape | between δ₁ | train loss end | |tanh g| | merger norm | depth/rgb norm | sft s | eval s |"
)
print("|---|" + "---|" * 12)
for folder in sorted(root.glob("*-seed*")):
    result = folder / "eval" / "results.json"
    if not result.exists():
        continue
    per = json.loads(result.read_text())["metrics"]["per_type"]

    def m(t, key, per=per):
        v = per.get(t, {}).get(key)
        return "-" if v is None else f"{v:.3f}"

    closer = per.get("closer", {})
    closer_s = "-" if not closer else f"{closer.get('accuracy', 0):.3f} ({closer.get('num_unparseable')})"
    hist = json.loads((folder / "loss_curve.json").read_text()) if (folder / "loss_curve.json").exists() else []
    last = [e for e in hist if "loss" in e]
    last = last[-1] if last else {}

    def f(k, last=last):
        return "-" if k not in last else f"{last[k]:.3g}"

    t = json.loads((folder / "timings.json").read_text()) if (folder / "timings.json").exists() else {}
    print(
        f"| {folder.name} | {m('distance_to_camera', 'delta1')} | {m('point_depth', 'delta1')} | {closer_s} | "
        f"{m('color', 'accuracy')} | {m('shape', 'accuracy')} | {m('distance_between', 'delta1')} | {f('loss')} | "
        f"{f('depth_gate_abs_mean')} | {f('depth_merger_out_norm')} | {f('depth_to_rgb_norm_ratio')} | "
        f"{t.get('sft_s', 0):.0f} | {t.get('eval_s', 0):.0f} |"
    )
