"""Evaluate a Qwen2.5-VL(-Depth) folder on spatial VQA: greedy answers, parsed, scored per question type.

    python -m training.evaluate run --model runs/sft-add/merged --data data/world_test --out runs/eval/add
    python -m training.evaluate run --model runs/sft-add/merged --benchmark cvbench3d --data-path downloads/CV-Bench \\
        --out runs/eval/add-cvbench --depth-estimator depth-anything/Depth-Anything-V2-Metric-Indoor-Small-hf
    python -m training.evaluate compare --results runs/eval/rgb/results.json runs/eval/add/results.json \\
        --labels rgb depth --out runs/eval/compare.png

`run` writes `results.json` (settings, every metric, every prediction with how it was read), `results.md` (the
table it also prints) and `results.png` (the per-type bar chart) to `--out`. `compare` draws several runs as grouped
bars and prints their table side by side.

Protocol (fixed, so runs are comparable):

- Prompt: the chat template with one image and the question as in the data; benchmarks with lettered options
  (CV-Bench, BLINK) list them under it as "(A) lamp" lines; then, on a new line, `ANSWER_INSTRUCTION`:
  "Answer with a number and a unit, or with one of the options."
- Decoding: greedy (`do_sample=False`, one beam, `repetition_penalty=1.0`, whatever the checkpoint's
  `generation_config` says), `--max-new-tokens` 16, batches of `--batch-size` left-padded prompts. `--decoding rank`
  answers the questions with a closed answer set (choices; orders of up to 4 items, as all their permutations) with
  the candidate the model gives the highest log-likelihood after the same prompt, as lm-evaluation-harness scores
  multiple choice (`acc`): it measures which answer the model prefers when it cannot name the objects itself, and is
  readable by construction, so it is reported beside greedy, never in place of its readable rates. Open questions
  are still generated.
- Depth: a model with depth (`processor.depth_fusion != "none"`) gets the depth in each row's image block (the
  world's exact metric depth); rows without depth get the processor's estimator's (`--depth-estimator` sets one), else
  they run RGB-only, which the results record (`depth_source`). `--no-depth` runs a depth model RGB-only (an
  ablation); `--depth-override shuffled` gives every question the depth of another scene, `constant` one
  uninformative map (`training.controls`): a model that reads depth must lose its gain under both.
  `--depth-corruption NAME` (`training.depth_corruptions`: noise, holes, quantisation, low resolution, scale error,
  relative depth, ...) corrupts each question's depth before the processor, seeded per question by
  `--corruption-seed` and its id, so every arm sees the same corrupted map of the same question.
  `--relative-depth-median M` (metres, or a world folder: the median of its per-image median depths) has the
  processor read relative depth (the `relative` corruption's maps, a relative estimator's) with its median at M, as a
  user of a relative estimator would set it; without it relative maps reach the model with their median at 1 m.
- The constant baseline: `python -m training.evaluate constant --train TRAIN_DIR --data TEST_DIR --out DIR` answers
  every question with one answer per type fitted on the training answers, scored exactly like a model.
- Reading answers: `training.answers` (lengths with units to metres; a bare number is metres; choices by exact
  match, option letter, or unique containment; orders as full lists). Unreadable answers count as wrong and are
  listed (`unparseable`), never dropped.

Metrics per question type and overall:

- metric questions (a true length in metres): δ₁ = share with max(pred/gt, gt/pred) < 1.25, and the within-2x
  success rate (Q-Spatial's δ = 2, max ratio <= 2), both over *all* such questions (unreadable, zero or negative
  predictions fail); AbsRel = mean |pred - gt| / gt over the *readable* ones only, reported with how many those are.
- other questions: accuracy (choice picked, order equal as a whole list, count equal, colour/shape named).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import matplotlib


matplotlib.use("Agg")  # headless
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from configuration_depth import RGB_ONLY_FUSION  # noqa: E402
from training import world  # noqa: E402
from training.answers import (  # noqa: E402
    OPTION_LETTERS,
    match_choice,
    match_order,
    normalize_answer,
    parse_count,
    parse_length,
)
from training.benchmarks import (  # noqa: E402
    BENCHMARK_ALIASES,
    BENCHMARK_READERS,
    BenchmarkData,
    SpatialSample,
    load_depth,
    load_image,
    read_benchmark,
)
from training.controls import (  # noqa: E402
    DELTA1_THRESHOLD,
    DEPTH_OVERRIDES,
    constant_predictions,
    fit_constant_answers,
    override_depth,
)
from training.data_files import load_rows  # noqa: E402
from training.dataset_files import write_atomically  # noqa: E402
from training.depth_corruptions import CORRUPTION_NAMES, CORRUPTIONS, SeededCorruption  # noqa: E402


ANSWER_INSTRUCTION = "Answer with a number and a unit, or with one of the options."
RESULTS_FORMAT = "qwen2_5_vl_depth-eval/1"
WITHIN_FACTOR = 2.0
MAX_EXAMPLES = 20
# Open questions of the world whose answer comes from a closed vocabulary: read like choices over that vocabulary,
# so "red or blue" is ambiguous rather than right.
OPEN_VOCABULARIES = {"color": list(world.COLORS), "shape": list(world.SHAPES)}


# ----------------------------------------------------------------------------------------------------------------
# Prompting and generation
# ----------------------------------------------------------------------------------------------------------------
def prompt_text(sample: SpatialSample, instruction: str = ANSWER_INSTRUCTION) -> str:
    """The user text of a sample: the question, its lettered options if the benchmark shows them, the instruction."""
    text = sample.question.strip()
    if sample.options_lettered:
        text += "".join(f"\n({OPTION_LETTERS[i]}) {choice}" for i, choice in enumerate(sample.choices))
    return f"{text}\n{instruction}" if instruction else text


def load_model_and_processor(model_path: str | Path, device: str | None = None, dtype: str = "auto"):
    """A model folder through the Auto classes with its remote code, in eval mode, and its processor (SpatialBot's
    for a folder of that arm, which shows depth to its RGB-only model as pictures)."""
    import torch
    from transformers import AutoModelForImageTextToText

    from training.spatialbot import load_trained_processor

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    placement = {"device_map": "auto"} if device == "auto" else {}
    model = AutoModelForImageTextToText.from_pretrained(
        model_path, trust_remote_code=True, dtype=torch_dtype, **placement
    )
    if device != "auto":
        model = model.to(device)
    return model.eval(), load_trained_processor(model_path)


@contextlib.contextmanager
def _without_estimator(processor, active: bool):
    """Temporarily no depth estimator on the processor (for --no-depth runs of depth models)."""
    active = active and hasattr(processor, "depth_estimator")  # RGB processors have none to switch off
    saved = getattr(processor, "depth_estimator", None)
    if active:
        processor.depth_estimator = None
    try:
        yield
    finally:
        if active:
            processor.depth_estimator = saved


def depth_inputs_of(processor, use_depth: bool) -> tuple[bool, object]:
    """Whether questions go to the processor with their depth (a depth model, unless `use_depth` is off), and the
    processor's estimator for rows without depth (None when depth is off)."""
    with_depth = use_depth and getattr(processor, "depth_fusion", RGB_ONLY_FUSION) != RGB_ONLY_FUSION
    return with_depth, getattr(processor, "depth_estimator", None) if with_depth else None


