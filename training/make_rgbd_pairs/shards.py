"""The output's shards: which inputs each holds, which process writes it, how it is published, how a rerun resumes.

Shard `i` always holds the same slice of the sorted input list and goes to rank `i % world_size`; its log and its
parquet file are written under temporary names and renamed into place, the parquet last, so a finished shard is one
whose parquet exists and a rerun writes only the missing ones. `generation.json` records the settings, and a rerun
with other settings is refused. `run_shard_job` is what every rank of a pairs job does.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from training.dataset_files import temporary_path, write_atomically
from training.trl_layout import message_features


FORMAT_VERSION = 2  # 2: `images` + depth in `messages` (1: `image` and `depth` columns)
# Settings a rerun must share with the shards already written (the input list's too: `num_items`, `items_sha256`).
RESUME_SETTINGS = (
    "format_version",
    "estimator",
    "depth_encoding",
    "depth_scale",
    "input_format",
    "input_reading",
    "shard_size",
    "max_side",
    "max_pixels",
    "num_items",
    "items_sha256",
)


def num_shards_for(num_items: int, shard_size: int) -> int:
    return -(-num_items // shard_size)


def shard_item_range(shard: int, shard_size: int, num_items: int) -> range:
    """The input indices of shard `shard`: a fixed slice of the sorted input list."""
    return range(shard * shard_size, min((shard + 1) * shard_size, num_items))


def shards_for_rank(num_shards: int, rank: int, world_size: int) -> list[int]:
    """Shards written by process `rank` of `world_size`: round-robin, so every shard has exactly one owner."""
    return list(range(rank, num_shards, world_size))


def shard_path(out_dir: Path, shard: int) -> Path:
    return Path(out_dir) / "data" / f"shard-{shard:05d}.parquet"


def shard_log_path(out_dir: Path, shard: int) -> Path:
    return Path(out_dir) / "shard_logs" / f"shard-{shard:05d}.json"


def remove_stale_temp_files(out_dir: Path, shards: list[int]) -> list[Path]:
    """Delete temporary files a killed run left for `shards` (only this process's shards: others may be writing)."""
    removed = []
    for shard in shards:
        for final_path in (shard_path(out_dir, shard), shard_log_path(out_dir, shard)):
            for temp_path in final_path.parent.glob(f".{final_path.name}.tmp-*"):
                temp_path.unlink(missing_ok=True)
                removed.append(temp_path)
    return removed


def dataset_features():
    """A pair: its image in `images`, its depth in the image block of `messages` (`training.trl_layout`), metadata."""
    from datasets import Features, List, Value
    from datasets import Image as ImageFeature

    return Features(
        {
            "images": List(ImageFeature()),
            "messages": message_features(),
            "depth_is_metric": Value("bool"),
            "depth_encoding": Value("string"),
            "estimator": Value("string"),
            "source_id": Value("string"),
            "width": Value("int32"),
            "height": Value("int32"),
        }
    )


def write_shard(out_dir: Path, shard: int, rows: list[dict], skipped: list[dict], seconds: float) -> None:
    """Publish one shard: its log first, then the parquet file (atomically), which marks the shard done."""
    import datasets

    features = dataset_features()
    log = {"shard": shard, "rows": len(rows), "skipped": skipped, "seconds": round(seconds, 3)}
    write_atomically(shard_log_path(out_dir, shard), json.dumps(log, indent=1) + "\n")
    final_path = shard_path(out_dir, shard)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    temp_path = temporary_path(final_path)
    columns = {name: [row[name] for row in rows] for name in features}  # also right for a shard with no rows
    bars_were_enabled = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # our own bar tracks images
    try:
        datasets.Dataset.from_dict(columns, features=features).to_parquet(str(temp_path))
    finally:
        if bars_were_enabled:
            datasets.enable_progress_bars()
    os.replace(temp_path, final_path)


def check_generation_info(out_dir: Path, info: dict, write: bool) -> None:
    """Refuse to mix shards made with different settings or inputs; record the settings (main process only)."""
    info_path = out_dir / "generation.json"
    text = json.dumps(info, indent=2, sort_keys=True) + "\n"
    if info_path.exists():
        existing = json.loads(info_path.read_text())
        differing = [key for key in RESUME_SETTINGS if existing.get(key) != info.get(key)]
        if differing:
            raise SystemExit(
                f"{out_dir} holds shards made with other settings or another input list ({', '.join(differing)} "
                f"differ): use a fresh --out, or the original settings.\nexisting: {existing}\nrequested: {info}"
            )
        return
    if write:
        write_atomically(info_path, text)


def read_shard_logs(out_dir: Path, num_shards: int) -> tuple[list[dict], list[int]]:
    """Logs of the finished shards (those whose parquet exists) and the indices of missing shards."""
    logs, missing = [], []
    for shard in range(num_shards):
        log_path = shard_log_path(out_dir, shard)
        if shard_path(out_dir, shard).exists() and log_path.exists():
            logs.append(json.loads(log_path.read_text()))
        else:
            missing.append(shard)
    return logs, missing


def run_shard_job(state, out_dir: Path, info: dict, write_pending, write_card, unit: str) -> dict:
    """What every rank of a pairs job does once its settings (`info`) are known: record/check the settings, take this
    rank's shards, clear what a killed run left, write the missing ones (`write_pending(shards, rank_name)`, returning
    counts), then the main process writes the card (`write_card()`, returning the totals)."""
    # Every rank checks (so all fail together, before any barrier); the main one records.
    check_generation_info(out_dir, info, write=state.is_main_process)
    state.wait_for_everyone()
    num_shards = info["num_shards"]
    my_shards = shards_for_rank(num_shards, state.process_index, state.num_processes)
    remove_stale_temp_files(out_dir, my_shards)
    pending = [shard for shard in my_shards if not shard_path(out_dir, shard).exists()]
    rank_name = f"rank {state.process_index}/{state.num_processes}: " if state.num_processes > 1 else ""
    print(
        f"{rank_name}{info['num_items']} {unit}s in {num_shards} shards; {len(my_shards)} mine, {len(pending)} to write",
        file=sys.stderr,
    )
    result = write_pending(pending, rank_name)
    rate = result["items"] / result["seconds"] if result["seconds"] > 0 else float("nan")
    print(
        f"{rank_name}{result['items']} {unit}s ({result['rows']} rows, {result['skipped']} skipped) in "
        f"{result['seconds']:.1f} s: {rate:.1f} {unit}s/s",
        file=sys.stderr,
    )
    state.wait_for_everyone()
    if state.is_main_process:
        totals = write_card()
        result["totals"] = totals
        print(
            f"{out_dir}: {totals['rows']} rows, {totals['skipped']} skipped {totals['skipped_by_reason']}; "
            f"{num_shards - len(totals['missing_shards'])}/{num_shards} shards",
            file=sys.stderr,
        )
        if totals["rows"] == 0 and not totals["missing_shards"]:
            # A dataset of skips is a failed job, not a finished one (a wrong folder layout, column or scale).
            reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(totals["skipped_by_reason"].items()))
            raise SystemExit(
                f"No usable pair among the {info['num_items']} inputs: every one was skipped ({reasons}). "
                f"See {out_dir / 'skipped.jsonl'} for each input's reason."
            )
    return result
