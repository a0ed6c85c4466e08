"""Gathering a gate event's evidence: the I/O half of the decision.

Reads the plate and the face (both branches at once; a burst's plate frames are voted into
one read per plate, and its face is the frame that scores best, counted as that many tries,
or the first frame when that already allows), finds the payers the plate names, scores the
face against them 1:1, or searches the gallery 1:N when the plate names no payer, and loads
their bindings and the plate's last sighting. Everything it returns is plain data for
`rules.decide`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np

from recognizer import accounting, deadline
from recognizer.face.types import AnalyzedFace, FrameFace, Glimpse
from recognizer.fusion import PlateEvidence
from recognizer.gate.types import Binding, Evidence, Factors, GateEvent, Payer, Sighting
from recognizer.identity import FaceIdentity, IdentityScore
from recognizer.plate.grammar import is_valid
from recognizer.plate.types import PlateCandidate, PlateResult, PlateType
from recognizer.plate.vote import vote_plates
from recognizer.store.ports import Bindings, Sightings

# A burst's face frames must be one person: each other frame's face scores against the face
# used at least where a stranger would pass 1 time in 100 (the default profile: 0.34, where
# 0.3% of genuine pairs of distinct photos fall below; frames of one second fall far less).
FRAMES_AGREE_FMR = 1e-2
# The best glimpse is completed when its front-view score comes within this of the first
# frame's full score. On perturbed copies of the sample probes (187 bursts of 3) a front view
# scores 0.004 +- 0.009 below its own full embedding: with this slack 41% of bursts complete
# one glimpse (the mirror run and liveness, ~20 ms), and the frame used scores on average
# 0.0006 below the best frame's full score. Detecting glimpses at a smaller size was tried and
# dropped: coarser landmarks made the front-view score too noisy (sd 0.027) to pick frames by.
GLIMPSE_SLACK = 0.005
T = TypeVar("T")
Lookup = Callable[[str], Sequence[str]]  # plate text -> the identities it is bound to


class GateStore(Bindings, Sightings, Protocol):
    """The store reads the gate needs: bindings, sightings, and the gallery's size."""

    def count_identities(self) -> int: ...
    def max_templates_per_identity(self) -> int: ...


def text_read(text: str) -> PlateResult:
    """A plate the gate's own camera read and sent as text: no box, no alternatives."""
    return PlateResult(
        text=text,
        confidence=1.0,
        char_confidences=(),
        candidates=(PlateCandidate(text, 1.0),),
        box=np.zeros(4, np.float32),
        corners=np.zeros((4, 2), np.float32),
        plate_type=PlateType.UNKNOWN,
        pattern_valid=True,
        detector_score=0.0,
        reader="gate",
    )


def names_a_payer(bound: Lookup, reads: Sequence[PlateResult]) -> bool:
    """A valid read of a bound plate whose province was seen: the far-plate detector pass or
    a later frame cannot add to it (they may see a province that was only guessed)."""
    return any(r.pattern_valid and not r.province_guessed and bound(r.text) for r in reads)


@dataclass(frozen=True, slots=True)
class _Seen:
    """What the branches saw of one event: the plate read reported, the payers it names,
    and the face frames (the first analysed in full, the rest glimpsed)."""

    read: PlateResult | None
    by_plate: dict[str, PlateEvidence]
    vehicle_frames_read: int
    analysed: tuple[FrameFace, ...]
    glimpses: tuple[Glimpse, ...]