def question_turn(sample: SpatialSample, instruction: str) -> dict:
    """The user turn of a question: its image, then its text (`prompt_text`)."""
    return {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt_text(sample, instruction)}]}


def answer_turn_suffix(processor, sample: SpatialSample, instruction: str, answer: str) -> str:
    """What the chat template writes after the generation prompt for the assistant turn `answer` (the answer and its
    end-of-turn marker): the generation prompt followed by it is the answered conversation as training renders it."""
    conversation = [question_turn(sample, instruction)]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    answered = processor.apply_chat_template(
        [*conversation, {"role": "assistant", "content": [{"type": "text", "text": answer}]}],
        add_generation_prompt=False,
    )
    if not answered.startswith(prompt):
        raise ValueError(
            "The chat template does not render an answered conversation as its generation prompt followed by the "
            f"answer, so an answer cannot be scored after that prompt: the prompt ends {prompt[-40:]!r}, the "
            f"answered conversation there reads {answered[len(prompt) - 40 : len(prompt)]!r}."
        )
    return answered[len(prompt) :]


def batch_inputs(
    processor,
    batch: list[SpatialSample],
    instruction: str,
    with_depth: bool,
    estimator=None,
    depth_corruption: SeededCorruption | None = None,
    device=None,
    answer_suffixes: list[str] | None = None,
):
    """The processor's inputs for one batch of questions, as `answer_samples` asks them (one user turn: the image,
    then the question; the dataset's depth and each image's camera when `with_depth`), and where each row's depth came
    from ("dataset", "estimator" or "none", one per row).

    `answer_suffixes` (one per row, from `answer_turn_suffix`) close each conversation with an assistant turn, for
    `rank_candidates` to score; without them each text ends with the generation prompt.
    """
    texts = [processor.apply_chat_template([question_turn(s, instruction)], add_generation_prompt=True) for s in batch]
    if answer_suffixes is not None:
        texts = [text + suffix for text, suffix in zip(texts, answer_suffixes)]
    images = [[load_image(s.image)] for s in batch]
    processor_kwargs, sources = {}, ["none"] * len(batch)
    if with_depth:
        depths = [load_depth(s.depth) for s in batch]
        if depth_corruption is not None:
            depths = [None if d is None else depth_corruption(d, s.id) for d, s in zip(depths, batch)]
        if any(d is not None for d in depths):
            processor_kwargs["depth"] = [[d] for d in depths]  # None entries: the estimator's
            # Each depth map with its camera, as training's image blocks give it (a `points` model places its
            # pixels with it; without one it would assume its default field of view).
            if any(s.intrinsics is not None for s in batch):
                processor_kwargs["intrinsics"] = [[s.intrinsics] for s in batch]
            # Relative maps are said to be relative where the processor can read them so (at its median depth).
            if (
                depth_corruption is not None
                and depth_corruption.corruption.relative
                and getattr(processor, "relative_depth_median", None) is not None
            ):
                processor_kwargs["depth_is_relative"] = True
        if device is not None:
            processor_kwargs["depth_estimator_device"] = device
        sources = ["dataset" if depth is not None else "estimator" if estimator else "none" for depth in depths]
    return processor(images=images, text=texts, return_tensors="pt", padding=True, **processor_kwargs), sources


MAX_ORDER_ITEMS = 4  # 4! = 24 candidate orders per question; longer lists would need sampling, which we do not do
DECODINGS = {
    "greedy": "every question answered by greedy generation",
    "rank": "questions with a closed answer set (choices, orders of up to 4 items) answered by the candidate the model "
    "gives the highest log-likelihood; the others by greedy generation",
    "bayes": "as rank, and metric questions answered with the length of highest expected δ₁ under the model's own "
    "distribution over lengths (training.length_decoding); counts, colours and shapes by greedy generation",
}


def answer_candidates(sample: SpatialSample) -> list[str] | None:
    """The closed set of answers a question allows, written as the world writes its answers (a choice's text; an
    order as its items joined by ", "), for `--decoding rank`; None for questions with an open answer."""
    kind = answer_kind(sample)
    if kind == "choice":
        return list(sample.choices)
    if kind == "order":
        if len(sample.choices) > MAX_ORDER_ITEMS:
            raise ValueError(
                f"{sample.id}: an order of {len(sample.choices)} items has {math.factorial(len(sample.choices))} "
                f"candidate answers; --decoding rank ranks orders of at most {MAX_ORDER_ITEMS} items."
            )
        return [", ".join(order) for order in itertools.permutations(sample.choices)]
    return None


