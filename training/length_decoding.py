"""A metric answer read from the model's whole distribution over lengths, not from greedy digits (`--decoding bayes`).

Greedy decoding writes a length token by token, each the most likely given the ones before it. That is the mode of
each digit, not of the length: on object widths (median 0.77 m, 0.35–1.24 m) issue 21's models answer "0.36 m" to
nearly every question, because "0" is the likeliest integer part and "3" the likeliest first decimal after it. A
δ₁ reader wants instead the length with the highest *expected δ₁* under the model's own beliefs: the Bayes answer for
that metric, as in regression-aware inference (Lukasik et al., 2024, "Regression-aware inference with LLMs").

- `length_distributions` finds the model's distribution over lengths written as the world writes them (`"%.2f"`
  metres: digits, ".", two decimals). It expands the likeliest number prefixes one token at a time, each
  teacher-forced after the same prompt greedy decoding starts from: a beam of `beam` prefixes per question, prefixes
  below `min_probability` dropped. A length written by two tokenizations counts both.
- `delta1_bayes_length` picks, among the lengths found, the one whose ±25% window (δ₁'s) holds the most probability.

Both are exact for what they cover; `mass` says how much of the model's probability the beam covered.
"""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np
from tqdm import tqdm


# A prefix of a length as the world writes it ("%.2f": up to 3 integer digits), and a complete one.
LENGTH_PREFIX = re.compile(r"\d{1,3}(\.\d{0,2})?")
COMPLETE_LENGTH = re.compile(r"\d{1,3}\.\d{2}")
DEFAULT_BEAM = 8
DEFAULT_MIN_PROBABILITY = 1e-3
MAX_LENGTH_TOKENS = 6  # "123.45" in single characters
TOP_RECORDED = 5


REMAINDERS = ("drop", "midpoint")


def interval_midpoint(prefix: str) -> str | None:
    """The middle of the lengths a prefix past the point can still become, written like a length: "5.3" -> "5.35"
    (5.30–5.39), "5." -> "5.50" (5.00–5.99); None before the point ("5" may still become "53")."""
    whole, point, decimals = prefix.partition(".")
    if not point or len(decimals) >= 2:
        return None
    return f"{whole}.{decimals}5" if decimals else f"{whole}.50"


def number_pieces(tokenizer) -> dict[int, str]:
    """Every token whose text is only digits and ".", the pieces a written length is made of, with that text."""
    pieces = {}
    for token, index in tokenizer.get_vocab().items():
        text = tokenizer.convert_tokens_to_string([token])
        if text and all(character.isdigit() or character == "." for character in text):
            pieces[index] = text
    if not any(text.isdigit() for text in pieces.values()) or "." not in "".join(pieces.values()):
        raise ValueError("This tokenizer has no digit or '.' tokens to write a length with.")
    return pieces


def delta1_bayes_length(lengths: np.ndarray, probabilities: np.ndarray, threshold: float = 1.25) -> tuple[int, float]:
    """The index of the length c maximising sum_v p(v) [max(c/v, v/c) < threshold] over the positive `lengths`, and
    that probability (ties: the shortest length). Raises when no length is positive."""
    lengths, probabilities = np.asarray(lengths, dtype=np.float64), np.asarray(probabilities, dtype=np.float64)
    positive = np.flatnonzero(lengths > 0)
    if len(positive) == 0:
        raise ValueError("No positive length to answer with.")
    order = positive[np.argsort(lengths[positive], kind="stable")]
    logs = np.log(lengths[order])
    cumulative = np.concatenate([[0.0], np.cumsum(probabilities[order])])
    width = math.log(threshold)
    # |log c - log v| < log(threshold), strictly on both sides (a ratio of exactly 1.25 is not within δ₁).
    low = np.searchsorted(logs, logs - width, side="right")
    high = np.searchsorted(logs, logs + width, side="left")
    within = cumulative[high] - cumulative[low]
    best = int(np.argmax(within))
    return int(order[best]), float(within[best])


def extended_inputs(inputs, suffixes: list[list[int]], pad_token_id: int):
    """Right-padded processor inputs with each row's `suffixes` token ids appended after its last real token.

    Sequence-aligned tensors (input_ids, attention_mask, mm_token_type_ids, ...: those shaped like input_ids) grow;
    the rest (pixels, depth, grids) stay, since the appended tokens are text.
    """
    import torch

    input_ids, mask = inputs["input_ids"], inputs["attention_mask"]
    lengths = mask.sum(dim=1).tolist()
    width = max(length + len(suffix) for length, suffix in zip(lengths, suffixes))
    sequence_keys = [k for k, v in inputs.items() if torch.is_tensor(v) and v.shape[:2] == input_ids.shape]
    grown = {}
    for key in sequence_keys:
        value = inputs[key]
        fill = pad_token_id if key == "input_ids" else 0
        out = torch.full((value.shape[0], width), fill, dtype=value.dtype)
        for row, (length, suffix) in enumerate(zip(lengths, suffixes)):
            out[row, :length] = value[row, :length]
            if key == "input_ids":
                out[row, length : length + len(suffix)] = torch.tensor(suffix, dtype=value.dtype)
            elif key == "attention_mask":
                out[row, length : length + len(suffix)] = 1
        grown[key] = out
    return {**dict(inputs), **grown}, [length + len(suffix) for length, suffix in zip(lengths, suffixes)]


