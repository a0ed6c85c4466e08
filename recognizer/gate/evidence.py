"""Gathering a gate event's evidence: the I/O half of the decision.

Reads the plate and the face (both branches at once; a burst's plate frames are voted into
one read per plate, and its face is the frame that scores best, counted as that many tries),
finds the payers the plate names with their bindings, scores the face against them 1:1, or
searches the gallery 1:N when the plate names no payer, and loads the plate's last sighting.
Everything it returns is plain data for `rules.decide`.

The engine runs it in one pass: `gather` (the fast path: a burst's best glimpse is left
uncompleted when the first frame was analysed in full), decide, and `complete` only when the
decision could improve (it was not ALLOW and a glimpse is pending), then decide again.
Completing adds the glimpse's full analysis to the evidence and repeats no store query.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import numpy as np

from recognizer import accounting, deadline
from recognizer.face.types import AnalyzedFace, FrameFace, Glimpse
from recognizer.fusion import PlateEvidence
from recognizer.gallery.gallery import Match
from recognizer.gate.types import Binding, Evidence, Factors, GateEvent, Payer, Sighting
from recognizer.identity import FaceIdentity, IdentityScore
from recognizer.plate.grammar import is_valid
from recognizer.plate.types import PlateCandidate, PlateEngine, PlateResult, PlateType
from recognizer.plate.vote import vote_plates
from recognizer.store.ports import Bindings, Sightings
from recognizer.store.rows import PaymentRow, PlateHolder, SightingRow

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
# A face whose front view scores this far below the bar against everyone in the gallery is
# not completed (no mirror view, ~17 ms) unless the plate names a payer: the mirror view
# cannot lift it to the bar, so the decision is the same. A full embedding rose at most 0.060
# above its front view (below the bar) on lfw_subset and att_orl, twice that is the margin,
# and on the sets left out (asianfaces_cn, lfw10, misc; at most 0.050) none rose above it
# (`scripts/validate_glimpse_margin.py`).
GLIMPSE_MARGIN = 0.12
T = TypeVar("T")
Lookup = Callable[[str], Sequence[str]]  # plate text -> the identities it is bound to


class GateStore(Bindings, Sightings, Protocol):
    """The store reads the gate needs: plate holders with their bindings, sightings, and the
    gallery's size."""

    def count_identities(self) -> int: ...
    def max_templates_per_identity(self) -> int: ...


class _PlateBook:
    """Who holds the texts one event read, with their payment bindings: each batch of new
    texts (a read with its candidates) is one store query, and every text is asked once."""

    __slots__ = ("_held", "_store")

    def __init__(self, store: GateStore) -> None:
        self._store = store
        self._held: dict[str, list[PlateHolder]] = {}

    def learn(self, texts: Iterable[str]) -> None:
        new = set(texts) - self._held.keys()
        if new:
            found = self._store.plate_holders(new)
            for text in new:
                self._held[text] = found.get(text, [])

    def learn_reads(self, reads: Sequence[PlateResult]) -> None:
        self.learn(t for r in reads for t in (r.text, *r.candidate_texts))

    def holders(self, text: str) -> list[str]:
        self.learn((text,))
        return [h.identity_id for h in self._held[text]]

    def bindings(self, identity_id: str) -> tuple[Binding, ...]:
        for held in self._held.values():
            for h in held:
                if h.identity_id == identity_id:
                    return _bindings(h.payments)
        return ()


def _bindings(rows: Iterable[PaymentRow]) -> tuple[Binding, ...]:
    return tuple(
        Binding(p.binding_id, p.payment_ref, Factors(p.factors), p.ceiling_minor) for p in rows
    )


TEXT_READER = "gate"  # the reader of a plate the gate sent as text


def top_read(reads: Sequence[PlateResult]) -> PlateResult | None:
    """The camera's read: its most confident valid plate (None when it read none)."""
    valid = [r for r in reads if r.pattern_valid and r.reader != TEXT_READER]
    return max(valid, key=lambda r: r.confidence) if valid else None


def _is_sure(read: PlateResult, sure_confidence: float) -> bool:
    """A camera read that reads a valid plate, every character seen, confidently enough to
    outrank its own candidates."""
    return (
        read.reader != TEXT_READER
        and read.pattern_valid
        and not read.province_guessed
        and read.confidence >= sure_confidence
    )


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
        reader=TEXT_READER,
    )