def rank_candidates(
    model,
    processor,
    samples: list[SpatialSample],
    candidates: list[list[str]],
    batch_size: int = 8,
    instruction: str = ANSWER_INSTRUCTION,
    use_depth: bool = True,
    progress: bool = True,
    depth_corruption: SeededCorruption | None = None,
) -> tuple[list[list[float]], Counter]:
    """The log-likelihood the model gives each candidate answer of each sample, and where each sample's depth came
    from.

    A candidate's log-likelihood is summed over its tokens and the end-of-turn marker, teacher-forced after exactly
    the prompt `answer_samples` generates from; each candidate is scored on its own copy of the sample (the same
    image, depth, corruption and camera). Sums are not length-normalised, as lm-evaluation-harness's `acc` is not.
    """
    import torch

    if len(candidates) != len(samples):
        raise ValueError(f"{len(samples)} samples but {len(candidates)} candidate lists.")
    if any(not options for options in candidates):
        raise ValueError("Every sample to rank needs at least one candidate answer.")
    with_depth, estimator = depth_inputs_of(processor, use_depth)
    tokenizer = processor.tokenizer
    rows = [
        (index, position, answer)
        for index, options in enumerate(candidates)
        for position, answer in enumerate(options)
    ]
    scores: list[list[float]] = [[] for _ in samples]
    depth_sources: Counter = Counter()
    saved_side, tokenizer.padding_side = tokenizer.padding_side, "right"  # each row's answer ends where its mask does
    try:
        with _without_estimator(processor, active=not with_depth), torch.inference_mode():
            for start in tqdm(range(0, len(rows), batch_size), desc="rank", unit="batch", disable=not progress):
                chunk = rows[start : start + batch_size]
                batch = [samples[index] for index, _, _ in chunk]
                suffixes = [
                    answer_turn_suffix(processor, sample, instruction, answer)
                    for sample, (_, _, answer) in zip(batch, chunk)
                ]
                inputs, sources = batch_inputs(
                    processor, batch, instruction, with_depth, estimator, depth_corruption, model.device, suffixes
                )
                # One count per sample (at its first candidate), not one per candidate.
                depth_sources.update(source for (_, position, _), source in zip(chunk, sources) if position == 0)
                inputs = inputs.to(model.device)
                log_probs = torch.log_softmax(model(**inputs).logits.float(), dim=-1)
                for row, (index, _, answer) in enumerate(chunk):
                    end = int(inputs["attention_mask"][row].sum())
                    suffix_ids = tokenizer(suffixes[row], add_special_tokens=False)["input_ids"]
                    answer_ids = inputs["input_ids"][row, end - len(suffix_ids) : end]
                    if answer_ids.tolist() != suffix_ids:
                        raise ValueError(
                            f"{samples[index].id}: the answer {answer!r} tokenizes differently after the prompt than on "
                            "its own, so its tokens cannot be told from the prompt's."
                        )
                    # The logits at position t predict token t + 1.
                    predicted = log_probs[row, end - len(suffix_ids) - 1 : end - 1]
                    scores[index].append(float(predicted.gather(1, answer_ids[:, None].to(predicted.device)).sum()))
    finally:
        tokenizer.padding_side = saved_side
    return scores, depth_sources


def answer_samples(
    model,
    processor,
    samples: list[SpatialSample],
    batch_size: int = 8,
    max_new_tokens: int = 16,
    instruction: str = ANSWER_INSTRUCTION,
    use_depth: bool = True,
    progress: bool = True,
    depth_corruption: SeededCorruption | None = None,
) -> tuple[list[str], Counter]:
    """Greedy answers to every sample, in order, and where each sample's depth came from.

    Depth sources: "dataset" (the sample's own depth), "estimator" (the processor estimated it), "none" (RGB only:
    an RGB model, `use_depth=False`, or a depth model without depth data or estimator). `depth_corruption` corrupts
    the dataset's depth of each sample (keyed by its id) before the processor; estimated depth is left as it is.
    """
    import torch
    from transformers import GenerationConfig

    with_depth, estimator = depth_inputs_of(processor, use_depth)
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"  # generation continues every prompt from its last token
    generation_config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        repetition_penalty=1.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=model.generation_config.eos_token_id,
    )
    answers: list[str] = []
    depth_sources: Counter = Counter()
    batches = range(0, len(samples), batch_size)
    with _without_estimator(processor, active=not with_depth), torch.inference_mode():
        for start in tqdm(batches, desc="evaluate", unit="batch", disable=not progress):
            batch = samples[start : start + batch_size]
            inputs, sources = batch_inputs(
                processor, batch, instruction, with_depth, estimator, depth_corruption, device=model.device
            )
            depth_sources.update(sources)
            inputs = inputs.to(model.device)
            generated = model.generate(**inputs, generation_config=generation_config)
            new_tokens = generated[:, inputs["input_ids"].shape[1] :]
            answers.extend(text.strip() for text in processor.batch_decode(new_tokens, skip_special_tokens=True))
    return answers, depth_sources


def length_distributions_of(
    model,
    processor,
    samples: list[SpatialSample],
    batch_size: int = 8,
    instruction: str = ANSWER_INSTRUCTION,
    use_depth: bool = True,
    progress: bool = True,
    depth_corruption: SeededCorruption | None = None,
    **options,
) -> tuple[list[dict[str, float]], Counter]:
    """`length_decoding.length_distributions` of each sample, asked exactly as `answer_samples` asks it (`options`:
    `beam`, `min_probability`, `remainder`)."""
    from training.length_decoding import length_distributions

    with_depth, estimator = depth_inputs_of(processor, use_depth)

    def inputs_of(batch):
        return batch_inputs(processor, batch, instruction, with_depth, estimator, depth_corruption, model.device)

    with _without_estimator(processor, active=not with_depth):
        return length_distributions(
            model, processor.tokenizer, samples, inputs_of, batch_size=batch_size, progress=progress, **options
        )


