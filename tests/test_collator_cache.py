"""Rows processed ahead of training (`training.processed_cache`): the collator batches them into exactly the batches it
builds from the raw rows, and the cache is keyed by everything that shapes them."""

import copy

import pytest
import torch

from tests.conftest import reconfigured
from training.collator import DepthVLMCollator
from training.data_files import load_rows
from training.depth_png import decode_depth_cell, decode_image_cell
from training.processed_cache import process_rows, processed_rows_fingerprint
from training.spatialbot import processor_for_arm
from training.trl_layout import INTRINSICS_KEY, first_depth, image_blocks


# Every key the processor and collator put in a batch of the rendered world (depth keys only when depth is used).
BATCH_KEYS = ["input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw", "labels"]
DEPTH_KEYS = ["depth_values", "image_has_depth", "depth_intrinsics"]  # the world carries each camera


@pytest.fixture(scope="module")
def rows(world_dir):
    return load_rows(world_dir)


def assert_identical(batch, expected):
    """Same keys in the same order, and per key the same dtype, shape and every value (bit for bit)."""
    assert list(batch) == list(expected)
    for key in expected:
        assert batch[key].dtype == expected[key].dtype, key
        assert batch[key].shape == expected[key].shape, key
        assert torch.equal(batch[key], expected[key]), key


def batches_of(rows, size: int):
    return [list(range(start, min(start + size, len(rows)))) for start in range(0, len(rows), size)]


@pytest.mark.parametrize("arm", ["add", "concat", "none", "image"])
def test_processed_rows_batch_bit_identically_to_raw_rows(depth_models, tiny_base, rows, tmp_path, arm):
    processor = processor_for_arm(tiny_base, "image") if arm == "image" else depth_models[arm][1]
    collator = DepthVLMCollator(processor)
    processed = process_rows(rows, collator, cache_dir=tmp_path)
    assert len(processed) == len(rows)
    # Batches of 5 over 48 rows: questions of different lengths, so most batches are padded, and a last batch of 3.
    for indices in batches_of(rows, 5):
        expected = collator([rows[i] for i in indices])
        assert_identical(collator(processed.__getitems__(indices)), expected)
    expected_keys = BATCH_KEYS[:-1] + (DEPTH_KEYS if arm in ("add", "concat") else []) + ["labels"]
    assert list(expected) == expected_keys
    assert (expected["attention_mask"] == 0).any(), "no batch was padded: the test would not check padding"


def test_right_padding_is_reproduced_too(depth_models, rows, tmp_path):
    processor = copy.deepcopy(depth_models["concat"][1])
    processor.tokenizer.padding_side = "right"
    collator = DepthVLMCollator(processor)
    processed = process_rows(rows.select(range(12)), collator, cache_dir=tmp_path)
    for indices in batches_of(processed, 4):
        expected = collator([rows[i] for i in indices])
        assert (expected["attention_mask"][:, -1] == 0).any()
        assert_identical(collator(processed.__getitems__(indices)), expected)


def test_images_with_and_without_depth_in_one_batch(depth_models, rows):
    """A processed row without depth (image_has_depth False, no depth patches) next to one with depth batches like the
    processor's own mixed batch: depth patches of the images that have depth only, and a flag per image."""
    processor = depth_models["add"][1]  # "add" adds no tokens, so the RGB-only row has the same input_ids
    with_depth = DepthVLMCollator(processor).process_row(rows[0])
    without_depth = DepthVLMCollator(depth_models["none"][1]).process_row(rows[1])
    assert without_depth["depth_values"].numel() == 0 and without_depth["image_has_depth"].tolist() == [False]

    collator = DepthVLMCollator(processor)
    batch = collator.collate_processed([with_depth, without_depth])
    images = [[decode_image_cell(image) for image in row["images"]] for row in (rows[0], rows[1])]
    texts = [processor.apply_chat_template(row["messages"]) for row in (rows[0], rows[1])]
    expected = processor(
        images=images,
        text=texts,
        depth=[[decode_depth_cell(first_depth(rows[0]))], [None]],
        intrinsics=[[image_blocks(rows[0]["messages"])[0][INTRINSICS_KEY]], [None]],
        padding=True,
        return_tensors="pt",
    )
    expected["labels"] = collator.assistant_labels(expected["input_ids"], expected["attention_mask"])
    assert_identical(batch, expected)
    assert batch["image_has_depth"].tolist() == [True, False]
    assert len(batch["depth_values"]) == int(batch["image_grid_thw"][0].prod())