def names_a_payer(
    book: _PlateBook, sure: Callable[[PlateResult], bool], reads: Sequence[PlateResult]
) -> bool:
    """A sure read (`sure`: the reader's own bar for a read more passes cannot improve) of a
    bound plate: the far-plate detector pass or a later frame cannot add to it. An unsure
    read that names a payer does not end the reading: a look-alike bound to a payer could
    otherwise stop the passes that read the car's own plate better. Asking learns every text
    of the reads at once, candidates included, for the payers after."""
    book.learn_reads(reads)
    return any(sure(r) and book.holders(r.text) for r in reads)


@dataclass(frozen=True, slots=True)
class PlateNames:
    """Whom an event's plate reads name: the read reported, per identity how (exact,
    candidate, or a sure read's candidate: no match), the confidence of the read that named
    it exactly, and who was named only by the gate's plate_text."""

    read: PlateResult | None
    evidence: dict[str, PlateEvidence]
    confidence: dict[str, float] = field(default_factory=dict)
    by_text: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class _PlateSeen:
    reads: list[PlateResult]
    frames_read: int
    text_mismatch: bool  # the gate's plate_text contradicts the camera's valid read


@dataclass(frozen=True, slots=True)
class _Seen:
    """What the branches saw of one event: whom the plate reads name, and the face frames
    (those analysed in full, and the rest glimpsed)."""

    names: PlateNames
    vehicle_frames_read: int
    text_mismatch: bool
    analysed: tuple[FrameFace, ...]
    glimpses: tuple[Glimpse, ...]

    @property
    def read(self) -> PlateResult | None:
        return self.names.read

    @property
    def by_plate(self) -> dict[str, PlateEvidence]:
        return self.names.evidence


@dataclass(frozen=True, slots=True)
class _Branches:
    """What the plate and face branches found, with the 1:N searches already made."""

    plate: _PlateSeen
    analysed: tuple[FrameFace, ...]
    glimpses: tuple[Glimpse, ...]
    searches: dict[tuple[int, bool], list[Match]]
    owners: dict[int, str | None]


@dataclass(slots=True)
class _State:
    """One event's gathering so far: what the branches saw, and what the store answered, so
    that completing a frame adds to the evidence and asks the store nothing twice."""

    event: GateEvent
    now: float
    seen: _Seen
    book: _PlateBook
    templates: dict[str, np.ndarray]  # the plate's payers' enrolled faces
    last: SightingRow | None  # the read plate's last sighting
    searches: dict[tuple[int, bool], list[Match]] = field(default_factory=dict)
    owners: dict[int, str | None] = field(default_factory=dict)  # template label -> identity
    searched: dict[str, tuple[Binding, ...]] = field(default_factory=dict)
    size: tuple[int, int] | None = None  # (identities, most templates of one) for 1:N
    completed: bool = False
    pending: Glimpse | None = None  # the glimpse `complete` would finish


@dataclass(frozen=True, slots=True)
class Gathered:
    """The evidence of one event, the read reported and the face used; `can_improve` when a
    glimpse that might rate higher than the face used was left uncompleted."""

    evidence: Evidence
    read: PlateResult | None
    probe: AnalyzedFace | None
    can_improve: bool
    state: _State = field(repr=False, compare=False)

    @property
    def last_seen(self) -> SightingRow | None:
        """The read plate's last sighting as the store answered when gathering."""
        return self.state.last

    def with_last(self, last: SightingRow | None) -> Gathered:
        """This evidence with the plate's last sighting as it stands now (another decision
        for the plate was recorded since it was read); nothing else is asked again."""
        self.state.last = last
        sighting = Sighting(last.gate_id, last.direction, last.at, last.presence) if last else None
        evidence = dataclasses.replace(self.evidence, last_sighting=sighting)
        return dataclasses.replace(self, evidence=evidence)


