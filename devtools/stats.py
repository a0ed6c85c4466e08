"""Metric helpers that devtools/metrics.py does not have (string accuracy, confusions).

Pure Python; each function has a known-answer test in tests/test_bench_smoke.py.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

GAP = "∅"  # a missing (deleted) or extra (inserted) character in a confusion pair


def align(truth: str, pred: str) -> list[tuple[str, str]]:
    """Levenshtein alignment as (truth_char, pred_char) pairs; GAP marks a gap.

    Ties prefer substitution, then deletion, so equal-length strings align position by
    position (what a plate reader's per-slot errors look like)."""
    n, m = len(truth), len(pred)
    d = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        d[i][0] = i
    for j in range(m + 1):
        d[0][j] = j
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            cost = 0 if truth[i - 1] == pred[j - 1] else 1
            d[i][j] = min(d[i - 1][j - 1] + cost, d[i - 1][j] + 1, d[i][j - 1] + 1)
    pairs: list[tuple[str, str]] = []
    i, j = n, m
    while i > 0 or j > 0:
        if (
            i > 0
            and j > 0
            and d[i][j] == d[i - 1][j - 1] + (0 if truth[i - 1] == pred[j - 1] else 1)
        ):
            pairs.append((truth[i - 1], pred[j - 1]))
            i, j = i - 1, j - 1
        elif i > 0 and d[i][j] == d[i - 1][j] + 1:
            pairs.append((truth[i - 1], GAP))
            i -= 1
        else:
            pairs.append((GAP, pred[j - 1]))
            j -= 1
    return pairs[::-1]


def edit_distance(truth: str, pred: str) -> int:
    return sum(1 for a, b in align(truth, pred) if a != b)


def char_accuracy(truth: str, pred: str) -> float:
    """1 - edit distance / len(truth), floored at 0 (a missing read scores 0)."""
    if not truth:
        return 1.0 if not pred else 0.0
    return max(0.0, 1.0 - edit_distance(truth, pred) / len(truth))


def confusions(pairs: Iterable[tuple[str, str]]) -> Counter[tuple[str, str]]:
    """Count (truth, predicted) character errors over many (truth, pred) plate strings."""
    out: Counter[tuple[str, str]] = Counter()
    for truth, pred in pairs:
        for a, b in align(truth, pred):
            if a != b:
                out[(a, b)] += 1
    return out


def ratio(a: float, b: float) -> float:
    """a / b, NaN when b is zero or missing (so a table shows a dash, not a crash)."""
    return a / b if b else float("nan")


def median(values: Sequence[float]) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = len(s) // 2
    return float(s[k]) if len(s) % 2 else (s[k - 1] + s[k]) / 2.0
