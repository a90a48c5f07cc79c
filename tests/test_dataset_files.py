"""dataset_files: the atomic writing, clean-up and dataset-card pieces every dataset writer shares."""

import os

import pytest

from training.dataset_files import (
    columns_table,
    remove_stale_temporary_files,
    size_category,
    skipped_section,
    temporary_path,
    write_atomically,
)


@pytest.mark.parametrize(
    ("num_rows", "category"),
    [(0, "n<1K"), (999, "n<1K"), (1000, "1K<n<10K"), (9999, "1K<n<10K"), (10_000, "10K<n<100K"),
     (2_500_000, "1M<n<10M"), (10**12 - 1, "100B<n<1T"), (10**12, "n>1T")],
)  # fmt: skip
def test_size_category_matches_the_hub_bands(num_rows, category):
    assert size_category(num_rows) == category


def test_atomic_write_and_stale_temporary_files(tmp_path):
    target = tmp_path / "sub" / "file.json"
    write_atomically(target, "{}\n")
    write_atomically(tmp_path / "data.bin", b"\x00\x01")
    assert target.read_text() == "{}\n" and (tmp_path / "data.bin").read_bytes() == b"\x00\x01"
    assert temporary_path(target) == target.with_name(f".file.json.tmp-{os.getpid()}")
    assert sorted(path.name for path in target.parent.iterdir()) == ["file.json"]  # no temporary file left

    stale = [target.with_name(".file.json.tmp-1"), target.with_name(".file.json.tmp-22")]
    others = [target.with_name(".other.json.tmp-1"), target.with_name(".file.json.tmpx")]
    for path in stale + others:
        path.write_text("")
    assert sorted(remove_stale_temporary_files([target, tmp_path / "missing" / "x"])) == sorted(stale)
    assert all(path.exists() for path in others) and target.exists()


def test_columns_table_describes_every_column_and_nothing_else():
    from datasets import Features, Image, List, Value

    features = Features({"images": List(Image()), "depth": Value("binary"), "turns": List({"role": Value("string")})})
    descriptions = {"images": "the picture", "depth": "16-bit PNG", "turns": "chat"}
    assert columns_table(features, descriptions).splitlines()[2:] == [
        "| `images` | list of image | the picture |",
        "| `depth` | binary | 16-bit PNG |",
        "| `turns` | list of struct | chat |",
    ]
    with pytest.raises(ValueError, match=r"undescribed \['turns'\], unknown \['extra'\]"):
        columns_table(features, {"images": "", "depth": "", "extra": ""})


def test_skipped_section_counts_and_lists():
    assert skipped_section([]) == "None."
    skipped = [
        {"source_id": f"{i}.png", "reason": "too_small" if i % 2 else "unreadable", "detail": "a|b"} for i in range(5)
    ]
    text = skipped_section(skipped, limit=2)
    assert "| `too_small` | 2 |" in text and "| `unreadable` | 3 |" in text
    assert "| `0.png` | `unreadable` | a/b |" in text and "`2.png`" not in text
    assert text.endswith("... and 3 more: see `skipped.jsonl`.")