class EvidenceGatherer:
    def __init__(
        self,
        *,
        plates: PlateEngine,
        identity: FaceIdentity,
        store: GateStore,
        workers: int = 2,
        search_k: int = 10,
        sure_confidence: float = 0.0,
    ) -> None:
        self.plates = plates
        self.identity = identity
        self.store = store
        self.search_k = search_k
        # A camera read at least this confident (the fusion calibration's bar) is sure: its
        # candidates name other plates as evidence against them.
        self.sure_confidence = sure_confidence
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gate-branch")
        self._frames_agree_score = identity.calibration.score_at(FRAMES_AGREE_FMR)
        # The reader's own test of a read more passes cannot improve (a valid plate, province
        # seen, confident).
        self._sure_read = plates.sure_read

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- branches -----------------------------------------------------------------------------

    def _plate_branch(self, event: GateEvent, book: _PlateBook) -> _PlateSeen:
        """The frames' reads (one frame's as read, a burst's voted per plate), with how many
        frames were read. The camera outranks the gate's plate_text: with a valid camera
        read the text adds nothing (it agrees, or it contradicts the read and says so); only
        where the camera read no valid plate (or no frame was sent) does the text name
        payers, as text (the rules weigh it by the policy's trust_plate_text)."""
        frames = event.vehicle_images
        reads: list[PlateResult] = []
        read = len(frames)
        if len(frames) == 1:  # the pipeline checks the budget per stage
            enough = functools.partial(names_a_payer, book, self._sure_read)
            reads = list(self.plates.read(frames[0], enough=enough))
        elif frames:
            reads, read = self._read_burst(frames, book)
        mismatch = False
        if event.plate_text:
            top = top_read(reads)
            if top is None:
                reads.append(text_read(event.plate_text))
            else:
                mismatch = top.text != event.plate_text
        book.learn_reads(reads)
        return _PlateSeen(reads, read, mismatch)

    def _read_burst(
        self, frames: Sequence[np.ndarray], book: _PlateBook
    ) -> tuple[list[PlateResult], int]:
        """Read the frames in order and vote per plate; stop once a plate voted so far is
        bound and its province was seen (an exact read: more frames cannot strengthen it).
        Returns the voted reads (every read when no frame read a valid text) and how many
        frames were read."""
        mode = self.plates.mode
        per_frame: list[list[PlateResult]] = []
        voted: list[PlateResult] = []
        enough = functools.partial(names_a_payer, book, self._sure_read)
        for image in frames:
            per_frame.append(list(self.plates.read(image, enough=enough)))
            voted = vote_plates(per_frame, lambda text: is_valid(text, mode))
            if names_a_payer(book, self._sure_read, voted):
                break
        return voted or [r for reads in per_frame for r in reads], len(per_frame)

    def _run_branches(self, event: GateEvent, book: _PlateBook) -> _Branches:
        """Both branches at once. The first face frame is glimpsed with its liveness in this
        thread and searched 1:N; it is completed there too (beside the plate branch) when it
        comes near the bar, as a payer's face does. A burst's other face frames are glimpsed
        (front view only, no liveness) in the pool beside the plate branch: enough to choose
        the frame and to check that every frame shows one person."""
        faces = self.identity.faces
        frames = event.face_images
        plate_future = accounting.submit(self._pool, lambda: self._plate_branch(event, book))
        rest_future = (
            accounting.submit(self._pool, lambda: faces.glimpse_frames(frames[1:], first=1))
            if len(frames) > 1
            else None
        )
        analysed: tuple[FrameFace, ...] = ()
        searches: dict[tuple[int, bool], list[Match]] = {}
        owners: dict[int, str | None] = {}
        first = faces.glimpse_frames(frames[:1], liveness=True)
        if first:
            quick = self.identity.gallery.identify(first[0].embedding, self.search_k, owners)
            searches[(first[0].frame, False)] = quick
            if self._near_bar(quick[0].score if quick else -math.inf):
                analysed, first = (faces.complete(first[0]),), ()
        glimpses = first + (rest_future.result() if rest_future is not None else ())
        return _Branches(plate_future.result(), analysed, glimpses, searches, owners)

    def _near_bar(self, quick: float) -> bool:
        """A front-view score that completing the face might lift to the bar."""
        return quick >= self.identity.threshold() - GLIMPSE_MARGIN

    # --- the face frame -----------------------------------------------------------------------

    def _choose(
        self,
        st: _State,
        rate: Callable[[int, bool, np.ndarray], tuple[float, T]],
        far_stays_glimpse: bool = False,
    ) -> tuple[FrameFace, T, Glimpse | None]:
        """The frame whose face rates highest, with what `rate` found for it, and the glimpse
        left uncompleted that might rate higher (None when there is none). The best glimpse
        is completed (its mirror view and liveness added, and it joins the frames analysed)
        only when no frame was analysed in full, unless `far_stays_glimpse` and its rating
        is far below the bar (GLIMPSE_MARGIN): then it is used as glimpsed. Otherwise it is
        pending when its quick rating comes within GLIMPSE_SLACK of the first frame's full
        one, and `complete` finishes it only if the decision could improve. The frame used
        is the best full rating."""
        seen = st.seen
        full = [(*rate(ff.frame, True, ff.face.embedding), ff) for ff in seen.analysed]
        pending: Glimpse | None = None
        if seen.glimpses and not st.completed:
            rated = [(*rate(g.frame, False, g.embedding), g) for g in seen.glimpses]
            quick, found, best = max(rated, key=lambda t: t[0])
            if not full and far_stays_glimpse and not self._near_bar(quick):
                return _as_glimpsed(best), found, None
            if not full:
                done = self._complete_glimpse(st, best)
                full.append((*rate(done.frame, True, done.face.embedding), done))
            elif quick > full[0][0] - GLIMPSE_SLACK:
                pending = best
        _, found, used = max(full, key=lambda t: t[0])
        return used, found, pending

    def _complete_all(
        self, analysed: tuple[FrameFace, ...], glimpses: tuple[Glimpse, ...]
    ) -> tuple[tuple[FrameFace, ...], tuple[Glimpse, ...]]:
        """Every face frame analysed in full (liveness included), in frame order."""
        done = [self.identity.faces.complete(g) for g in glimpses]
        return tuple(sorted((*analysed, *done), key=lambda ff: ff.frame)), ()

    def _complete_glimpse(self, st: _State, glimpse: Glimpse) -> FrameFace:
        done: FrameFace = self.identity.faces.complete(glimpse)
        seen = st.seen
        st.seen = dataclasses.replace(
            seen,
            analysed=(*seen.analysed, done),
            glimpses=tuple(g for g in seen.glimpses if g is not glimpse),
        )
        st.completed = True
        return done

    def _search(self, st: _State, frame: int, full: bool, vec: np.ndarray) -> list[Match]:
        """The 1:N matches of one frame's face (full or glimpsed), searched once per event."""
        key = (frame, full)
        if key not in st.searches:
            st.searches[key] = self.identity.gallery.identify(vec, self.search_k, st.owners)
        return st.searches[key]

    def _frames_agree(self, seen: _Seen, used: FrameFace) -> bool:
        """Every other frame's face is the same person as the face used: a stranger's frame
        scores this high against it at most FRAMES_AGREE_FMR of the time. A glimpse's
        front-view embedding scores against a full one as a full one does (the same impostor
        rate at the bar on every sample group; tests/test_frames_agree.py)."""
        probe = used.face.embedding
        views = [(ff.frame, ff.face.embedding) for ff in seen.analysed]
        views += [(g.frame, g.embedding) for g in seen.glimpses]
        bar = self._frames_agree_score
        return all(float(np.dot(vec, probe)) >= bar for i, vec in views if i != used.frame)

    # --- plate payers -------------------------------------------------------------------------

    @staticmethod
    def _plate_payers(
        reads: Sequence[PlateResult], bound: Lookup, sure_confidence: float = 0.0
    ) -> PlateNames:
        """The read to report and, per identity, whether a read names its plate exactly or
        among the candidates. An identity matched both ways counts as exact. A read whose
        province was guessed names no plate exactly (its text is a candidate like the others),
        and when no read names a plate exactly it is the read reported, so the decision says
        the province was a guess. A candidate of a sure read (a valid camera read of another
        plate, its province seen, at least `sure_confidence`) is evidence against the plate
        it names (NO_MATCH): a look-alike plate cannot lean on the reader's second guess."""
        found: dict[str, PlateEvidence] = {}
        confidence: dict[str, float] = {}
        by_text: set[str] = set()
        shown: PlateResult | None = None
        for read in reads:
            if read.province_guessed:
                continue
            for pid in bound(read.text):
                if read.reader == TEXT_READER:
                    if pid not in found:
                        by_text.add(pid)
                else:
                    by_text.discard(pid)
                found[pid] = PlateEvidence.EXACT
                confidence[pid] = max(confidence.get(pid, 0.0), read.confidence)
                shown = shown or read
        # Guessed reads first: one that names a payer is the read reported, so the rules see
        # the guess even when another read's candidate names the payer who would pay.
        for read in sorted(reads, key=lambda r: not r.province_guessed):
            sure = _is_sure(read, sure_confidence)
            for text in read.candidate_texts:
                for pid in bound(text):
                    if pid in found:
                        continue
                    if sure:
                        found[pid] = PlateEvidence.NO_MATCH
                    else:
                        found[pid] = PlateEvidence.CANDIDATE
                        shown = shown or read
        if shown is None and reads:
            shown = max(reads, key=lambda r: r.confidence)
        return PlateNames(shown, found, confidence, frozenset(by_text))

    # --- the whole event ----------------------------------------------------------------------

    def gather(self, event: GateEvent, now: float, liveness: bool = False) -> Gathered:
        """The event's evidence on the fast path: a burst's best glimpse is not completed
        when the first frame was analysed in full (`complete` does that, if the decision
        could improve). Every frame is still checked to show the same person. When the
        policy requires `liveness`, every glimpse is completed at once instead, so that each
        face frame's liveness is assessed (any attack vetoes) and the frame used does not
        depend on the frames' order.

        Store reads, each once per event: the plates' holders with their bindings (one query
        per batch of texts), the payers' enrolled faces (one), the 1:N search's owners (one
        per face searched), the read plate's last sighting (one); for a payer found 1:N, its
        bindings and the gallery's size."""
        book = _PlateBook(self.store)
        found = self._run_branches(event, book)
        plates, analysed, glimpses = found.plate, found.analysed, found.glimpses
        if liveness and glimpses:
            analysed, glimpses = self._complete_all(analysed, glimpses)
        deadline.check("gate.match")
        names = self._plate_payers(plates.reads, book.holders, self.sure_confidence)
        read, by_plate = names.read, names.evidence
        if by_plate and glimpses and glimpses[0].frame == 0:
            # The plate names payers: the first frame is rated against them in full.
            analysed = (self.identity.faces.complete(glimpses[0]), *analysed)
            glimpses = glimpses[1:]
        seen = _Seen(names, plates.frames_read, plates.text_mismatch, analysed, glimpses)
        faces = bool(analysed or glimpses)
        templates = self.identity.gallery.templates_for(by_plate) if faces and by_plate else {}
        last = self.store.last_sighting(read.text) if read is not None else None
        st = _State(event, now, seen, book, templates, last, found.searches, found.owners)
        return self._assemble(st)

    def complete(self, gathered: Gathered) -> Gathered:
        """The evidence with the pending glimpse completed (its mirror view and liveness) and
        rated in full; the store is asked only what it was not asked before."""
        pending = gathered.state.pending if gathered.can_improve else None
        if pending is None:
            return gathered
        st = gathered.state
        self._complete_glimpse(st, pending)
        return self._assemble(st)

    def _rate_payers(
        self, st: _State
    ) -> Callable[[int, bool, np.ndarray], tuple[float, dict[str, IdentityScore | None]]]:
        gallery = self.identity.gallery

        def rate(
            frame: int, full: bool, vec: np.ndarray
        ) -> tuple[float, dict[str, IdentityScore | None]]:
            scores: dict[str, IdentityScore | None] = {}
            for pid in st.seen.by_plate:
                m = st.templates.get(pid)
                scores[pid] = (
                    None if m is None else IdentityScore(gallery.score_against(m, vec), len(m))
                )
            top = max((s.score for s in scores.values() if s is not None), default=-math.inf)
            return top, scores

        return rate

    def _rate_search(
        self, st: _State
    ) -> Callable[[int, bool, np.ndarray], tuple[float, list[Match]]]:
        def rate(frame: int, full: bool, vec: np.ndarray) -> tuple[float, list[Match]]:
            found = self._search(st, frame, full, vec)
            return (found[0].score if found else -math.inf), found

        return rate

    def _searched_payer(
        self, st: _State, top: Match, plate: PlateEvidence, frames: int
    ) -> Payer | None:
        """The face's best 1:N match as a payer (None without a binding), judged 1:N over
        the gallery's identities; the store is asked once per event."""
        if top.identity_id not in st.searched:
            st.searched[top.identity_id] = _bindings(self.store.payments_for(top.identity_id))
        bindings = st.searched[top.identity_id]
        if not bindings:
            return None
        if st.size is None:
            # Every identity's templates were compared: the most any one holds.
            st.size = (
                max(1, self.store.count_identities()),
                max(1, self.store.max_templates_per_identity()),
            )
        searched, templates = st.size
        return Payer(top.identity_id, plate, top.score, searched, bindings, templates, frames)

    def _assemble(self, st: _State) -> Gathered:
        """The evidence from what the branches saw and the store answered."""
        seen = st.seen
        read, by_plate = seen.read, seen.by_plate
        threshold = self.identity.threshold()
        payers: list[Payer] = []
        used: FrameFace | None = None
        pending: Glimpse | None = None
        scores: dict[str, IdentityScore | None] = {}
        matches: list[Match] = []
        # A burst's face is its best frame: an impostor's face gets one try per frame, and
        # the estimate counts them (Payer.frames), as it counts enrolled templates.
        frames = len(seen.analysed) + len(seen.glimpses)
        if frames and by_plate:
            used, scores, pending = self._choose(st, self._rate_payers(st))
            matches = self._search(st, used.frame, True, used.face.embedding)
        elif frames:
            used, matches, pending = self._choose(st, self._rate_search(st), True)
        seen = st.seen  # a glimpse completed while choosing joined the frames analysed
        for pid, plate in by_plate.items():
            scored = scores.get(pid)
            score, templates = (scored.score, scored.templates) if scored else (None, 1)
            payers.append(
                Payer(
                    pid,
                    plate,
                    score,
                    0,
                    st.book.bindings(pid),
                    templates,
                    frames,
                    plate_confidence=seen.names.confidence.get(pid, 0.0),
                    plate_by_text=pid in seen.names.by_text,
                )
            )
        face_elsewhere = False
        if used is not None:
            face_elsewhere = any(
                m.score >= threshold and m.identity_id not in by_plate for m in matches
            )
            if not by_plate and matches and matches[0].score >= threshold:
                # The plate names no payer: the face's best match, judged 1:N. Any plate that
                # was read is not this payer's (else the plate would have named them).
                plate = PlateEvidence.NO_MATCH if read is not None else PlateEvidence.ABSENT
                found = self._searched_payer(st, matches[0], plate, frames)
                if found is not None:
                    payers.append(found)
        probe = used.face if used is not None else None
        last = st.last
        event = st.event
        evidence = Evidence(
            gate_id=event.gate_id,
            amount_minor=event.amount_minor,
            direction=event.direction,
            now=st.now,
            vehicle_sent=bool(event.vehicle_images),
            plate_read=read is not None,
            face_sent=bool(event.face_images),
            face_found=probe is not None,
            face_threshold=threshold,
            payers=tuple(payers),
            face_elsewhere=face_elsewhere,
            last_sighting=Sighting(last.gate_id, last.direction, last.at, last.presence)
            if last
            else None,
            face_liveness=probe.liveness if probe is not None else None,
            burst_liveness=tuple(
                ff.face.liveness
                for ff in seen.analysed
                if used is not None and ff.frame != used.frame
            ),
            face_frames_agree=used is None or self._frames_agree(seen, used),
            face_frame=used.frame if used is not None else 0,
            vehicle_frames_read=seen.vehicle_frames_read,
            # The read reported is the one the plate evidence rests on (_plate_payers): a
            # guessed province there is evidence the rules weigh.
            plate_province_guessed=read is not None and read.province_guessed,
            plate_text_mismatch=seen.text_mismatch,
        )
        st.pending = pending
        return Gathered(evidence, read, probe, pending is not None, st)


def _as_glimpsed(glimpse: Glimpse) -> FrameFace:
    """A glimpse used as it is: a stranger's face far below the bar (GLIMPSE_MARGIN)."""
    return FrameFace(
        glimpse.frame,
        AnalyzedFace(glimpse.face, glimpse.quality, glimpse.embedding, glimpse.liveness),
    )