class EvidenceGatherer:
    def __init__(
        self,
        *,
        plates: Any,
        identity: FaceIdentity,
        store: GateStore,
        workers: int = 2,
        search_k: int = 10,
    ) -> None:
        self.plates = plates
        self.identity = identity
        self.store = store
        self.search_k = search_k
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gate-branch")
        self._frames_agree_score = identity.calibration.score_at(FRAMES_AGREE_FMR)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- branches -----------------------------------------------------------------------------

    def _plate_branch(self, event: GateEvent, bound: Lookup) -> tuple[list[PlateResult], int]:
        """The frames' reads (one frame's as read, a burst's voted per plate), and the gate's
        own read when it sent one (trusted as much as a plate_text alone would be); with how
        many frames were read."""
        frames = event.vehicle_images
        reads: list[PlateResult] = []
        read = len(frames)
        if len(frames) == 1:  # the pipeline checks the budget per stage
            enough = functools.partial(names_a_payer, bound)
            reads = list(self.plates.read(frames[0], enough=enough))
        elif frames:
            reads, read = self._read_burst(frames, bound)
        if event.plate_text:
            reads.append(text_read(event.plate_text))
        return reads, read

    def _read_burst(
        self, frames: Sequence[np.ndarray], bound: Lookup
    ) -> tuple[list[PlateResult], int]:
        """Read the frames in order and vote per plate; stop once a plate voted so far is
        bound and its province was seen (an exact read: more frames cannot strengthen it).
        Returns the voted reads (every read when no frame read a valid text) and how many
        frames were read."""
        mode = getattr(self.plates, "mode", "cn")
        per_frame: list[list[PlateResult]] = []
        voted: list[PlateResult] = []
        enough = functools.partial(names_a_payer, bound)
        for image in frames:
            per_frame.append(list(self.plates.read(image, enough=enough)))
            voted = vote_plates(per_frame, lambda text: is_valid(text, mode))
            if names_a_payer(bound, voted):
                break
        return voted or [r for reads in per_frame for r in reads], len(per_frame)

    def _run_branches(
        self, event: GateEvent, bound: Lookup
    ) -> tuple[tuple[list[PlateResult], int], tuple[FrameFace, ...], tuple[Glimpse, ...]]:
        """Both branches at once. The first face frame is analysed in full in this thread (a
        one-frame event costs what it did before bursts); a burst's other face frames are
        glimpsed (front view only, no liveness) in the pool beside the plate branch: enough
        to choose the frame and to check that every frame shows one person."""
        faces = self.identity.faces
        frames = event.face_images
        plate_future = accounting.submit(self._pool, lambda: self._plate_branch(event, bound))
        rest_future = (
            accounting.submit(self._pool, lambda: faces.glimpse_frames(frames[1:], first=1))
            if len(frames) > 1
            else None
        )
        analysed = faces.analyze_frames(frames[:1])
        glimpses = rest_future.result() if rest_future is not None else ()
        return plate_future.result(), analysed, glimpses

    # --- the face frame -----------------------------------------------------------------------

    def _choose(
        self,
        analysed: Sequence[FrameFace],
        glimpses: Sequence[Glimpse],
        rate: Callable[[np.ndarray], tuple[float, T]],
        completing: bool,
    ) -> tuple[FrameFace, T, bool]:
        """The frame whose face rates highest, with what `rate` found for it, and whether a
        glimpse that might rate higher was left uncompleted. The best glimpse is completed
        (its mirror view and liveness added) when its quick rating comes within
        GLIMPSE_SLACK of the first frame's full one and `completing` (or when no frame was
        analysed in full); the frame used is the best full rating."""
        full = [(*rate(ff.face.embedding), ff) for ff in analysed]
        left = False
        if glimpses:
            quick, best = max(((rate(g.embedding)[0], g) for g in glimpses), key=lambda t: t[0])
            if not full or quick > full[0][0] - GLIMPSE_SLACK:
                if completing or not full:
                    done = self.identity.faces.complete(best)
                    full.append((*rate(done.face.embedding), done))
                else:
                    left = True
        _, found, used = max(full, key=lambda t: t[0])
        return used, found, left

    def _frame_for_payers(
        self,
        analysed: Sequence[FrameFace],
        glimpses: Sequence[Glimpse],
        pids: Sequence[str],
        completing: bool,
    ) -> tuple[FrameFace, dict[str, IdentityScore | None], bool]:
        """The frame whose face scores highest against any of the plate's payers, with every
        payer's score from it (one frame: its own scores, as before bursts)."""

        def rate(vec: np.ndarray) -> tuple[float, dict[str, IdentityScore | None]]:
            scores = {pid: self.identity.score_identity(pid, vec) for pid in pids}
            top = max((s.score for s in scores.values() if s is not None), default=-math.inf)
            return top, scores

        return self._choose(analysed, glimpses, rate, completing)

    def _frame_for_search(
        self, analysed: Sequence[FrameFace], glimpses: Sequence[Glimpse], completing: bool
    ) -> tuple[FrameFace, list[Any], bool]:
        """The frame whose face's best 1:N match scores highest, with its matches."""

        def rate(vec: np.ndarray) -> tuple[float, list[Any]]:
            found = self.identity.gallery.identify(vec, self.search_k)
            return (found[0].score if found else -math.inf), found

        return self._choose(analysed, glimpses, rate, completing)

    def _frames_agree(
        self, analysed: Sequence[FrameFace], glimpses: Sequence[Glimpse], used: FrameFace
    ) -> bool:
        """Every other frame's face is the same person as the face used: a stranger's frame
        scores this high against it at most FRAMES_AGREE_FMR of the time. A glimpse's
        front-view embedding scores against a full one as a full one does (the same impostor
        rate at the bar on every sample group; tests/test_frames_agree.py)."""
        probe = used.face.embedding
        views = [(ff.frame, ff.face.embedding) for ff in analysed]
        views += [(g.frame, g.embedding) for g in glimpses]
        bar = self._frames_agree_score
        return all(float(np.dot(vec, probe)) >= bar for i, vec in views if i != used.frame)

    # --- plate payers -------------------------------------------------------------------------

    @staticmethod
    def _plate_payers(
        reads: Sequence[PlateResult], bound: Lookup
    ) -> tuple[PlateResult | None, dict[str, PlateEvidence]]:
        """The read to report and, per identity, whether a read names its plate exactly or
        among the candidates. An identity matched both ways counts as exact. A read whose
        province was guessed names no plate exactly (its text is a candidate like the others),
        and when no read names a plate exactly it is the read reported, so the decision says
        the province was a guess."""
        found: dict[str, PlateEvidence] = {}
        shown: PlateResult | None = None
        for read in reads:
            if read.province_guessed:
                continue
            for pid in bound(read.text):
                found[pid] = PlateEvidence.EXACT
                shown = shown or read
        # Guessed reads first: one that names a payer is the read reported, so the rules see
        # the guess even when another read's candidate names the payer who would pay.
        for read in sorted(reads, key=lambda r: not r.province_guessed):
            for text in read.candidate_texts:
                for pid in bound(text):
                    if pid not in found:
                        found[pid] = PlateEvidence.CANDIDATE
                        shown = shown or read
        if shown is None and reads:
            shown = max(reads, key=lambda r: r.confidence)
        return shown, found

    def _bindings(self, identity_id: str) -> tuple[Binding, ...]:
        return tuple(
            Binding(p.binding_id, p.payment_ref, Factors(p.factors), p.ceiling_minor)
            for p in self.store.payments_for(identity_id)
        )

    # --- the whole event ----------------------------------------------------------------------

    def gather(
        self, event: GateEvent, now: float, allows: Callable[[Evidence], bool] | None = None
    ) -> tuple[Evidence, PlateResult | None, AnalyzedFace | None]:
        """The event's evidence, the read reported and the face used.

        `allows` (the gate's rules for this event: does the evidence ALLOW?) lets a burst exit
        early: when the first frame, analysed in full, already allows, a glimpse that might
        rate a little higher is not completed, because the decision cannot get better. Every
        frame is still checked to show the same person. Without `allows`, the best frame is
        always completed and used."""
        # Who holds a plate text, looked up once per text and event (the plate branch asks
        # while reading, to skip the far-plate pass; the payers are gathered from it after).
        bound: Lookup = functools.cache(self.store.identities_for_plate)
        (reads, vehicle_frames_read), analysed, glimpses = self._run_branches(event, bound)
        deadline.check("gate.match")
        read, by_plate = self._plate_payers(reads, bound)
        seen = _Seen(read, by_plate, vehicle_frames_read, analysed, glimpses)
        found, left = self._evidence(event, now, seen, completing=allows is None)
        if left and allows is not None and not allows(found[0]):
            found, _ = self._evidence(event, now, seen, completing=True)
        return found

    def _evidence(
        self, event: GateEvent, now: float, seen: _Seen, completing: bool
    ) -> tuple[tuple[Evidence, PlateResult | None, AnalyzedFace | None], bool]:
        """The evidence from what the branches saw, and whether a glimpse that might rate
        higher than the frame used was left uncompleted (only when not `completing`)."""
        read, by_plate, analysed, glimpses = seen.read, seen.by_plate, seen.analysed, seen.glimpses
        threshold = self.identity.threshold()
        payers: list[Payer] = []
        face_elsewhere = False
        used: FrameFace | None = None
        left = False
        scores: dict[str, IdentityScore | None] = {}
        matches: list[Any] = []
        # A burst's face is its best frame: an impostor's face gets one try per frame, and
        # the estimate counts them (Payer.frames), as it counts enrolled templates.
        frames = len(analysed) + len(glimpses)
        if frames and by_plate:
            used, scores, left = self._frame_for_payers(
                analysed, glimpses, list(by_plate), completing
            )
            matches = self.identity.gallery.identify(used.face.embedding, self.search_k)
        elif frames:
            used, matches, left = self._frame_for_search(analysed, glimpses, completing)
        for pid, plate in by_plate.items():
            scored = scores.get(pid)
            score, templates = (scored.score, scored.templates) if scored else (None, 1)
            payers.append(Payer(pid, plate, score, 0, self._bindings(pid), templates, frames))
        if used is not None:
            face_elsewhere = any(
                m.score >= threshold and m.identity_id not in by_plate for m in matches
            )
            if not by_plate and matches and matches[0].score >= threshold:
                # The plate names no payer: the face's best match, judged 1:N. Any plate that
                # was read is not this payer's (else the plate would have named them).
                top = matches[0]
                bindings = self._bindings(top.identity_id)
                if bindings:
                    plate = PlateEvidence.NO_MATCH if read is not None else PlateEvidence.ABSENT
                    searched = max(1, self.store.count_identities())
                    # Every identity's templates were compared: the most any one holds.
                    templates = max(1, self.store.max_templates_per_identity())
                    payers.append(
                        Payer(
                            top.identity_id, plate, top.score, searched, bindings, templates, frames
                        )
                    )
        probe = used.face if used is not None else None
        last = self.store.last_sighting(read.text) if read is not None else None
        evidence = Evidence(
            gate_id=event.gate_id,
            amount_minor=event.amount_minor,
            direction=event.direction,
            now=now,
            vehicle_sent=bool(event.vehicle_images),
            plate_read=read is not None,
            face_sent=bool(event.face_images),
            face_found=probe is not None,
            face_threshold=threshold,
            payers=tuple(payers),
            face_elsewhere=face_elsewhere,
            last_sighting=Sighting(last.gate_id, last.direction, last.at) if last else None,
            face_liveness=probe.liveness if probe is not None else None,
            face_frames_agree=used is None or self._frames_agree(analysed, glimpses, used),
            face_frame=used.frame if used is not None else 0,
            vehicle_frames_read=seen.vehicle_frames_read,
            # The read reported is the one the plate evidence rests on (_plate_payers): a
            # guessed province there is evidence the rules weigh.
            plate_province_guessed=read is not None and read.province_guessed,
        )
        return (evidence, read, probe), left
