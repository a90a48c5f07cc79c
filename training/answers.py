"""Reading free-text model answers: lengths with units (converted to metres), multiple-choice picks, orders, counts.

Every reader returns what it read *and why*, so an evaluation can count and show the answers it could not read
instead of silently dropping them. The rules, decided once and documented here (tests/test_evaluate.py pins them):

Lengths (`parse_length`)
    - Units: m, cm, mm, km, ft, in, yd, mi and their words ("meter(s)", "metre(s)", "centimetre(s)", "foot",
      "feet", "inch(es)", "yard(s)", "mile(s)", ...), the symbols `'` (feet) and `"` (inches), with or without a
      space or hyphen ("1.2m", "2 m", "1.5-meter").
    - "in" is read as inches only where it cannot be the preposition: at the end of the answer or before
      punctuation ("4 in."), or right after a feet quantity ("3 ft 4 in tall"). "2 in the image" is the bare number 2.
    - Compound lengths add up when their units shrink ("3 ft 4 in", "5'2\\"", "1 m 20 cm" = 1.2 m).
    - Ranges become their arithmetic mean, as Q-Spatial's reference evaluator averages the numbers it finds:
      "2-3 m", "2 to 3 meters", "between 2 and 3 m" = 2.5 m.
    - Decimal comma: a comma followed by exactly three digits groups thousands ("1,500 mm" = 1.5 m); any other comma
      between digits is a decimal comma ("2,5 m" = 2.5 m). Fractions read as such ("3/4 in").
    - Number words zero..ninety-nine, "a"/"an" and "half a" are read when a unit follows ("two meters",
      "twenty-five feet", "half a metre", "a foot").
    - Several lengths: the first one with a unit is taken ("about 2 m, maybe 3 m" = 2 m) and `candidates` says how
      many there were. Numbers without a unit are ignored when any length has one.
    - A bare number (no unit anywhere) is read in `bare_number_unit`, metres by default, because the evaluation
      prompt and the world's questions ask for metres; only when it is the only number in the answer. Pass
      `bare_number_unit=None` to count bare numbers as unreadable.
    - Negative and zero lengths are read as such; metrics count them as failures, since no ratio exists.

Choices (`match_choice`, `match_order`)
    Text is normalised like SQuAD answers: lower case, punctuation to spaces, articles (a, an, the) dropped (kept
    when options are lettered, where "A" may name one). A prediction picks a choice by exact match, then (lettered
    benchmarks only) by option letter "(B)" / "B" / "Answer: B", then by containing exactly one choice as whole
    words, then by starting with one unless it hedges with "or" ("red or blue"). Anything else is "ambiguous" or
    "no_match" and counts as wrong. An order answer must mention every choice; its order is the order of first
    mention, compared as a full list.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


METRES_PER_UNIT = {
    "km": 1000.0,
    "m": 1.0,
    "cm": 0.01,
    "mm": 0.001,
    "mi": 1609.344,
    "yd": 0.9144,
    "ft": 0.3048,
    "in": 0.0254,
}
UNIT_SPELLINGS = {
    "km": ("km", "kms", "kilometer", "kilometers", "kilometre", "kilometres"),
    "m": ("m", "meter", "meters", "metre", "metres", "mtr", "mtrs"),
    "cm": ("cm", "cms", "centimeter", "centimeters", "centimetre", "centimetres"),
    "mm": ("mm", "millimeter", "millimeters", "millimetre", "millimetres"),
    "mi": ("mi", "mile", "miles"),
    "yd": ("yd", "yds", "yard", "yards"),
    "ft": ("ft", "foot", "feet", "'"),
    "in": ("in", "inch", "inches", '"', "''"),
}
UNIT_BY_SPELLING = {spelling: unit for unit, spellings in UNIT_SPELLINGS.items() for spelling in spellings}
# Units spelled out as words: only these may follow "a", "an" or a number word ("a foot", not "a m").
UNIT_WORDS = sorted((s for s in UNIT_BY_SPELLING if len(s) > 3 or s == "foot"), key=len, reverse=True)

_SMALL_NUMBER_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen"
).split()
_TENS_WORDS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
NUMBER_WORDS = {word: value for value, word in enumerate(_SMALL_NUMBER_WORDS)}
NUMBER_WORDS.update({word: 20 + 10 * i for i, word in enumerate(_TENS_WORDS)})

# A number: a fraction, digits with thousands commas, digits with a decimal point or comma, or a leading-dot decimal.
_NUMBER = r"\d+\s*/\s*\d+|\d{1,3}(?:,\d{3})+(?!\d)(?:\.\d+)?|\d+(?:[.,]\d+)?|\.\d+"
# Longest spellings first, so "inches" wins over "in" and "''" over "'". Word units must end at a word boundary
# ("2 min" is not "2 m" + "in"); symbols need no boundary.
_UNIT = "|".join(
    re.escape(s) + ("" if s in ("'", '"', "''") else r"(?![a-z0-9²³])")
    for s in sorted(UNIT_BY_SPELLING, key=len, reverse=True)
)
_QUANTITY = re.compile(rf"(?<![a-z\d.])(?P<number>{_NUMBER})(?:\s*-?\s*(?P<unit>{_UNIT}))?")
_WORD_NUMBER = re.compile(
    rf"\b(?:(?P<tens>{'|'.join(_TENS_WORDS)})(?:[\s-](?P<ones>{'|'.join(_SMALL_NUMBER_WORDS[1:10])}))?"
    rf"|(?P<small>{'|'.join(_SMALL_NUMBER_WORDS)}))(?=[\s-]+(?:{'|'.join(UNIT_WORDS)})\b)"
)
_ARTICLE_UNIT = re.compile(rf"\b(?P<half>half\s+)?(?:a|an)\s+(?=(?:{'|'.join(UNIT_WORDS)})\b)")
_RANGE_GAP = re.compile(r"^\s*(?:-|to|~)\s*$")
_COMPOUND_GAP = re.compile(r"^[\s,]*(?:and\s*)?$")


@dataclass(frozen=True)
class ParsedLength:
    """A length read from an answer: `metres` (None when unreadable), how it was read, and from which text.

    `reason` is "unit", "compound", "range" or "bare_number" when read, else "no_number", "several_bare_numbers" or
    "bare_number_not_allowed". `candidates` counts the lengths the answer held (more than 1: the first was taken).
    """

    metres: float | None
    reason: str
    span: str = ""
    candidates: int = 0

    @property
    def ok(self) -> bool:
        return self.metres is not None


@dataclass
class _Quantity:
    value: float
    unit: str | None
    start: int
    end: int
    kind: str = "single"  # or "range", "compound"


def unit_to_metres(unit: str) -> float:
    """Metres per `unit` ("m", "centimeters", "feet", ...); a ValueError names unknown units."""
    key = unit.strip().lower().rstrip(".")
    if key not in UNIT_BY_SPELLING:
        raise ValueError(f"Unknown length unit {unit!r}: expected one of {sorted(UNIT_BY_SPELLING)}.")
    return METRES_PER_UNIT[UNIT_BY_SPELLING[key]]


def _normalise_text(text: str) -> str:
    text = text.lower()
    for old, new in (("\u2019", "'"), ("\u2032", "'"), ("\u201c", '"'), ("\u201d", '"'), ("\u2033", '"')):
        text = text.replace(old, new)
    for dash in ("\u2012", "\u2013", "\u2014", "\u2212"):
        text = text.replace(dash, "-")
    text = text.replace("\u00a0", " ")

    def number_word(match: re.Match) -> str:
        if match["small"]:
            return str(NUMBER_WORDS[match["small"]])
        return str(NUMBER_WORDS[match["tens"]] + (NUMBER_WORDS[match["ones"]] if match["ones"] else 0))

    text = _WORD_NUMBER.sub(number_word, text)
    return _ARTICLE_UNIT.sub(lambda match: "0.5 " if match["half"] else "1 ", text)


def _number_value(number: str) -> float:
    if "/" in number:
        numerator, denominator = (float(part) for part in number.split("/"))
        return numerator / denominator if denominator else float("nan")
    if re.fullmatch(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?", number):
        return float(number.replace(",", ""))  # thousands separators
    return float(number.replace(",", "."))  # decimal point or decimal comma


def _quantities(text: str) -> list[_Quantity]:
    """Every number in the (normalised) text with its unit, inch/preposition ambiguity resolved, sign applied."""
    found: list[_Quantity] = []
    for match in _QUANTITY.finditer(text):
        unit_text = match["unit"]
        end = match.end()
        if unit_text is None and re.match(r"[a-z]", text[end : end + 1]):
            continue  # "2nd", "3d": not a quantity
        unit = UNIT_BY_SPELLING[unit_text] if unit_text else None
        if unit_text == "in":
            after_feet = (
                bool(found) and found[-1].unit == "ft" and _COMPOUND_GAP.match(text[found[-1].end : match.start()])
            )
            at_answer_end = re.match(r"\s*(?:$|[^\w\s])", text[end:])
            if not (after_feet or at_answer_end):
                unit, end = None, match.end("number")  # "2 in the image": the preposition, a bare number
        value = _number_value(match["number"].replace(" ", ""))
        start = match.start()
        sign_position = start - 1
        if (
            sign_position >= 0
            and text[sign_position] == "-"
            and (sign_position == 0 or text[sign_position - 1] in " (:=\t\n")
        ):
            value, start = -value, sign_position
        found.append(_Quantity(value, unit, start, end))
    return found


def _merge_ranges_and_compounds(text: str, quantities: list[_Quantity]) -> list[_Quantity]:
    merged: list[_Quantity] = []
    for quantity in quantities:
        if merged:
            previous = merged[-1]
            gap = text[previous.end : quantity.start]
            is_between = gap.strip() == "and" and text[: previous.start].rstrip().endswith("between")
            same_unit = previous.unit is None or previous.unit == quantity.unit
            if previous.kind == "single" and same_unit and (_RANGE_GAP.match(gap) or is_between):
                unit = quantity.unit
                merged[-1] = _Quantity(
                    (previous.value + quantity.value) / 2, unit, previous.start, quantity.end, "range"
                )
                continue
            shrinking = (
                previous.unit is not None
                and quantity.unit is not None
                and METRES_PER_UNIT[previous.unit] > METRES_PER_UNIT[quantity.unit]
            )
            if shrinking and _COMPOUND_GAP.match(gap):
                metres = (
                    previous.value * METRES_PER_UNIT[previous.unit] + quantity.value * METRES_PER_UNIT[quantity.unit]
                )
                merged[-1] = _Quantity(metres, "m", previous.start, quantity.end, "compound")
                continue
        merged.append(quantity)
    return merged


def parse_length(text: str, bare_number_unit: str | None = "m") -> ParsedLength:
    """The length an answer gives, in metres (see the module docstring for every rule).

    >>> parse_length("About 1.5 meters.").metres
    1.5
    >>> parse_length("3 ft 4 in").metres  # 40 inches
    1.016
    >>> parse_length("no idea").reason
    'no_number'
    """
    normalised = _normalise_text(text or "")
    quantities = _merge_ranges_and_compounds(normalised, _quantities(normalised))
    with_unit = [q for q in quantities if q.unit is not None]
    if with_unit:
        first = with_unit[0]
        metres = first.value * METRES_PER_UNIT[first.unit]
        reason = "unit" if first.kind == "single" else first.kind
        return ParsedLength(metres, reason, normalised[first.start : first.end].strip(), len(with_unit))
    bare_values = {q.value for q in quantities}
    if not bare_values:
        return ParsedLength(None, "no_number")
    if len(bare_values) > 1:
        return ParsedLength(None, "several_bare_numbers", normalised.strip(), len(quantities))
    if bare_number_unit is None:
        return ParsedLength(None, "bare_number_not_allowed", normalised.strip(), 1)
    only = quantities[0]
    metres = only.value * unit_to_metres(bare_number_unit)
    reason = "range" if only.kind == "range" else "bare_number"
    return ParsedLength(metres, reason, normalised[only.start : only.end].strip(), 1)


# ----------------------------------------------------------------------------------------------------------------
# Choices, orders and counts
# ----------------------------------------------------------------------------------------------------------------
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
OPTION_LETTERS = "ABCDEFGHIJ"


def normalize_answer(text: str, drop_articles: bool = True) -> str:
    """Lower case, punctuation to spaces, articles dropped, whitespace collapsed ("The Red cube." -> "red cube").

    When dropping articles would leave nothing (a choice named "A"), they are kept. Lettered options keep them
    always (`drop_articles=False`): there "A" names an option ("A is closer"), not an article.
    """
    plain = " ".join(re.sub(r"[^a-z0-9]+", " ", (text or "").lower()).split())
    if not drop_articles:
        return plain
    return " ".join(_ARTICLES.sub(" ", plain).split()) or plain


def _phrase_positions(phrase: str, text: str) -> list[int]:
    return [m.start() for m in re.finditer(rf"(?<![a-z0-9]){re.escape(phrase)}(?![a-z0-9])", text)]


@dataclass(frozen=True)
class ChoiceMatch:
    """The choice an answer picks (`index`, None when none) and how: "exact", "letter", "contains", "leading";
    or why not: "ambiguous", "no_match", "empty"."""

    index: int | None
    reason: str

    @property
    def ok(self) -> bool:
        return self.index is not None


def _option_letter(raw: str, num_choices: int) -> int | None:
    """An option letter: "(B)" anywhere (one distinct letter), or "B", "B.", "Answer: B" at the start."""
    letters = {m.upper() for m in re.findall(r"\(([A-Za-z])\)", raw)}
    if len(letters) != 1:
        start = re.match(r"^\s*(?:(?i:answer|option)\s*(?:is|:)?\s*)?([A-Z])(?![A-Za-z])", raw)
        letters = {start[1]} if start else set()
    if len(letters) == 1:
        index = OPTION_LETTERS.find(letters.pop())
        if 0 <= index < num_choices:
            return index
    return None


def match_choice(prediction: str, choices: list[str], lettered: bool = False) -> ChoiceMatch:
    """Which of `choices` the prediction names. `lettered`: options were shown as (A), (B), ... so letters count.

    >>> match_choice("The purple cone.", ["purple cone", "cyan sphere"])
    ChoiceMatch(index=0, reason='exact')
    >>> match_choice("(B)", ["lamp", "pillow"], lettered=True).index
    1
    """
    text = normalize_answer(prediction, drop_articles=not lettered)
    if not text:
        return ChoiceMatch(None, "empty")
    normalised_choices = [normalize_answer(choice, drop_articles=not lettered) for choice in choices]
    exact = [i for i, choice in enumerate(normalised_choices) if choice == text]
    if len(exact) == 1:
        return ChoiceMatch(exact[0], "exact")
    if lettered:
        letter = _option_letter(prediction, len(choices))
        if letter is not None:
            return ChoiceMatch(letter, "letter")
    positions = {i: _phrase_positions(choice, text) for i, choice in enumerate(normalised_choices) if choice}
    contained = [i for i, found in positions.items() if found]
    # A choice that is part of another mentioned choice ("cube" inside "red cube") is not a mention of its own.
    contained = [
        i for i in contained if not any(j != i and normalised_choices[i] in normalised_choices[j] for j in contained)
    ]
    if len(contained) == 1:
        return ChoiceMatch(contained[0], "contains")
    leading = [i for i in contained if positions[i][0] == 0]
    hedged = re.search(r"\bor\b", text) is not None  # "red or blue" names two answers, whichever comes first
    if len(leading) == 1 and not hedged:
        return ChoiceMatch(leading[0], "leading")
    return ChoiceMatch(None, "ambiguous" if contained else "no_match")


@dataclass(frozen=True)
class OrderMatch:
    """The order an answer gives, as indices into the choices (None when unreadable), and why."""

    order: list[int] | None
    reason: str

    @property
    def ok(self) -> bool:
        return self.order is not None


def match_order(prediction: str, choices: list[str]) -> OrderMatch:
    """The order of first mention of every choice ("ordered"), or why not ("missing", "empty").

    >>> match_order("red cone, white cube, purple cylinder", ["purple cylinder", "red cone", "white cube"]).order
    [1, 2, 0]
    """
    text = normalize_answer(prediction)
    if not text:
        return OrderMatch(None, "empty")
    first_mention = {}
    for index, choice in enumerate(choices):
        found = _phrase_positions(normalize_answer(choice), text)
        if not found:
            return OrderMatch(None, "missing")
        first_mention[index] = found[0]
    return OrderMatch(sorted(first_mention, key=first_mention.get), "ordered")


def parse_count(text: str) -> int | None:
    """The first whole number in an answer, in digits or words ("3", "three objects"); None when there is none."""
    normalised = (text or "").lower()
    match = re.search(rf"(?<![\d.])\d+(?![\d.]\d)|\b(?:{'|'.join(_SMALL_NUMBER_WORDS + _TENS_WORDS)})\b", normalised)
    if match is None:
        return None
    word = match.group(0)
    return int(word) if word.isdigit() else NUMBER_WORDS[word]


def readable_rate(type_metrics: dict) -> float | None:
    """The share of a question type's answers that could be read at all (unreadable ones count as wrong elsewhere);
    None without questions."""
    if not type_metrics or not type_metrics.get("num_samples"):
        return None
    return 1 - type_metrics["num_unparseable"] / type_metrics["num_samples"]


__all__ = [
    "METRES_PER_UNIT",
    "ChoiceMatch",
    "OrderMatch",
    "ParsedLength",
    "match_choice",
    "match_order",
    "normalize_answer",
    "parse_count",
    "parse_length",
    "readable_rate",
    "unit_to_metres",
]