def length_distributions(
    model,
    tokenizer,
    samples: list,
    inputs_of,
    batch_size: int = 8,
    progress: bool = True,
    beam: int = DEFAULT_BEAM,
    min_probability: float = DEFAULT_MIN_PROBABILITY,
    remainder: str = "drop",
) -> tuple[list[dict[str, float]], Counter]:
    """Per sample, the probability of each complete length the beam reached (`{"5.31": p, ...}`, unnormalised: the
    sum is the mass covered), and where each sample's depth came from.

    `inputs_of(batch)` gives the right-padded processor inputs of a batch of samples, each ending with the generation
    prompt, and each row's depth source (`training.evaluate.length_distributions_of` asks as evaluation does).
    `remainder`: what becomes of a prefix the beam cuts. "drop" (exact for what it keeps): its mass is lost.
    "midpoint": a prefix past the point ("5.3", "5.") keeps its whole mass at the middle of the lengths it could still
    become ("5.35", "5.50"), which matters for a tokenizer of single digits: its beam has one more level to fill
    (5 . 3 1), and at 8 prefixes it reaches only about 0.14 of a distance's probability."""
    if remainder not in REMAINDERS:
        raise ValueError(f"remainder must be one of {REMAINDERS}; got {remainder!r}.")
    import torch

    if beam < 1 or not 0 <= min_probability < 1:
        raise ValueError(f"beam must be >= 1 and min_probability in [0, 1); got {beam}, {min_probability}.")
    pieces = number_pieces(tokenizer)
    piece_ids = torch.tensor(list(pieces))
    piece_texts = list(pieces.values())
    log_floor = math.log(min_probability) if min_probability > 0 else -math.inf  # prefixes worth a forward pass
    found: list[Counter] = [Counter() for _ in samples]
    continuations: dict[str, list[tuple[int, str, bool]]] = {}  # prefix text -> the pieces that keep it a length
    depth_sources: Counter = Counter()
    # (sample index, prefix token ids, prefix text, log-probability): every question starts from the empty answer.
    active = [(index, [], "", 0.0) for index in range(len(samples))]
    saved_side, tokenizer.padding_side = tokenizer.padding_side, "right"
    bar = tqdm(desc="lengths", unit="forward", disable=not progress)
    try:
        with torch.inference_mode():
            for level in range(MAX_LENGTH_TOKENS):
                if not active:
                    break
                children: dict[int, list] = {}
                for start in range(0, len(active), batch_size):
                    chunk = active[start : start + batch_size]
                    batch = [samples[index] for index, *_ in chunk]
                    inputs, sources = inputs_of(batch)
                    if level == 0:
                        depth_sources.update(sources)  # the first level has one row per sample
                    inputs, ends = extended_inputs(inputs, [prefix for _, prefix, *_ in chunk], tokenizer.pad_token_id)
                    inputs = {k: v.to(model.device) if torch.is_tensor(v) else v for k, v in inputs.items()}
                    logits = model(**inputs).logits
                    last = logits[torch.arange(len(chunk)), torch.tensor(ends) - 1].float()
                    log_probs = torch.log_softmax(last, dim=-1)[:, piece_ids.to(last.device)].cpu().numpy()
                    bar.update(len(chunk))
                    for row, (index, prefix, text, log_p) in enumerate(chunk):
                        if text not in continuations:
                            continuations[text] = [
                                (column, text + piece, bool(COMPLETE_LENGTH.fullmatch(text + piece)))
                                for column, piece in enumerate(piece_texts)
                                if LENGTH_PREFIX.fullmatch(text + piece)
                            ]
                        for column, child_text, complete in continuations[text]:
                            child_log_p = log_p + float(log_probs[row, column])
                            if complete:
                                # Recorded whatever its probability: it costs no forward pass.
                                found[index][child_text] += math.exp(child_log_p)
                            elif child_log_p >= log_floor:
                                child = (index, [*prefix, int(piece_ids[column])], child_text, child_log_p)
                                children.setdefault(index, []).append(child)
                active = []
                for index in sorted(children):
                    ranked = sorted(children[index], key=lambda c: -c[3])
                    active.extend(ranked[:beam])
                    if remainder == "midpoint":
                        for _, _, text, log_p in ranked[beam:]:
                            midpoint = interval_midpoint(text)
                            if midpoint is not None:
                                found[index][midpoint] += math.exp(log_p)
    finally:
        bar.close()
        tokenizer.padding_side = saved_side
    return [dict(counter) for counter in found], depth_sources


def bayes_answers(distributions: list[dict[str, float]]) -> list[tuple[str | None, dict | None]]:
    """Per distribution, the answer text ("5.31 m") of the length with the highest expected δ₁ and a record of it
    (`mass` covered, `expected_delta1` within the covered mass, the `top` lengths); (None, None) where nothing
    positive was found."""
    answers = []
    for distribution in distributions:
        texts = [text for text in distribution if float(text) > 0]
        if not texts:
            answers.append((None, None))
            continue
        probabilities = np.array([distribution[text] for text in texts])
        best, within = delta1_bayes_length(np.array([float(text) for text in texts]), probabilities)
        mass = float(sum(distribution.values()))
        top = sorted(distribution.items(), key=lambda item: -item[1])[:TOP_RECORDED]
        answers.append(
            (
                f"{texts[best]} m",
                {"mass": mass, "expected_delta1": within / mass, "top": [[text, p] for text, p in top]},
            )
        )
    return answers