def answer_questions(
    model,
    processor,
    samples: list[SpatialSample],
    decoding: str = "greedy",
    batch_size: int = 8,
    max_new_tokens: int = 16,
    length_options: dict | None = None,
    **inputs_kwargs,
) -> tuple[list[str], Counter, list[dict | None]]:
    """Every sample's answer under `decoding` (`DECODINGS`), where each sample's depth came from, and, per sample, how
    a decoding other than greedy made the answer (None where it was generated), which the results keep:
    `{"candidate_log_likelihoods": {candidate: log p}}` for a ranked sample, `{"length_distribution": ...}` for a
    metric sample under `bayes` (`length_decoding.bayes_answers`).

    `inputs_kwargs`: `instruction`, `use_depth`, `progress`, `depth_corruption`, as `answer_samples` takes them;
    `length_options`: `beam`, `min_probability` of `length_decoding.length_distributions`.
    A ranked sample's answer is its best candidate verbatim (the first of equals), so it reads as that choice.
    """
    from training.length_decoding import bayes_answers

    if decoding not in DECODINGS:
        raise ValueError(f"Unknown decoding {decoding!r}; choose from {sorted(DECODINGS)}.")
    candidates = [answer_candidates(s) if decoding in ("rank", "bayes") else None for s in samples]
    ranked = [i for i, options in enumerate(candidates) if options]
    lengths = [i for i, s in enumerate(samples) if decoding == "bayes" and answer_kind(s) == "metric"]
    answers: list[str | None] = [None] * len(samples)
    records: list[dict | None] = [None] * len(samples)
    depth_sources: Counter = Counter()
    if ranked:
        scores, sources = rank_candidates(
            model,
            processor,
            [samples[i] for i in ranked],
            [candidates[i] for i in ranked],
            batch_size=batch_size,
            **inputs_kwargs,
        )
        depth_sources.update(sources)
        for i, sample_scores in zip(ranked, scores):
            answers[i] = candidates[i][int(np.argmax(sample_scores))]
            records[i] = {"candidate_log_likelihoods": dict(zip(candidates[i], sample_scores))}
    if lengths:
        distributions, sources = length_distributions_of(
            model,
            processor,
            [samples[i] for i in lengths],
            batch_size=batch_size,
            **(length_options or {}),
            **inputs_kwargs,
        )
        depth_sources.update(sources)
        for i, (answer, record) in zip(lengths, bayes_answers(distributions)):
            # Nothing positive found (the model writes no length first): generated as greedy below, and said so.
            answers[i] = answer
            records[i] = {"length_distribution": record if record is not None else {"mass": 0.0}}
    generated = [i for i, answer in enumerate(answers) if answer is None and records[i] is None]
    # Metric samples whose beam found no positive length: generated greedily, their depth counted once already.
    fallback = [i for i, answer in enumerate(answers) if answer is None and records[i] is not None]
    for group, counted in ((generated, True), (fallback, False)):
        if not group:
            continue
        texts, sources = answer_samples(
            model,
            processor,
            [samples[i] for i in group],
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            **inputs_kwargs,
        )
        if counted:
            depth_sources.update(sources)
        for i, text in zip(group, texts):
            answers[i] = text
    return answers, depth_sources, records


# ----------------------------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------------------------
def answer_kind(sample: SpatialSample) -> str:
    """How a sample is scored: "metric", "order", "choice", "count" or "open"."""
    if sample.answer_value is not None:
        return "metric"
    if sample.question_type == "depth_order":
        return "order"
    if sample.choices:
        return "choice"
    if sample.answer.strip().isdigit():
        return "count"
    return "open"


def score_sample(sample: SpatialSample, prediction: str, bare_number_unit: str | None = "m") -> dict:
    """One prediction scored: what was read (`parsed`), whether it could be (`parse_ok`, `parse_reason`), `correct`.

    Metric samples also get `ratio` (max(pred/gt, gt/pred); None unless pred > 0), `delta1`, `within_2x` and
    `abs_rel` (None when unreadable). `correct` is δ₁ for metric samples.
    """
    record = {**sample.describe(), "prediction": prediction, "kind": answer_kind(sample)}
    kind = record["kind"]
    if kind == "metric":
        parsed = parse_length(prediction, bare_number_unit)
        truth = float(sample.answer_value)
        ratio = max(parsed.metres / truth, truth / parsed.metres) if parsed.ok and parsed.metres > 0 else None
        record.update(
            parsed=parsed.metres,
            parse_ok=parsed.ok,
            parse_reason=parsed.reason,
            ratio=ratio,
            delta1=ratio is not None and ratio < DELTA1_THRESHOLD,
            within_2x=ratio is not None and ratio <= WITHIN_FACTOR,
            abs_rel=abs(parsed.metres - truth) / truth if parsed.ok else None,
        )
        record["correct"] = record["delta1"]
    elif kind == "order":
        gold = [normalize_answer(part) for part in sample.answer.split(",")]
        match = match_order(prediction, sample.choices)
        order = [sample.choices[i] for i in match.order] if match.ok else None
        record.update(parsed=order, parse_ok=match.ok, parse_reason=match.reason)
        record["correct"] = order is not None and [normalize_answer(c) for c in order] == gold
    elif kind in ("choice", "open") and (sample.choices or sample.question_type in OPEN_VOCABULARIES):
        choices = sample.choices or OPEN_VOCABULARIES[sample.question_type]
        match = match_choice(prediction, choices, lettered=sample.options_lettered)
        picked = choices[match.index] if match.ok else None
        record.update(parsed=picked, parse_ok=match.ok, parse_reason=match.reason)
        record["correct"] = picked is not None and normalize_answer(picked) == normalize_answer(sample.answer)
    elif kind == "count":
        count = parse_count(prediction)
        record.update(
            parsed=count, parse_ok=count is not None, parse_reason="number" if count is not None else "no_number"
        )
        record["correct"] = count == int(sample.answer)
    else:  # open answer outside any known vocabulary: the gold answer must appear as words
        gold, text = normalize_answer(sample.answer), normalize_answer(prediction)
        found = bool(gold) and f" {gold} " in f" {text} "
        record.update(
            parsed=sample.answer if found else None,
            parse_ok=bool(text),
            parse_reason="contains" if found else "no_match",
        )
        record["correct"] = found
    return record


