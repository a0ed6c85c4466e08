"""Which payers a gate event's plate reads name, and how strongly (no models, no store)."""

from __future__ import annotations

from collections.abc import Sequence

from recognizer.fusion import PlateEvidence
from recognizer.gate.evidence import EvidenceGatherer
from recognizer.plate.types import PlateResult
from tests.helpers import read

EXACT, CAND, NOMATCH = PlateEvidence.EXACT, PlateEvidence.CANDIDATE, PlateEvidence.NO_MATCH
BOUND = {"桂NFN001": ("victim",), "豫NFN001": ("second",), "皖NFN001": ("owner",)}


def bound(text: str) -> Sequence[str]:
    return BOUND.get(text, ())


def payers(
    *reads: PlateResult, sure: float = 1.0
) -> tuple[PlateResult | None, dict[str, PlateEvidence]]:
    """Whom the reads name; by default no read is sure (the bar is above every read)."""
    names = EvidenceGatherer._plate_payers(reads, bound, sure)
    return names.read, names.evidence


def test_a_read_names_its_plate_exactly_and_its_candidates_as_candidates() -> None:
    clean = read(("桂NFN001", 0.6), ("豫NFN001", 0.1))
    assert payers(clean) == (clean, {"victim": EXACT, "second": CAND})


def test_a_sure_reads_candidates_are_evidence_against_the_plates_they_name() -> None:
    clean = read(("桂NFN001", 0.6), ("豫NFN001", 0.1))
    assert payers(clean, sure=0.6) == (clean, {"victim": EXACT, "second": NOMATCH})
    assert payers(clean, sure=0.61) == (clean, {"victim": EXACT, "second": CAND})
    # A guessed province is never sure: its candidates still name plates as candidates.
    guessed = read(("桂NFN001", 0.6), ("豫NFN001", 0.1), guessed=True)
    assert payers(guessed, sure=0.0) == (guessed, {"victim": CAND, "second": CAND})


def test_a_guessed_province_names_its_plate_as_a_candidate_only() -> None:
    guessed = read(("桂NFN001", 0.6), ("豫NFN001", 0.1), guessed=True)
    assert payers(guessed) == (guessed, {"victim": CAND, "second": CAND})
    # A read that saw the province still makes the payer exact, and is the read reported.
    seen = read(("桂NFN001", 0.5))
    assert payers(guessed, seen) == (seen, {"victim": EXACT, "second": CAND})


def test_a_guessed_read_that_names_a_payer_is_the_read_reported() -> None:
    # Another read names a payer as a candidate too: the guess is still what the rules see.
    other = read(("皖NFN002", 0.7), ("皖NFN001", 0.2))
    guessed = read(("桂NFN001", 0.6), guessed=True)
    assert payers(other, guessed) == (guessed, {"victim": CAND, "owner": CAND})
    # Naming nobody, the most confident read is reported, guessed or not.
    nobody = read(("鲁A931Y9", 0.4), guessed=True)
    assert payers(nobody, read(("皖A931Y8", 0.3))) == (nobody, {})
