"""Chinese plate grammar (GA 36) and candidate ranking over per-position reader beliefs.

Formats covered (after the separator dot is removed):
- ordinary (blue, yellow, black, white): province, issuing letter, 5 alphanumerics;
- new energy (green, 8 chars): province, letter, then either D/F-class letter + 1 alnum +
  4 digits (small cars) or 5 digits + D/F-class letter (large vehicles);
- suffix plates: province, letter, 4 alphanumerics, then 警 学 挂 港 澳 领;
- embassy: 使 + 6 digits (or the older 6 digits + 使).
From the third character on a plate never holds the letters I or O, so a reader's O/I there
is a 0/1. Q does occur there and is never rewritten.
"""

from __future__ import annotations

import heapq
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from recognizer.errors import InvalidArgument
from recognizer.plate.types import PlateCandidate

Mode = Literal["cn", "generic"]

PROVINCES = "京津冀晋蒙辽吉黑沪苏浙皖闽赣鲁豫鄂湘粤桂琼渝川贵云藏陕甘青宁新"
DIGITS = "0123456789"
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
LETTERS_NO_IO = LETTERS.replace("I", "").replace("O", "")
# The issuing-authority letter: O is real (police/government in some provinces); I is not.
ISSUER = LETTERS.replace("I", "")
ALNUM = LETTERS_NO_IO + DIGITS
# New-energy class letters (GA 36-2018): D A B C E pure electric, F G H J K other.
NEV_CLASS = "DABCEFGHJK"
SUFFIXES = "警学挂港澳领"
SPECIAL = "使"
# Everything a Chinese plate can contain: the candidate alphabet handed to readers.
PLATE_ALPHABET = PROVINCES + LETTERS + DIGITS + SUFFIXES + SPECIAL

# Characters readers emit that are never part of a plate (separator dots, spaces, dashes).
_STRIP = re.compile(r"[\s.·•・\-_'\"、,，:：]")

_P, _L, _A, _D = f"[{PROVINCES}]", f"[{ISSUER}]", f"[{ALNUM}]", "[0-9]"
_N = f"[{NEV_CLASS}]"
CN_PATTERNS: dict[str, re.Pattern[str]] = {
    "ordinary": re.compile(f"^{_P}{_L}{_A}{{5}}$"),
    "new_energy_small": re.compile(f"^{_P}{_L}{_N}{_A}{_D}{{4}}$"),
    "new_energy_large": re.compile(f"^{_P}{_L}{_D}{{5}}{_N}$"),
    "suffix": re.compile(f"^{_P}{_L}{_A}{{4}}[{SUFFIXES}]$"),
    "embassy": re.compile(f"^(使{_D}{{6}}|{_D}{{6}}使)$"),
}
GENERIC_PATTERN = re.compile(r"^[A-Z0-9]{2,10}$")

# Per-position allowed sets for each cn template, used to constrain candidate search.
_TEMPLATES: tuple[tuple[str, ...], ...] = (
    (PROVINCES, ISSUER, *([ALNUM] * 5)),
    (PROVINCES, ISSUER, NEV_CLASS, ALNUM, *([DIGITS] * 4)),
    (PROVINCES, ISSUER, *([DIGITS] * 5), NEV_CLASS),
    (PROVINCES, ISSUER, *([ALNUM] * 4), SUFFIXES),
    (SPECIAL, *([DIGITS] * 6)),
    (*([DIGITS] * 6), SPECIAL),
)
_GENERIC_SET = LETTERS + DIGITS


def _fix_char(ch: str, pos: int, mode: Mode) -> str:
    """Position-aware O->0, I->1 (cn mode, from the third character); Q is left alone."""
    if mode == "cn" and pos >= 2:
        return {"O": "0", "I": "1"}.get(ch, ch)
    return ch


def normalize(text: str, mode: Mode = "cn") -> str:
    """Canonical plate string: NFKC (full-width to ASCII), upper case, no separators,
    position-aware O/I fixes in cn mode."""
    text = _STRIP.sub("", unicodedata.normalize("NFKC", text)).upper()
    return "".join(_fix_char(ch, i, mode) for i, ch in enumerate(text))


def plate_alphabet(mode: Mode = "cn") -> str:
    """Every character a plate of the mode may hold: a read never holds anything else."""
    return PLATE_ALPHABET if mode == "cn" else _GENERIC_SET


def clean_read(
    text: str, char_probs: Sequence[float] = (), mode: Mode = "cn"
) -> tuple[str, tuple[float, ...]]:
    """A reader's raw text reduced to the mode's plate alphabet, with its per-character
    probabilities kept aligned (empty when they were not one per character).

    Each character is folded (NFKC, upper case); separators and anything no plate holds
    (a slash, a stray CJK character read from a frame or sticker) are dropped, then the
    position-aware O/I fixes apply, as in :func:`normalize`."""
    allowed = plate_alphabet(mode)
    aligned = len(char_probs) == len(text)
    chars: list[str] = []
    probs: list[float] = []
    for i, ch in enumerate(text):
        folded = unicodedata.normalize("NFKC", ch).upper()
        if len(folded) == 1 and folded in allowed:
            chars.append(_fix_char(folded, len(chars), mode))
            if aligned:
                probs.append(float(char_probs[i]))
    return "".join(chars), tuple(probs)


# What a client may type between plate characters (the dot PP-OCR and plate printers use).
SEPARATORS = " .·-"
MAX_PLATE_TEXT = 32  # characters as sent, separators included
_TYPED = {
    "cn": frozenset(PLATE_ALPHABET + LETTERS.lower() + SEPARATORS),
    "generic": frozenset(LETTERS + LETTERS.lower() + DIGITS + SEPARATORS),
}