def _mean(values: list) -> float | None:
    return float(np.mean(values)) if values else None


def summarize_group(records: list[dict]) -> dict:
    """Metrics of a group of scored records (None where the group has no question of that kind)."""
    metric = [r for r in records if r["kind"] == "metric"]
    readable = [r for r in metric if r["parse_ok"]]
    other = [r for r in records if r["kind"] != "metric"]
    return {
        "num_samples": len(records),
        "num_metric": len(metric),
        "num_parseable": len(readable),
        "delta1": _mean([float(r["delta1"]) for r in metric]),
        "abs_rel": _mean([r["abs_rel"] for r in readable]),
        "within_2x": _mean([float(r["within_2x"]) for r in metric]),
        "num_choice": len(other),
        "accuracy": _mean([float(r["correct"]) for r in other]),
        "num_unparseable": sum(not r["parse_ok"] for r in records),
    }


def question_type_order(types) -> list[str]:
    """The world's types in their canonical order, then any others alphabetically."""
    known = [t for t in world.QUESTION_TYPES if t in types]
    return known + sorted(t for t in set(types) if t not in world.QUESTION_TYPES)


def summarize(records: list[dict]) -> dict:
    """`{"overall": metrics, "per_type": {question_type: metrics}}`."""
    by_type: dict[str, list[dict]] = {}
    for record in records:
        by_type.setdefault(record["question_type"], []).append(record)
    return {
        "overall": summarize_group(records),
        "per_type": {t: summarize_group(by_type[t]) for t in question_type_order(by_type)},
    }


def unparseable_report(records: list[dict], max_examples: int = MAX_EXAMPLES) -> dict:
    """How many answers could not be read, per type, and the first few of them verbatim."""
    unread = [r for r in records if not r["parse_ok"]]
    return {
        "count": len(unread),
        "by_type": dict(Counter(r["question_type"] for r in unread)),
        "by_reason": dict(Counter(r["parse_reason"] for r in unread)),
        "examples": [
            {k: r[k] for k in ("id", "question_type", "answer", "prediction", "parse_reason")}
            for r in unread[:max_examples]
        ],
    }


def build_results(
    samples: list[SpatialSample],
    predictions: list[str],
    bare_number_unit: str | None = "m",
    decoding_records: list[dict | None] | None = None,
    **settings,
) -> dict:
    """The results document: `settings` (model, dataset, generation, ...), metrics, unparseable, predictions (each
    with how a decoding other than greedy made it: `decoding_records` from `answer_questions`)."""
    if len(samples) != len(predictions):
        raise ValueError(f"{len(samples)} samples but {len(predictions)} predictions.")
    records = [score_sample(s, p, bare_number_unit) for s, p in zip(samples, predictions)]
    if decoding_records is not None:
        if len(decoding_records) != len(records):
            raise ValueError(f"{len(records)} samples but {len(decoding_records)} decoding records.")
        for record, extra in zip(records, decoding_records):
            record.update(extra or {})
    return {
        "format": RESULTS_FORMAT,
        **settings,
        "bare_number_unit": bare_number_unit,
        "num_samples": len(records),
        "metrics": summarize(records),
        "unparseable": unparseable_report(records),
        "predictions": records,
    }


