"""`--decoding rank`: closed-set questions answered by the candidate the model finds most likely.

The log-likelihoods are checked against a forward pass of one unpadded conversation, with the answer's tokens found
independently (the answered text minus the generation prompt); open questions must come out exactly as greedy.
"""

from __future__ import annotations

import json

import pytest
import torch

from training import evaluate
from training.benchmarks import SpatialSample, read_benchmark


@pytest.fixture(scope="module")
def add_folder(random_add_model, tmp_path_factory):
    model, processor = random_add_model
    folder = tmp_path_factory.mktemp("rank_add")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def closed_set_sample(kind: str) -> SpatialSample:
    if kind == "choice":
        return SpatialSample(
            "c",
            "Which is nearer, the red cone or the blue cube?",
            "closer",
            "red cone",
            choices=["red cone", "blue cube"],
        )
    return SpatialSample("o", "List them.", "depth_order", "a, b, c", choices=["a", "b", "c"])


def test_candidates_are_the_choices_or_every_order_and_none_for_open_answers():
    assert evaluate.answer_candidates(closed_set_sample("choice")) == ["red cone", "blue cube"]
    orders = evaluate.answer_candidates(closed_set_sample("order"))
    assert len(orders) == 6 and len(set(orders)) == 6 and orders[0] == "a, b, c" and "c, b, a" in orders
    assert evaluate.answer_candidates(SpatialSample("m", "How far?", "distance_to_camera", "2 m", 2.0)) is None
    assert evaluate.answer_candidates(SpatialSample("n", "How many?", "count", "3")) is None
    long_order = SpatialSample("l", "List.", "depth_order", "a, b, c, d, e", choices=list("abcde"))
    with pytest.raises(ValueError, match="120 candidate answers.*at most 4 items"):
        evaluate.answer_candidates(long_order)


def test_unknown_decoding_is_refused(random_add_model):
    model, processor = random_add_model
    with pytest.raises(ValueError, match="Unknown decoding 'beam'"):
        evaluate.answer_questions(model, processor, [closed_set_sample("choice")], decoding="beam")


def reference_log_likelihood(model, processor, sample, answer, with_depth=True) -> float:
    """One conversation, unpadded: log p(answer tokens | prompt), the answer's tokens being what the answered text has
    beyond the generation prompt's tokens."""
    turn = [evaluate.question_turn(sample, evaluate.ANSWER_INSTRUCTION)]
    prompt = processor.apply_chat_template(turn, add_generation_prompt=True)
    answered = prompt + evaluate.answer_turn_suffix(processor, sample, evaluate.ANSWER_INSTRUCTION, answer)
    kwargs = {}
    if with_depth:
        kwargs = {"depth": [[evaluate.load_depth(sample.depth)]], "intrinsics": [[sample.intrinsics]]}
    image = [[evaluate.load_image(sample.image)]]
    prompt_ids = processor(images=image, text=[prompt], return_tensors="pt", **kwargs)["input_ids"][0]
    inputs = processor(images=image, text=[answered], return_tensors="pt", **kwargs)
    ids = inputs["input_ids"][0]
    assert torch.equal(ids[: len(prompt_ids)], prompt_ids)  # the answer only appends tokens
    with torch.no_grad():
        log_probs = torch.log_softmax(model(**inputs).logits[0].float(), dim=-1)
    positions = torch.arange(len(prompt_ids), len(ids))
    return float(log_probs[positions - 1, ids[positions]].sum())


def test_log_likelihoods_match_one_unpadded_forward_whatever_the_batching(random_add_model, world_12):
    model, processor = random_add_model
    samples = [s for s in read_benchmark("world", world_12).samples if s.question_type in ("closer", "depth_order")]
    assert {s.question_type for s in samples} == {"closer", "depth_order"}
    candidates = [evaluate.answer_candidates(s) for s in samples]
    expected = [
        [reference_log_likelihood(model, processor, s, c) for c in options] for s, options in zip(samples, candidates)
    ]
    for batch_size in (1, 5):  # 5: candidates of different samples and lengths share a right-padded batch
        scores, sources = evaluate.rank_candidates(
            model, processor, samples, candidates, batch_size=batch_size, progress=False
        )
        assert dict(sources) == {"dataset": len(samples)}  # once per question, not once per candidate
        for got, want in zip(scores, expected):
            assert got == pytest.approx(want, abs=2e-4)
    # Depth reaches every candidate: without it the scores change.
    without, sources = evaluate.rank_candidates(
        model, processor, samples, candidates, batch_size=4, use_depth=False, progress=False
    )
    assert dict(sources) == {"none": len(samples)}
    assert without[0] == pytest.approx(
        [reference_log_likelihood(model, processor, samples[0], c, with_depth=False) for c in candidates[0]], abs=2e-4
    )
    assert max(abs(a - b) for a, b in zip(without[0], expected[0])) > 1e-3


def test_rank_decoding_picks_the_best_candidate_and_leaves_open_questions_greedy(random_add_model, world_12):
    model, processor = random_add_model
    samples = read_benchmark("world", world_12).samples
    processor.tokenizer.padding_side = "left"
    answers, sources, records = evaluate.answer_questions(
        model, processor, samples, decoding="rank", batch_size=4, max_new_tokens=4, progress=False
    )
    assert processor.tokenizer.padding_side == "left"  # ranking restores the side it found
    greedy, greedy_sources = evaluate.answer_samples(
        model, processor, samples, batch_size=4, max_new_tokens=4, progress=False
    )
    assert dict(sources) == dict(greedy_sources) == {"dataset": len(samples)}
    for sample, answer, record, generated in zip(samples, answers, records, greedy):
        options = evaluate.answer_candidates(sample)
        if options is None:
            assert record is None and answer == generated  # the same prompt, the same greedy answer
        else:
            ranking = record["candidate_log_likelihoods"]
            assert list(ranking) == options
            assert answer == max(options, key=ranking.get)
    results = evaluate.build_results(samples, answers, decoding_records=records, decoding="rank", max_new_tokens=4)
    # Choices (closer, left/right, above/below) and orders are ranked; metric, count, colour and shape are generated.
    ranked = [r for r in results["predictions"] if r["kind"] in ("choice", "order")]
    assert {r["question_type"] for r in ranked} == {"closer", "left_right", "above_below", "depth_order"}
    assert all(r["parse_ok"] for r in ranked)  # a candidate verbatim always reads as itself
    assert {len(r["candidate_log_likelihoods"]) for r in ranked} == {2, 6}
    assert all("candidate_log_likelihoods" not in r for r in results["predictions"] if r not in ranked)
    assert "answered by their most likely candidate (readable by construction)" in evaluate.markdown_report(results)


def test_evaluate_run_rank_on_the_command_line(add_folder, world_12, tmp_path):
    out = tmp_path / "ranked"
    evaluate.main(
        ["run", "--model", str(add_folder), "--data", str(world_12), "--out", str(out), "--decoding", "rank"]
        + ["--question-types", "closer", "depth_order", "--device", "cpu", "--no-progress", "--batch-size", "6"]
    )
    saved = json.loads((out / "results.json").read_text())
    assert saved["decoding"] == "rank" and saved["unparseable"]["count"] == 0
    assert all(record["prediction"] in record["candidate_log_likelihoods"] for record in saved["predictions"])
    assert "readable by construction" in (out / "results.md").read_text()
    with pytest.raises(SystemExit):
        evaluate.main(
            ["run", "--model", str(add_folder), "--data", str(world_12), "--out", str(out), "--decoding", "sampled"]
        )
