"""Shared benchmark plumbing: models from configs with random weights, timing, environment, table and JSON output.

Time and memory do not depend on weight values, so real-size configs with random weights measure what the real
checkpoints would. Every comparison is a ratio of two figures measured in the same run.
"""

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import transformers

from configuration_depth import Qwen2_5_VLDepthConfig
from training.tiny import BASE_SIZES, build_tiny_tokenizer, tiny_base_config


CONFIGS = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "configs"
REAL_CONFIGS = {"3b": CONFIGS / "qwen2_5_vl_3b_instruct", "7b": CONFIGS / "qwen2_5_vl_7b_instruct"}
H100_BF16_DENSE_PEAK_TFLOPS = 989.0


def depth_config_for(size: str, **overrides) -> Qwen2_5_VLDepthConfig:
    """A depth-model config: a small offline one (`training.tiny.BASE_SIZES`: tiny, mini, small) or a real size
    (`3b`, `7b`) from its public config."""
    if size in BASE_SIZES:
        base = tiny_base_config(build_tiny_tokenizer(), size).to_dict()
        base.pop("model_type", None)
        return Qwen2_5_VLDepthConfig(**base, **overrides)
    return Qwen2_5_VLDepthConfig.from_pretrained(REAL_CONFIGS[size], **overrides)


def compile_depth_blocks(encoder: torch.nn.Module) -> torch.nn.Module:
    """`torch.compile` every block of a depth encoder in place (static shapes: one kernel set per image size).

    The blocks are nearly all of the encoder's time; compiling them alone keeps the encoder's Python (grid
    bookkeeping, `.tolist()`) out of the graph. Blocks share their code, so one compilation per input shape serves all
    of them and every encoder of the same width; the recompile limit is raised so that a benchmark's several shapes and
    models never fall back to eager silently. The first call per shape compiles (benchmarks warm up first).
    """
    dynamo_config = torch._dynamo.config
    limit = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"  # torch < 2.7
    setattr(dynamo_config, limit, max(getattr(dynamo_config, limit), 64))
    for block in encoder.blocks:
        block.compile(dynamic=False)
    return encoder


def environment() -> dict:
    device = (
        torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.processor() or 'unknown'})"
    )
    return {
        "device": device,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "threads": torch.get_num_threads(),
    }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_ms(function: Callable[[], object], device: torch.device, warmup: int = 2, repeats: int = 5) -> float:
    """Median wall time of `function` in milliseconds, after warm-up (compilation, allocator, cuDNN autotune)."""
    for _ in range(warmup):
        function()
    synchronize(device)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        synchronize(device)
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def peak_memory_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(format_cell(r.get(c))) for r in rows)) for c in columns}
    print(" | ".join(c.ljust(widths[c]) for c in columns))
    print("-|-".join("-" * widths[c] for c in columns))
    for row in rows:
        print(" | ".join(format_cell(row.get(c)).ljust(widths[c]) for c in columns))


def format_cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def report(benchmark: str, rows: list[dict], columns: list[str], out: str | Path | None, **fields) -> dict:
    """Print the rows as a table and write them, with `fields` and the environment, as JSON to `out`."""
    print_table(rows, columns)
    payload = {"benchmark": benchmark, **fields, "environment": environment(), "rows": rows}
    write_json(out, payload)
    return payload


def write_json(path: str | Path | None, payload: dict) -> None:
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))
    print(f"wrote {path}")


def save_random_depth_anything(
    folder: str | Path, config_dir: str | Path = CONFIGS / "depth_anything_v2_small"
) -> str:
    """A real-size DepthAnything folder with random weights and Depth-Anything-V2's published preprocessing.

    Throughput does not depend on the weights, so this measures what the real checkpoint would, offline.
    """
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation
    from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil

    folder = Path(folder)
    config = DepthAnythingConfig.from_pretrained(config_dir)
    if config.max_depth is None:  # the fixture writes `max_depth: null`; relative heads scale by 1 (the class default)
        config.max_depth = 1
    torch.manual_seed(0)
    DepthAnythingForDepthEstimation(config).save_pretrained(folder)
    DPTImageProcessorPil(
        size={"height": 518, "width": 518},
        keep_aspect_ratio=True,
        ensure_multiple_of=14,
        resample=3,  # bicubic
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(folder)
    return str(folder)