# ----------------------------------------------------------------------------------------------------------------
# Reports: markdown and plots
# ----------------------------------------------------------------------------------------------------------------
def format_metric(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


METRIC_NAMES = {"delta1": "δ₁", "accuracy": "accuracy"}


def markdown_table(results: dict) -> str:
    """Per-type metrics as a markdown table, overall last."""
    header = (
        "| question type | n | δ₁ ↑ | AbsRel ↓ (readable/metric) | within 2x ↑ | accuracy ↑ | unparseable |"
        "\n|---|---:|---:|---:|---:|---:|---:|"
    )
    rows = []
    groups = [*results["metrics"]["per_type"].items(), ("**overall**", results["metrics"]["overall"])]
    for name, m in groups:
        abs_rel = f"{format_metric(m['abs_rel'])} ({m['num_parseable']}/{m['num_metric']})" if m["num_metric"] else "–"
        rows.append(
            f"| {name} | {m['num_samples']} | {format_metric(m['delta1'])} | {abs_rel} | {format_metric(m['within_2x'])} "
            f"| {format_metric(m['accuracy'])} | {m['num_unparseable']} |"
        )
    return "\n".join([header, *rows])


def decoding_line(results: dict) -> str:
    """How the answers were made, in words (ranked answers are readable by construction, which the table must say)."""
    decoding = results.get("decoding", "greedy")
    generated = f"greedy, max {results.get('max_new_tokens')} new tokens"
    if decoding not in ("rank", "bayes"):
        return generated if decoding == "greedy" else decoding
    predictions = results.get("predictions", [])
    ranked = sum("candidate_log_likelihoods" in record for record in predictions)
    line = f"{ranked} questions with a closed answer set answered by their most likely candidate (readable by construction)"
    if decoding == "bayes":
        lengths = [r["length_distribution"] for r in predictions if "length_distribution" in r]
        found = [d for d in lengths if d.get("mass")]
        mass = float(np.mean([d["mass"] for d in found])) if found else 0.0
        line += (
            f", {len(found)} metric questions with the length of highest expected δ₁ under the model's distribution "
            f"(mean probability covered {mass:.2f}; {len(lengths) - len(found)} without one, generated)"
        )
    return f"{line}, the others {generated}"


def markdown_report(results: dict) -> str:
    dataset = results.get("dataset") or {}
    lines = [
        f"# Spatial VQA: {results.get('label') or results.get('model')}",
        "",
        f"- model: `{results.get('model')}` (depth_fusion `{results.get('depth_fusion')}`)",
        f"- data: {dataset.get('name')} (`{results.get('data_path')}`), {results['num_samples']} questions",
        f"- depth source: {results.get('depth_source')}",
        f'- prompt suffix: "{results.get("instruction")}"; {decoding_line(results)}',
        "",
        markdown_table(results),
        "",
        f"Unparseable answers: {results['unparseable']['count']} (counted as wrong).",
    ]
    for example in results["unparseable"]["examples"][:5]:
        lines.append(
            f"- {example['question_type']} `{example['id']}`: {example['prediction']!r} ({example['parse_reason']})"
        )
    return "\n".join(lines) + "\n"


def _headline_columns(results_list: list[dict]) -> list[tuple[str, str, Callable[[dict], float | None]]]:
    """(group, metric name, value getter) per bar group: each question type's headline metric, then overall δ₁ and
    overall accuracy (where any run has such questions)."""
    types = question_type_order({t for r in results_list for t in r["metrics"]["per_type"]})
    columns = []
    for question_type in types:
        present = next(
            r["metrics"]["per_type"][question_type] for r in results_list if question_type in r["metrics"]["per_type"]
        )
        metric = "delta1" if present["num_metric"] else "accuracy"
        columns.append(
            (
                question_type,
                METRIC_NAMES[metric],
                lambda r, t=question_type, k=metric: (r["metrics"]["per_type"].get(t) or {}).get(k),
            )
        )
    for metric in ("delta1", "accuracy"):
        if any(r["metrics"]["overall"][metric] is not None for r in results_list):
            columns.append(("overall", METRIC_NAMES[metric], lambda r, k=metric: r["metrics"]["overall"][k]))
    return columns


def plot_results(results_list: list[dict], labels: list[str], path: str | Path, title: str | None = None) -> Path:
    """Grouped bars: per question type, each run's headline metric (δ₁ for metric types, accuracy otherwise), then
    the overall δ₁ and accuracy."""
    if len(results_list) != len(labels):
        raise ValueError(f"{len(results_list)} results but {len(labels)} labels.")
    columns = _headline_columns(results_list)
    width = 0.8 / len(results_list)
    figure, axis = plt.subplots(figsize=(max(6.0, 0.45 * len(columns) * (1 + 0.35 * len(results_list)) + 1.5), 4.2))
    positions = np.arange(len(columns))
    for index, (results, label) in enumerate(zip(results_list, labels)):
        values = [getter(results) for _, _, getter in columns]
        values = [np.nan if value is None else value for value in values]
        bars = axis.bar(positions - 0.4 + width * (index + 0.5), values, width, label=label)
        axis.bar_label(bars, labels=["" if math.isnan(v) else f"{v:.2f}" for v in values], fontsize=6, padding=1)
    axis.set_xticks(
        positions, [f"{group}\n({metric})" for group, metric, _ in columns], rotation=45, ha="right", fontsize=7
    )
    axis.set_ylim(0, 1.1)
    axis.set_ylabel("δ₁ (metric questions) / accuracy")
    axis.set_title(title or "Spatial VQA per question type")
    if len(results_list) > 1:
        axis.legend(fontsize=8)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=130)
    plt.close(figure)
    return path


def comparison_table(results_list: list[dict], labels: list[str]) -> str:
    """Headline metric per question type (rows) and run (columns), overall δ₁ and accuracy last."""
    lines = ["| question type | metric | " + " | ".join(labels) + " |", "|---|---|" + "---:|" * len(labels)]
    for group, metric, getter in _headline_columns(results_list):
        lines.append(f"| {group} | {metric} | " + " | ".join(format_metric(getter(r)) for r in results_list) + " |")
    return "\n".join(lines)


