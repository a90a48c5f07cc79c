"""`--decoding bayes`: metric answers from the model's distribution over lengths (training.length_decoding).

The distribution is checked against one unpadded forward pass per length; the choice against hand-made
distributions whose best δ₁ window is known.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training import evaluate
from training.benchmarks import read_benchmark
from training.length_decoding import (
    bayes_answers,
    delta1_bayes_length,
    interval_midpoint,
    number_pieces,
)


def test_the_best_window_holds_the_most_probability_and_ties_go_to_the_shortest():
    # 1.0 and 1.1 are within 1.25x of each other: either holds 0.6, more than 5.0's 0.4; the shorter wins the tie.
    index, within = delta1_bayes_length(np.array([5.0, 1.1, 1.0]), np.array([0.4, 0.3, 0.3]))
    assert (index, within) == (2, pytest.approx(0.6))
    # The window is strict: 1.0 and exactly 1.25 are not within δ₁ of each other.
    index, within = delta1_bayes_length(np.array([1.0, 1.25, 3.0]), np.array([0.3, 0.3, 0.35]))
    assert (index, within) == (2, pytest.approx(0.35))
    # Zero lengths hold probability but can be neither answered nor counted.
    index, within = delta1_bayes_length(np.array([0.0, 2.0]), np.array([0.9, 0.1]))
    assert (index, within) == (1, pytest.approx(0.1))
    with pytest.raises(ValueError, match="No positive length"):
        delta1_bayes_length(np.array([0.0]), np.array([1.0]))


def test_bayes_answers_record_the_mass_and_the_expected_delta1_and_skip_empty_distributions():
    (answer, record), (none, no_record) = bayes_answers([{"1.00": 0.2, "1.10": 0.2, "4.00": 0.3, "0.00": 0.1}, {}])
    assert answer == "1.00 m" and (none, no_record) == (None, None)
    assert record["mass"] == pytest.approx(0.8) and record["expected_delta1"] == pytest.approx(0.4 / 0.8)
    assert record["top"][0] == ["4.00", 0.3]


def reference_probability(model, processor, sample, text: str) -> float:
    """p(text's tokens | the generation prompt), one unpadded conversation, the tokens found as what the prompt
    followed by `text` has beyond the prompt."""
    prompt = processor.apply_chat_template([evaluate.question_turn(sample, "")], add_generation_prompt=True)
    depth = {"depth": [[evaluate.load_depth(sample.depth)]], "intrinsics": [[sample.intrinsics]]}
    image = [[evaluate.load_image(sample.image)]]
    prompt_ids = processor(images=image, text=[prompt], return_tensors="pt", **depth)["input_ids"][0]
    inputs = processor(images=image, text=[prompt + text], return_tensors="pt", **depth)
    ids = inputs["input_ids"][0]
    assert torch.equal(ids[: len(prompt_ids)], prompt_ids)
    with torch.no_grad():
        log_probs = torch.log_softmax(model(**inputs).logits[0].float(), dim=-1)
    positions = torch.arange(len(prompt_ids), len(ids))
    return math.exp(float(log_probs[positions - 1, ids[positions]].sum()))


def test_each_lengths_probability_is_the_product_along_its_tokens(random_add_model, world_12):
    model, processor = random_add_model
    samples = [s for s in read_benchmark("world", world_12).samples if s.answer_value is not None][:2]
    for batch_size in (1, 7):  # 7: prefixes of different lengths and samples share a right-padded batch
        distributions, sources = evaluate.length_distributions_of(
            model, processor, samples, batch_size=batch_size, instruction="", progress=False, beam=3, min_probability=0
        )
        assert dict(sources) == {"dataset": len(samples)}
        for sample, distribution in zip(samples, distributions):
            assert 0 < sum(distribution.values()) <= 1 + 1e-6
            # Lengths with one tokenization only (the tiny tokenizer also has "25" and "75" tokens).
            single = [t for t in distribution if "25" not in t and "75" not in t]
            assert single
            for text in single[:3]:
                assert distribution[text] == pytest.approx(
                    reference_probability(model, processor, sample, text), rel=1e-3
                )
    pieces = set(number_pieces(processor.tokenizer).values())
    assert {"0", "9", "."} <= pieces and all(set(p) <= set("0123456789.") for p in pieces)


def test_bayes_decoding_answers_metric_questions_from_the_distribution_and_the_rest_as_rank(
    random_add_model, world_12
):
    model, processor = random_add_model
    samples = read_benchmark("world", world_12).samples
    ranked, ranked_sources, ranked_records = evaluate.answer_questions(
        model, processor, samples, decoding="rank", batch_size=8, max_new_tokens=4, instruction="", progress=False
    )
    options = {"beam": 2, "min_probability": 0.0}  # a random model's digits are each ~1/512: keep every prefix
    answers, sources, records = evaluate.answer_questions(
        model, processor, samples, "bayes", 8, 4, options, instruction="", progress=False
    )
    assert dict(sources) == dict(ranked_sources) == {"dataset": len(samples)}  # each question counted once
    metric = [i for i, s in enumerate(samples) if s.answer_value is not None]
    distributions, _ = evaluate.length_distributions_of(model, processor, [samples[i] for i in metric], batch_size=8,
                                            instruction="", progress=False, **options)  # fmt: skip
    for i, (answer, record) in zip(metric, bayes_answers(distributions)):
        assert answers[i] == answer and records[i]["length_distribution"] == record
        assert answer.endswith(" m") and 0 < record["expected_delta1"] <= 1
    for i in set(range(len(samples))) - set(metric):
        assert answers[i] == ranked[i] and records[i] == ranked_records[i]  # closed sets ranked, the rest greedy
    results = evaluate.build_results(samples, answers, decoding_records=records, decoding="bayes", max_new_tokens=4)
    assert all(r["parse_ok"] for r in results["predictions"] if r["kind"] == "metric")
    assert "metric questions with the length of highest expected δ₁" in evaluate.markdown_report(results)


def test_metric_questions_without_a_likely_length_are_generated_and_said_so(random_add_model, world_12):
    """At the default floor a random model's lengths are all too unlikely to expand: greedy answers them, the records
    say nothing was found, and each question's depth is counted once."""
    model, processor = random_add_model
    samples = [s for s in read_benchmark("world", world_12).samples if s.answer_value is not None]
    greedy, _ = evaluate.answer_samples(model, processor, samples, batch_size=8, max_new_tokens=4, instruction="",
                                        progress=False)  # fmt: skip
    answers, sources, records = evaluate.answer_questions(
        model, processor, samples, decoding="bayes", batch_size=8, max_new_tokens=4, instruction="", progress=False
    )
    assert answers == greedy and dict(sources) == {"dataset": len(samples)}
    assert records == [{"length_distribution": {"mass": 0.0}}] * len(samples)
    results = evaluate.build_results(samples, answers, decoding_records=records, decoding="bayes", max_new_tokens=4)
    assert (
        f"0 metric questions with the length of highest expected δ₁ under the model's distribution (mean probability covered 0.00; {len(samples)} without one, generated)"
        in evaluate.markdown_report(results)
    )


def test_interval_midpoints_are_the_middle_of_what_a_prefix_can_become():
    assert [interval_midpoint(p) for p in ("5.3", "5.", "12.0", "5", "53", "5.31")] == [
        "5.35",
        "5.50",
        "12.05",
        None,
        None,
        None,
    ]


def test_midpoint_remainder_keeps_the_cut_prefixes_mass_and_changes_nothing_the_beam_kept(random_add_model, world_12):
    """With "midpoint" every length "drop" found keeps its probability exactly; what is added sits at the midpoints
    of prefixes past the point, and the mass never exceeds 1."""
    model, processor = random_add_model
    samples = [s for s in read_benchmark("world", world_12).samples if s.answer_value is not None][:2]
    options = {"batch_size": 8, "instruction": "", "progress": False, "beam": 2, "min_probability": 0.0}
    dropped, _ = evaluate.length_distributions_of(model, processor, samples, **options)
    kept, _ = evaluate.length_distributions_of(model, processor, samples, remainder="midpoint", **options)
    for exact, with_midpoints in zip(dropped, kept):
        extra = {t: p for t, p in with_midpoints.items() if t not in exact}
        assert extra and all(t.endswith("5") or t.endswith(".50") for t in extra)
        for text, p in exact.items():
            assert with_midpoints[text] >= p - 1e-12  # a midpoint may land on a found length, never take from it
        assert sum(exact.values()) < sum(with_midpoints.values()) <= 1 + 1e-6
    with pytest.raises(ValueError, match="remainder must be one of"):
        evaluate.length_distributions_of(model, processor, samples, remainder="guess", **options)
