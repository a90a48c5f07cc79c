"""Save a depth model, then load it in a fresh Python process through every Auto class, offline, as remote code."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.conftest import make_inputs, random_depth, random_image, with_open_depth_path


FRESH_PROCESS_SCRIPT = r"""
import json, sys
import numpy as np, torch
from PIL import Image
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

folder, arrays_path, out_path = sys.argv[1:]
arrays = np.load(arrays_path)
config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
prompt = processor.apply_chat_template(
    [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How far is the red cube from the camera?"}]}],
    add_generation_prompt=True,
)
inputs = processor(images=[Image.fromarray(arrays["image"])], text=[prompt], depth=[arrays["depth"]], return_tensors="pt")
report = {
    "config": type(config).__module__ + "." + type(config).__name__,
    "processor": type(processor).__module__ + "." + type(processor).__name__,
    "depth_fusion": processor.depth_fusion,
    "input_ids": inputs["input_ids"].tolist(),
}
logits = {}
for auto_class in (AutoModel, AutoModelForImageTextToText):
    model = auto_class.from_pretrained(folder, trust_remote_code=True).eval()
    report[auto_class.__name__] = type(model).__module__ + "." + type(model).__name__
    with torch.no_grad():
        logits[auto_class.__name__] = model(**inputs).logits
    report[auto_class.__name__ + "_generated"] = model.generate(**inputs, max_new_tokens=3, do_sample=False)[0, -3:].tolist()
torch.save(logits, out_path + ".pt")
json.dump(report, open(out_path, "w"))
"""


@pytest.mark.parametrize("fusion", ["add", "concat", "adapter"])
def test_fresh_process_loads_every_auto_class_with_identical_logits(depth_models, tmp_path, fusion):
    model, processor = depth_models[fusion]
    model = with_open_depth_path(model)  # so the reloaded depth path is really exercised
    folder = tmp_path / "exported"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)

    code_files = (
        "modeling_qwen2_5_vl_depth.py",
        "fast_qwen2_5_vl.py",
        "configuration_depth.py",
        "processing_depth.py",
    )
    for code_file in code_files:
        assert (folder / code_file).is_file(), code_file
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_depth.Qwen2_5_VLDepthConfig",
        "AutoModel": "modeling_qwen2_5_vl_depth.Qwen2_5_VLDepthForConditionalGeneration",
        "AutoModelForImageTextToText": "modeling_qwen2_5_vl_depth.Qwen2_5_VLDepthForConditionalGeneration",
    }
    processor_config = json.loads((folder / "processor_config.json").read_text())
    assert processor_config["auto_map"] == {"AutoProcessor": "processing_depth.Qwen2_5_VLDepthProcessor"}

    image, depth = random_image(100, 140, 0), random_depth(100, 140, 0)
    np.savez(tmp_path / "arrays.npz", image=np.asarray(image), depth=depth)
    script = tmp_path / "load.py"
    script.write_text(FRESH_PROCESS_SCRIPT)
    report_path = tmp_path / "report.json"
    # A clean environment: offline, run from elsewhere, nothing of this checkout on the path.
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    environment.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    result = subprocess.run(
        [sys.executable, str(script), str(folder), str(tmp_path / "arrays.npz"), str(report_path)],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(report_path.read_text())
    for key in ("config", "processor", "AutoModel", "AutoModelForImageTextToText"):
        assert report[key].startswith("transformers_modules."), (key, report[key])
    assert report["AutoModel"].endswith("Qwen2_5_VLDepthForConditionalGeneration")
    assert report["depth_fusion"] == fusion

    inputs = make_inputs(processor, [[image]], [[depth]])
    assert report["input_ids"] == inputs["input_ids"].tolist()
    with torch.no_grad():
        expected = model(**inputs).logits
        expected_generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)[0, -3:].tolist()
    reloaded = torch.load(str(report_path) + ".pt")
    for name in ("AutoModel", "AutoModelForImageTextToText"):
        torch.testing.assert_close(reloaded[name], expected, rtol=0, atol=0)
        assert report[name + "_generated"] == expected_generated