def write_outputs(results: dict, out_dir: str | Path) -> dict[str, Path]:
    """results.json, results.md and results.png in `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "results.json", "markdown": out_dir / "results.md", "plot": out_dir / "results.png"}
    paths["markdown"].write_text(markdown_report(results), encoding="utf-8")
    plot_results([results], [results.get("label") or "model"], paths["plot"], title=results.get("label"))
    # Last and atomically: a results.json that exists is a finished evaluation (the jobs that run many skip it).
    write_atomically(paths["json"], json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    return paths


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------
def load_data(data: str | None, benchmark: str | None, data_path: str | None) -> tuple[str, str, BenchmarkData]:
    """(benchmark name, path, data) from `--data DIR_or_benchmark` or `--benchmark NAME --data-path PATH`."""
    names = set(BENCHMARK_READERS) | set(BENCHMARK_ALIASES)
    if data is not None and data.lower() in names:
        benchmark, data = data, None
    path = data_path or data
    if path is None:
        raise SystemExit("Give the data: --data DIR (world parquet), or --benchmark NAME --data-path PATH.")
    benchmark = benchmark or "world"
    return benchmark, str(path), read_benchmark(benchmark, path)


def run(args: argparse.Namespace) -> dict:
    benchmark, data_path, data, samples = samples_of(args)
    if args.depth_override:
        samples = override_depth(samples, args.depth_override, seed=args.depth_override_seed)
    corruption = (
        SeededCorruption(CORRUPTIONS[args.depth_corruption], args.corruption_seed) if args.depth_corruption else None
    )
    model, processor = load_model_and_processor(args.model, args.device, args.dtype)
    if args.depth_estimator:
        processor.depth_estimator = args.depth_estimator
    if args.fill_depth_holes is not None:
        set_hole_filling(processor, args.fill_depth_holes, args.model)
    if args.relative_depth_median is not None:
        set_relative_depth_median(processor, args.relative_depth_median, args.model)
    depth_fusion = getattr(processor, "depth_fusion", RGB_ONLY_FUSION)
    if corruption is not None and depth_fusion == RGB_ONLY_FUSION:
        raise SystemExit(
            f"--depth-corruption {args.depth_corruption}: {args.model} is an RGB-only model (depth_fusion "
            f"{RGB_ONLY_FUSION!r}), which reads no depth to corrupt."
        )
    predictions, depth_sources, decoding_records = answer_questions(
        model,
        processor,
        samples,
        decoding=args.decoding,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        length_options={"remainder": args.length_remainder},
        instruction=args.instruction,
        use_depth=not args.no_depth,
        progress=not args.no_progress,
        depth_corruption=corruption,
    )
    if depth_fusion != RGB_ONLY_FUSION and not args.no_depth and depth_sources.get("none"):
        print(
            f"warning: {depth_sources['none']} of {len(samples)} questions ran without depth on a depth model "
            "(no depth in the data and no --depth-estimator).",
            file=sys.stderr,
        )
    results = build_results(
        samples,
        predictions,
        bare_number_unit=None if args.bare_number_unit == "none" else args.bare_number_unit,
        decoding_records=decoding_records,
        label=args.label or Path(args.model).name,
        model=str(args.model),
        depth_fusion=depth_fusion,
        depth_estimator=getattr(processor, "depth_estimator", None),
        depth_source=dict(depth_sources),
        depth_override=args.depth_override,
        depth_corruption=corruption.describe() if corruption else None,
        fill_depth_holes=getattr(processor, "fill_depth_holes", None),  # None: a processor without the option
        relative_depth_median=getattr(processor, "relative_depth_median", None),
        benchmark=benchmark,
        data_path=data_path,
        dataset=data.info.as_dict(),
        skipped_rows=dict(data.skipped),
        instruction=args.instruction,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        decoding=args.decoding,
        length_remainder=args.length_remainder if args.decoding == "bayes" else None,
    )
    paths = write_outputs(results, args.out)
    print(markdown_table(results))
    print(f"\nunparseable: {results['unparseable']['count']} of {results['num_samples']} (counted as wrong)")
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return results


def set_hole_filling(processor, passes: int, model_path) -> None:
    """`--fill-depth-holes`: the processor fills depth holes with `passes` passes (`processing_depth.fill_depth_holes`),
    whatever the folder saved. A folder whose processor code predates the option is refused, never run unfilled."""
    import inspect

    if "fill_depth_holes" not in inspect.signature(type(processor).__init__).parameters:
        raise SystemExit(
            f"--fill-depth-holes: the processor of {model_path} ({type(processor).__name__}, from the folder's own "
            "code) has no fill_depth_holes; copy this checkout's processing_depth.py into the folder first."
        )
    if passes < 0:
        raise SystemExit(f"--fill-depth-holes must be >= 0; got {passes}.")
    processor.fill_depth_holes = passes


def set_relative_depth_median(processor, value: str, model_path) -> None:
    """`--relative-depth-median`: metres, or a world folder whose per-image median depths give it
    (`controls.median_depth`). A folder whose processor code predates the option is refused."""
    import inspect

    from training.controls import median_depth

    if "relative_depth_median" not in inspect.signature(type(processor).__init__).parameters:
        raise SystemExit(
            f"--relative-depth-median: the processor of {model_path} ({type(processor).__name__}, from the folder's "
            "own code) has no relative_depth_median; copy this checkout's processing_depth.py into the folder first."
        )
    try:
        metres = float(value)
    except ValueError:
        if not Path(value).exists():
            raise SystemExit(f"--relative-depth-median {value!r} is neither metres nor a world folder.") from None
        metres = median_depth(read_benchmark("world", value).samples)
        print(f"relative depth is read at {metres:.3f} m, the median of {value}'s per-image median depths")
    if not (math.isfinite(metres) and metres > 0):
        raise SystemExit(f"--relative-depth-median must be a positive number of metres; got {value!r}.")
    processor.relative_depth_median = metres


def samples_of(args: argparse.Namespace) -> tuple[str, str, BenchmarkData, list[SpatialSample]]:
    """The samples `--data`/`--benchmark` name, filtered by `--question-types` and `--limit`."""
    benchmark, data_path, data = load_data(args.data, args.benchmark, args.data_path)
    samples = data.samples
    if getattr(args, "question_types", None):
        samples = [sample for sample in samples if sample.question_type in args.question_types]
    samples = samples[: args.limit] if args.limit else samples
    if not samples:
        raise SystemExit(f"No samples read from {data_path} (skipped: {dict(data.skipped)}).")
    return benchmark, data_path, data, samples


def constant(args: argparse.Namespace) -> dict:
    """The constant baseline: one answer per question type, fitted on `--train`'s answers, on `--data`."""
    # Column access reads only those columns: no image or depth is decoded.
    constants = fit_constant_answers(load_rows(args.train), DELTA1_THRESHOLD)
    benchmark, data_path, data, samples = samples_of(args)
    results = build_results(
        samples,
        constant_predictions(constants, samples),
        label=args.label,
        model="constant",
        depth_fusion=RGB_ONLY_FUSION,
        constants={name: answer.describe() for name, answer in constants.items()},
        fitted_on=str(args.train),
        benchmark=benchmark,
        data_path=data_path,
        dataset=data.info.as_dict(),
        skipped_rows=dict(data.skipped),
        decoding="constant",
    )
    paths = write_outputs(results, args.out)
    print(markdown_table(results))
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return results