def test_processing_is_deterministic(depth_models, rows):
    """Storing processed rows is only valid while the collator draws nothing at random (no augmentation): a row must
    process to the same tensors every time. Whoever adds augmentation must keep it out of processed rows."""
    collator = DepthVLMCollator(depth_models["add"][1])
    torch.manual_seed(0)
    first = collator.process_row(rows[3])
    torch.manual_seed(1)
    second = collator.process_row(rows[3])
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_max_length_is_checked_when_batching_processed_rows(depth_models, rows, tmp_path):
    processed = process_rows(rows.select(range(4)), DepthVLMCollator(depth_models["concat"][1]), cache_dir=tmp_path)
    strict = DepthVLMCollator(depth_models["concat"][1], max_length=40)
    with pytest.raises(ValueError, match="longer than max_length=40"):
        strict(processed.__getitems__([0, 1]))


class TestCacheKey:
    def test_the_key_follows_the_rows_and_every_processor_setting(self, depth_models, rows):
        processor = depth_models["add"][1]
        key = processed_rows_fingerprint(rows, processor)
        assert processed_rows_fingerprint(rows, processor) == key
        smaller_images = copy.deepcopy(processor)
        smaller_images.image_processor.max_pixels = 56 * 56
        other_template = copy.deepcopy(processor)
        other_template.chat_template = processor.chat_template.replace("You are a helpful assistant.", "Be brief.")
        variants = {
            "depth_fusion": reconfigured(processor, depth_fusion="concat"),
            "invalid_depth": reconfigured(processor, invalid_depth="error"),
            "fill_depth_holes": reconfigured(processor, fill_depth_holes=1),
            "max_pixels": smaller_images,
            "chat_template": other_template,
        }
        for name, variant in variants.items():
            assert processed_rows_fingerprint(rows, variant) != key, name
        assert processed_rows_fingerprint(rows.select(range(10)), processor) != key
        assert processed_rows_fingerprint(rows.select(range(10)), processor) == processed_rows_fingerprint(
            rows.select(range(10)), processor
        )

    def test_a_cached_file_is_reused_and_a_new_setting_is_processed_again(
        self, depth_models, tiny_base, rows, tmp_path, monkeypatch
    ):
        few = rows.select(range(6))
        # A processor that has never run: processing sets padding state on its tokenizer, which must not change the key.
        collator = DepthVLMCollator(processor_for_arm(tiny_base, "add"))
        first = process_rows(few, collator, cache_dir=tmp_path)
        cache_file = first.cache_files[0]["filename"]

        def refuse(self, row):
            raise AssertionError("a cached row was processed again")

        monkeypatch.setattr(DepthVLMCollator, "process_row", refuse)
        again = process_rows(few, collator, cache_dir=tmp_path)
        assert again.cache_files[0]["filename"] == cache_file
        with pytest.raises(AssertionError, match="processed again"):
            process_rows(few, DepthVLMCollator(depth_models["concat"][1]), cache_dir=tmp_path)


def test_processes_share_the_work_with_the_same_result(depth_models, rows, tmp_path):
    collator = DepthVLMCollator(depth_models["add"][1])
    few = rows.select(range(8))
    alone = process_rows(few, collator, cache_dir=tmp_path / "alone")
    shared = process_rows(few, collator, num_proc=2, cache_dir=tmp_path / "shared")
    indices = list(range(8))
    assert_identical(collator(shared.__getitems__(indices)), collator(alone.__getitems__(indices)))


def test_bad_inputs_are_named(depth_models, rows, tmp_path):
    collator = DepthVLMCollator(depth_models["add"][1])
    processed = process_rows(rows.select(range(2)), collator, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="mixes processed rows"):
        collator([processed[0], rows[1]])
    with pytest.raises(ValueError, match=r"no \['images', 'messages'\] column"):
        process_rows(rows.select_columns(["question"]), collator)
    with pytest.raises(TypeError, match="needs a DepthVLMCollator"):
        process_rows(rows, lambda batch: batch)