def parse_plate(text: str, mode: Mode = "cn", field: str = "plate") -> str:
    """A plate sent by a client (BindPlate, LookupPlate, Authorize.plate_text), validated and
    normalised, or InvalidArgument naming the field.

    After NFKC (full-width forms fold to ASCII) every character must be from the plate
    alphabet or a separator: format and bidi controls, combining marks, look-alike letters of
    other scripts and other punctuation are refused, not stripped, so two spellings can never
    name one plate. The result must then be a plate of the mode's grammar."""
    if len(text) > MAX_PLATE_TEXT:
        raise InvalidArgument(
            f"{field} is longer than {MAX_PLATE_TEXT} characters", field=field, reason="TOO_LONG"
        )
    folded = unicodedata.normalize("NFKC", text)
    bad = sorted({ch for ch in folded if ch not in _TYPED[mode]})
    if bad:
        shown = ", ".join(f"U+{ord(ch):04X}" for ch in bad[:5])
        raise InvalidArgument(
            f"{field} holds characters no plate has ({shown})",
            field=field,
            reason="PLATE_CHARACTERS",
        )
    plate = normalize(folded, mode)
    if not is_valid(plate, mode):
        what = "a GA 36 plate" if mode == "cn" else "2 to 10 letters and digits"
        raise InvalidArgument(
            f"{field} {plate!r} is not {what}", field=field, reason="PLATE_FORMAT"
        )
    return plate


def plate_format(text: str) -> str | None:
    """Name of the cn format `text` (already normalised) matches, or None."""
    for name, pat in CN_PATTERNS.items():
        if pat.match(text):
            return name
    return None


def is_valid(text: str, mode: Mode = "cn") -> bool:
    if mode == "generic":
        return bool(GENERIC_PATTERN.match(text))
    return plate_format(text) is not None


Alternatives = Sequence[Sequence[tuple[str, float]]]


def _best_for_template(
    positions: Alternatives, allowed: Sequence[str], n: int, mode: Mode
) -> list[tuple[float, str, tuple[float, ...]]]:
    """Top-n strings (prob, text, char probs) for one template by beam search.

    Each position's mass is projected onto the template's allowed set after the O/I fixes,
    so an O read at position 4 counts as a 0.
    """
    beam: list[tuple[float, str, tuple[float, ...]]] = [(1.0, "", ())]
    for pos, (alts, ok) in enumerate(zip(positions, allowed, strict=True)):
        dist: dict[str, float] = {}
        for ch, p in alts:
            fixed = _fix_char(ch, pos, mode)
            if fixed in ok:
                dist[fixed] = dist.get(fixed, 0.0) + p
        if not dist:
            return []
        nxt = [(bp * p, bt + ch, (*bc, p)) for bp, bt, bc in beam for ch, p in dist.items()]
        beam = heapq.nlargest(n, nxt, key=lambda b: b[0])
    return beam


@dataclass(frozen=True, slots=True)
class RankedPlate:
    text: str
    probability: float  # product of char_probs times any drop penalty
    char_probs: tuple[float, ...]


def rank_plates(
    positions: Alternatives,
    n: int = 5,
    mode: Mode = "cn",
    *,
    allow_drop: bool = True,
    leading: Sequence[tuple[str, float]] = (),
    trailing: Sequence[tuple[str, float]] = (),
) -> list[RankedPlate]:
    """Top-n valid plates from per-position (char, prob) alternatives, best first.

    A probability is the product over positions. When the reader emitted one character
    too many (a smudge read as a symbol), dropping one position is also tried, at the cost
    of the dropped character's own confidence: a sure character is expensive to discard.
    When it emitted one too few, `leading` / `trailing` (the best characters in the blank
    frames before / after the text) are tried as an inserted first / last character; their
    low probability keeps that a last resort.
    """
    variants: list[tuple[float, Alternatives]] = [(1.0, positions)]
    if allow_drop and len(positions) > 1:
        for i, alts in enumerate(positions):
            top = alts[0][1] if alts else 0.0
            variants.append((max(1.0 - top, 1e-6), [*positions[:i], *positions[i + 1 :]]))
    if leading:
        variants.append((1.0, [leading, *positions]))
    if trailing:
        variants.append((1.0, [*positions, trailing]))
    found: dict[str, RankedPlate] = {}
    for penalty, pos in variants:
        if mode == "generic":
            if not 2 <= len(pos) <= 10:
                continue
            templates: tuple[tuple[str, ...], ...] = ((_GENERIC_SET,) * len(pos),)
        else:
            templates = tuple(t for t in _TEMPLATES if len(t) == len(pos))
        for tpl in templates:
            for p, text, cps in _best_for_template(pos, tpl, n, mode):
                score = p * penalty
                if is_valid(text, mode) and score > getattr(found.get(text), "probability", -1):
                    found[text] = RankedPlate(text, float(score), cps)
    return heapq.nlargest(n, found.values(), key=lambda r: r.probability)


def rank_candidates(
    positions: Alternatives,
    n: int = 5,
    mode: Mode = "cn",
    *,
    allow_drop: bool = True,
    leading: Sequence[tuple[str, float]] = (),
    trailing: Sequence[tuple[str, float]] = (),
) -> list[PlateCandidate]:
    """Top-n valid plates as PlateCandidate (text, probability), best first."""
    ranked = rank_plates(
        positions, n, mode, allow_drop=allow_drop, leading=leading, trailing=trailing
    )
    return [PlateCandidate(r.text, r.probability) for r in ranked]