def compare(args: argparse.Namespace) -> str:
    results_list = [json.loads(Path(p).read_text(encoding="utf-8")) for p in args.results]
    labels = args.labels or [r.get("label") or Path(p).parent.name for r, p in zip(results_list, args.results)]
    plot_results(results_list, labels, args.out, title=args.title)
    table = comparison_table(results_list, labels)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n", encoding="utf-8")
    print(table)
    print(f"\nwrote {args.out}")
    return table


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run_parser = commands.add_parser("run", help="answer, score and report one model on one set")
    run_parser.add_argument("--model", required=True, help="model folder (or hub id) with its processor")
    run_parser.add_argument(
        "--data", help=f"world parquet folder/file, or a benchmark name ({', '.join(BENCHMARK_READERS)})"
    )
    run_parser.add_argument("--benchmark", help="benchmark name; its files are --data-path")
    run_parser.add_argument("--data-path", help="local files of --benchmark")
    run_parser.add_argument("--out", required=True, type=Path, help="folder for results.json/.md/.png")
    run_parser.add_argument("--batch-size", type=int, default=8)
    run_parser.add_argument("--max-new-tokens", type=int, default=16)
    run_parser.add_argument(
        "--decoding",
        choices=sorted(DECODINGS),
        default="greedy",
        help="; ".join(f"{name}: {text}" for name, text in DECODINGS.items()),
    )
    run_parser.add_argument(
        "--length-remainder",
        choices=["drop", "midpoint"],
        default="drop",
        help="--decoding bayes: a number prefix the beam cuts is dropped, or kept at the middle of the lengths it "
        "could still become (for tokenizers of single digits; training.length_decoding)",
    )
    run_parser.add_argument("--limit", type=int, default=None, help="only the first N questions")
    run_parser.add_argument("--question-types", nargs="+", default=None, help="only questions of these types")
    run_parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, or auto (device_map)")
    run_parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    run_parser.add_argument("--depth-estimator", default=None, help="DepthAnything id/folder for rows without depth")
    run_parser.add_argument(
        "--fill-depth-holes",
        type=int,
        default=None,
        metavar="PASSES",
        help="fill depth holes from their neighbours, PASSES rings deep, before the model sees them (default: as the "
        "folder's processor saved it; see processing_depth.fill_depth_holes)",
    )
    run_parser.add_argument(
        "--relative-depth-median",
        default=None,
        metavar="METRES_OR_FOLDER",
        help="read relative depth (the `relative` corruption's, a relative estimator's) with its median at this many "
        "metres, or at the median of a world folder's per-image median depths (the training set's); see "
        "processing_depth's relative_depth_median",
    )
    # One change to the depth at a time: removed, replaced by a control, or corrupted.
    depth_changes = run_parser.add_mutually_exclusive_group()
    depth_changes.add_argument("--no-depth", action="store_true", help="run a depth model RGB-only (ablation)")
    depth_changes.add_argument(
        "--depth-override",
        choices=DEPTH_OVERRIDES,
        default=None,
        help="a depth control: each question gets another scene's depth (shuffled) or one uninformative map",
    )
    run_parser.add_argument("--depth-override-seed", type=int, default=0, help="seed of the shuffled pairing")
    depth_changes.add_argument(
        "--depth-corruption",
        choices=CORRUPTION_NAMES,
        default=None,
        help="corrupt the dataset's depth before the processor: "
        # argparse formats help with %: a description's "20% of pixels" must reach it as "%%".
        + "; ".join(f"{name}: {row.description}" for name, row in CORRUPTIONS.items()).replace("%", "%%"),
    )
    run_parser.add_argument(
        "--corruption-seed", type=int, default=0, help="base seed of --depth-corruption (per question: seed and id)"
    )
    run_parser.add_argument("--instruction", default=ANSWER_INSTRUCTION, help="prompt suffix (default: the fixed one)")
    run_parser.add_argument("--bare-number-unit", default="m", help="unit of numbers given without one, or 'none'")
    run_parser.add_argument("--label", default=None, help="name of this run in tables and plots")
    run_parser.add_argument("--no-progress", action="store_true")
    run_parser.set_defaults(handler=run)

    constant_parser = commands.add_parser("constant", help="the constant baseline fitted on training answers")
    constant_parser.add_argument("--train", required=True, help="world parquet folder the constants are fitted on")
    constant_parser.add_argument("--data", required=True, help="world parquet folder (or benchmark) to score on")
    constant_parser.add_argument("--benchmark", help="benchmark name; its files are --data-path")
    constant_parser.add_argument("--data-path", help="local files of --benchmark")
    constant_parser.add_argument("--out", required=True, type=Path, help="folder for results.json/.md/.png")
    constant_parser.add_argument("--limit", type=int, default=None, help="only the first N questions")
    constant_parser.add_argument("--question-types", nargs="+", default=None, help="only questions of these types")
    constant_parser.add_argument("--label", default="constant", help="name of this run in tables and plots")
    constant_parser.set_defaults(handler=constant)

    compare_parser = commands.add_parser("compare", help="grouped bar chart and table of several results.json")
    compare_parser.add_argument("--results", nargs="+", required=True)
    compare_parser.add_argument("--labels", nargs="+", default=None)
    compare_parser.add_argument("--out", required=True, type=Path, help="PNG path")
    compare_parser.add_argument("--markdown", default=None, help="also write the table here")
    compare_parser.add_argument("--title", default=None)
    compare_parser.set_defaults(handler=compare)
    return parser


def main(argv: list[str] | None = None):
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    main()
