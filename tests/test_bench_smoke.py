"""The benchmarks run in their tiny CPU mode (CI smoke). Timings are not asserted; counts and structure are."""

import json

import pytest

from bench import bench_depth_generation, bench_depth_tower, bench_inference


def test_inference_benchmark_runs_tiny(tmp_path):
    out = tmp_path / "inference.json"
    payload = bench_inference.main(["--size", "tiny", "--image-sides", "56", "--batches", "1", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    expected = ["base", "rgb-only (ours)", "add", "add-full", "concat", "concat-full", "adapter", "adapter-full"]
    assert [row["variant"] for row in rows] == expected
    by_variant = {row["variant"]: row for row in rows}
    # 56x56 px = 4x4 patches = 4 merged tokens; concat doubles the visual tokens, add does not.
    assert by_variant["base"]["visual_tokens"] == by_variant["add"]["visual_tokens"] == 4
    assert by_variant["concat"]["visual_tokens"] == 8
    assert by_variant["concat"]["sequence_length"] == by_variant["add"]["sequence_length"] + 4  # its depth tokens
    assert by_variant["adapter"]["visual_tokens"] == 4 and by_variant["adapter"]["depth_layers"] == 2
    assert all(row["prefill_ms"] > 0 for row in rows) and payload["environment"]["torch"]
    # Each ratio is against its own reference row of the same run.
    assert by_variant["base"]["prefill_vs_base"] == by_variant["rgb-only (ours)"]["prefill_vs_ours_rgb_only"] == 1


def test_depth_tower_benchmark_flops(tmp_path):
    payload = bench_depth_tower.main(["--size", "tiny", "--out", str(tmp_path / "tower.json")])
    towers = {row["tower"] for row in payload["rows"]}
    assert towers == {"rgb tower (stock)", "rgb tower (ours: batched windows)", "depth tower (2 blocks)"}
    rgb_flops = {row["tflop"] for row in payload["rows"] if row["tower"].startswith("rgb") and row["batch"] == 1}
    assert len(rgb_flops) == 1  # the batched RGB tower does the stock tower's arithmetic
    # Hand count for the tiny depth tower at 56x56 (16 patches, width 32, MLP 64, 2 blocks, merged to width 64):
    tokens, width, mlp = 16, 32, 64
    block = (
        2 * tokens * width * 3 * width + 4 * tokens * tokens * width + 2 * tokens * width**2 + 6 * tokens * width * mlp
    )
    expected = 2 * tokens * 196 * width + 2 * block + 2 * 4 * (4 * width) ** 2 + 2 * 4 * 4 * width * 64
    row = next(r for r in payload["rows"] if r["tower"].startswith("depth") and r["image"] == "56x56")
    assert abs(row["tflop"] * 1e12 - expected) < 1
    assert all(r["ms_vs_stock_rgb_tower"] > 0 for r in payload["rows"])


def test_depth_tower_ratio_uses_the_stock_row_of_the_same_image_and_batch():
    rows = [
        {"tower": "rgb tower (stock)", "image": "448x448", "batch": 1, "ms": 10.0},
        {"tower": "rgb tower (stock)", "image": "448x448", "batch": 8, "ms": 80.0},
        {"tower": "depth tower (8 blocks)", "image": "448x448", "batch": 1, "ms": 5.0},
        {"tower": "depth tower (8 blocks)", "image": "448x448", "batch": 8, "ms": 20.0},
    ]
    bench_depth_tower.add_ratios_vs_stock(rows)
    assert [row["ms_vs_stock_rgb_tower"] for row in rows] == [1.0, 1.0, 0.5, 0.25]


@pytest.mark.slow  # torch.compile on CPU builds C++ with gcc: tens of seconds
def test_depth_tower_benchmark_compile_rows(tmp_path):
    payload = bench_depth_tower.main(["--size", "tiny", "--compile", "--out", str(tmp_path / "tower.json")])
    towers = {row["tower"] for row in payload["rows"]}
    expected = {"rgb tower (stock)", "rgb tower (ours: batched windows)", "depth tower (2 blocks)"}
    assert towers == expected | {"depth tower (2 blocks, compiled)"}
    assert payload["compile"] is True


def test_training_benchmark_runs_tiny(tmp_path):
    from bench import bench_training

    payload = bench_training.main(["--size", "tiny", "--steps", "1", "--out", str(tmp_path / "training.json")])
    alignment, sft = payload["rows"]
    assert alignment["stage"] == "alignment (dense)" and sft["stage"] == "LoRA SFT (add)"
    assert alignment["samples_per_s"] > 0 and sft["samples_per_s"] > 0
    # MFU = 3 x forward FLOPs / step time / peak: consistent with the reported throughput.
    assert abs(alignment["depth_tower_mfu_vs_h100_bf16"] * 989.0 - alignment["depth_tower_tflop_per_s"]) < 1e-9


def test_depth_generation_benchmark_runs_tiny(tmp_path):
    out = tmp_path / "generation.json"
    bench_depth_generation.main(
        ["--tiny", "--dtypes", "auto", "bfloat16", "--naive-dtypes", "float32", "bfloat16", "--out", str(out)]
    )
    report = json.loads(out.read_text())
    rows = report["results"]
    assert [(row["method"], row["dtype"]) for row in rows] == [
        ("naive pipeline loop", "float32"),
        ("naive pipeline loop", "bfloat16"),
        ("make_rgbd_pairs", "float32"),  # auto on CPU
        ("make_rgbd_pairs", "bfloat16"),
        ("raw model forward 56x56", "float32"),
        ("raw model forward 56x56", "bfloat16"),
    ]
    naive, naive_bf16, ours, raw = rows[0], rows[1], rows[2:4], rows[4:]
    for row, raw_row in zip(ours, raw):
        assert row["skipped"] == 0
        assert row["speed_up_over_naive"] == naive["seconds"] / row["seconds"]  # always over the fp32 loop
        assert row["cpu_speed_up_over_naive"] == naive["cpu_seconds"] / row["cpu_seconds"] > 0
        assert row["generation_share_of_raw_model"] == row["generation_images_per_s"] / raw_row["images_per_s"]
    assert report["speed_up"] == max(row["speed_up_over_naive"] for row in ours)
    # Only the bf16 run has a naive loop of its own precision beside the fp32 one.
    assert "speed_up_over_naive_same_dtype" not in ours[0]
    assert ours[1]["speed_up_over_naive_same_dtype"] == naive_bf16["seconds"] / ours[1]["seconds"]
    # The fp32 ceiling: the naive loop over the raw fp32 forward, and the forward's FLOP rate from its FLOP count.
    ceiling = report["ceiling"]["float32"]
    raw_fp32 = raw[0]
    assert ceiling["best_possible_speed_up_over_naive"] == pytest.approx(
        naive["seconds"] / raw_fp32["seconds"], rel=1e-12
    )
    assert ceiling["forward_gflop"] > 0 and ceiling["matmul_2048_gflop_per_s"] > 0
    assert abs(ceiling["forward_gflop_per_s"] - ceiling["forward_gflop"] * raw_fp32["images_per_s"]) < 1e-6
    # Written from the raw rates, read back here in GFLOP/s: equal up to the rounding of the two divisions by 1e9.
    assert ceiling["forward_share_of_matmul_rate"] == pytest.approx(
        ceiling["forward_gflop_per_s"] / ceiling["matmul_2048_gflop_per_s"], rel=1e-12
    )
    # Precision errors for the bf16 run only, on a photo and a rendered scene; bf16 is close to fp32, and not equal.
    assert list(report["depth_error_vs_float32"]) == ["bfloat16"]
    errors = report["depth_error_vs_float32"]["bfloat16"]
    assert set(errors) == {"photo", "rendered scene"}
    for error in errors.values():
        assert 0 < error["median_relative_error"] < 0.05
        assert error["median_relative_error"] <= error["p99_relative_error"] <= error["max_relative_error"]
    assert report["threads"] >= 1 and report["torch"]


def test_host_ops_benchmark_counts_by_region(tmp_path):
    from bench import bench_host_ops

    payload = bench_host_ops.main(
        ["--size", "tiny", "--batch", "4", "--image-side", "112", "--out", str(tmp_path / "o")]
    )
    rows = {row["variant"]: row for row in payload["rows"]}
    stock, ours = rows["stock Qwen2.5-VL"], rows["ours, rgb-only"]
    # The same language model dispatches the same ops; the bookkeeping and the window loop are what differ.
    assert stock["language model layers"] == ours["language model layers"] > 0
    assert ours["rope index"] < stock["rope index"]
    assert ours["vision blocks"] < stock["vision blocks"]
    assert ours["total"] < stock["total"] == sum(stock[region] for region in bench_host_ops.REGIONS)
    assert rows["ours, add"]["depth blocks"] > 0 == stock["depth blocks"]


def test_sft_throughput_benchmark_runs_tiny(tmp_path):
    from bench import bench_sft_throughput

    out = tmp_path / "sft_throughput.json"
    payload = bench_sft_throughput.main(["--tiny", "--out", str(out)])
    assert json.loads(out.read_text())["rows"] == payload["rows"]
    plain, plain_trl_loss, raw, processed = payload["rows"]
    assert [row["path"] for row in payload["rows"]] == [
        bench_sft_throughput.PLAIN_LOOP,
        bench_sft_throughput.PLAIN_LOOP_TRL_LOSS,
        bench_sft_throughput.SFT_RAW_ROWS,
        bench_sft_throughput.SFT_PROCESSED_ROWS,
    ]
    # 2 scenes x 6 questions, batches of 4; 2 timed steps per path, one per round, each after one warm-up step.
    assert payload["dataset_rows"] == 12 and payload["rounds"] == 2
    assert all(
        row["steps"] == 2 and row["batch"] == 4 and len(row["rounds_samples_per_s"]) == 2 for row in payload["rows"]
    )
    assert payload["batches_identical"] is True and payload["processed_rows_mib"] > 0
    # Only the processed rows have a one-time setup; each ratio is against the plain loop of the same run.
    assert [plain["setup_s"], plain_trl_loss["setup_s"], raw["setup_s"]] == [None, None, None]
    assert processed["setup_s"] > 0
    for row in payload["rows"]:
        assert row["samples_per_s"] == pytest.approx(row["batch"] * 1000 / row["step_ms"])
        assert row["vs_plain_loop"] == pytest.approx(row["samples_per_s"] / plain["samples_per_s"])
        assert row["cpu_vs_plain_loop"] == pytest.approx(row["samples_per_cpu_s"] / plain["samples_per_cpu_s"])
