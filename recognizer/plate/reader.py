"""CTC text-line reader shared by PP-OCRv4 rec and the clp_v2_c plate recogniser.

Both models are CRNN-style: a fixed-height line image in, a (T, C) softmax out, class 0 the
CTC blank. They differ only in input height, colour order, width policy and charset, so one
class with a config covers both and the pre/post-processing exists once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from recognizer.onnx import OnnxModel

# Characters a plate never holds but readers emit: PP-OCRv4 reads the separator dot (and
# sometimes a middle dot or hyphen) and a space class sits at the end of its output.
DROP_CHARS = frozenset(" .·•-_'\"、,，:：")


@dataclass(frozen=True, slots=True)
class Reading:
    text: str  # greedy CTC decode with DROP_CHARS removed
    char_probs: tuple[float, ...]  # one per character of text
    # Per character of text: the top alternatives (char, prob) at that position, best first,
    # restricted to the reader's candidate alphabet when it has one.
    alternatives: tuple[tuple[tuple[str, float], ...], ...]
    probs: np.ndarray  # (T, C) float32 per-timestep class probabilities
    reader: str  # model name
    # Best (char, prob) hidden in the blank frames before the first / after the last
    # character: where a faint province or suffix the greedy path skipped would be.
    leading: tuple[tuple[str, float], ...] = ()
    trailing: tuple[tuple[str, float], ...] = ()

    @property
    def confidence(self) -> float:
        return float(np.prod(self.char_probs)) if self.char_probs else 0.0


def load_charset_lines(text: str) -> list[str]:
    """One character per line; trailing empty lines (file end) are not characters."""
    lines = text.split("\n")
    while lines and lines[-1] == "":
        lines.pop()
    return [ln.rstrip("\r") for ln in lines]


def ctc_greedy(probs: np.ndarray, blank: int = 0) -> list[tuple[int, float, int, int]]:
    """Best-path decode: collapse repeats, drop blanks.

    Returns (class, prob, first_t, last_t) per emitted symbol; prob is the segment's peak
    probability for that class (the frame where the model is most sure).
    """
    best = probs.argmax(axis=1)
    out: list[tuple[int, float, int, int]] = []
    prev = -1
    for t, c in enumerate(best.tolist()):
        if c != blank:
            if c != prev:
                out.append((c, float(probs[t, c]), t, t))
            else:
                cls, p, t0, _ = out[-1]
                out[-1] = (cls, max(p, float(probs[t, c])), t0, t)
        prev = c
    return out


def ctc_log_likelihoods(
    probs: np.ndarray, labels: np.ndarray, lengths: np.ndarray, blank: np.ndarray
) -> np.ndarray:
    """log P(label sequence | probs) for K sequences at once (the CTC forward algorithm).

    ``probs`` is (T, C); ``labels`` (K, L) class indices, row k valid up to ``lengths[k]``;
    ``blank`` (T,) the per-frame probability of emitting nothing. Unlike the greedy path
    this sums over every alignment, so it can rank texts the greedy decode never produced.
    """
    p = probs.astype(np.float64)
    k, n = labels.shape
    s = 2 * n + 1
    emit = np.empty((p.shape[0], k, s))
    emit[:, :, 0::2] = blank[:, None, None]
    emit[:, :, 1::2] = p[:, labels]
    np.maximum(emit, 1e-12, out=emit)
    # A label may be skipped to only from a blank between two different labels.
    skip = np.zeros((k, s), bool)
    skip[:, 3::2] = labels[:, 1:] != labels[:, :-1]
    alpha = np.zeros((k, s))
    alpha[:, :2] = emit[0, :, :2]
    log_scale = np.zeros(k)
    for t in range(1, p.shape[0]):
        nxt = alpha.copy()
        nxt[:, 1:] += alpha[:, :-1]
        nxt[:, 2:] += np.where(skip[:, 2:], alpha[:, :-2], 0.0)
        alpha = nxt * emit[t]
        norm = np.maximum(alpha.sum(1, keepdims=True), 1e-300)  # rescale against underflow
        alpha /= norm
        log_scale += np.log(norm[:, 0])
    rows = np.arange(k)
    # A path ends on the last label or on the blank after it (an empty text: the blank).
    last = np.where(lengths > 0, alpha[rows, np.maximum(2 * lengths - 1, 0)], 0.0)
    end = alpha[rows, 2 * lengths] + last
    out: np.ndarray = log_scale + np.log(np.maximum(end, 1e-300))
    return out


class CtcReader:
    """Reads one plate line image into text with per-character probabilities.

    ``charset[i]`` is the label of output class ``i + 1`` (class 0 is the blank); a class
    past the charset (PP-OCR's trailing space) decodes as a space and is dropped.
    """

    def __init__(
        self,
        model: OnnxModel,
        charset: Sequence[str],
        input_height: int,
        *,
        name: str | None = None,
        rgb: bool = True,
        mean: float = 0.5,
        std: float = 0.5,
        max_width: int = 320,
        fixed_width: int | None = None,
        width_ratio: float = 1.0,
        pad_to: int = 0,
        candidate_chars: Iterable[str] | None = None,
        top_k: int = 6,
    ) -> None:
        self.model = model
        self.charset = list(charset)
        self.labels = ["", *self.charset]
        self.input_height = input_height
        self.name = name or model.name
        self.rgb = rgb
        self.mean = mean
        self.std = std
        self.max_width = max_width
        self.fixed_width = fixed_width
        self.width_ratio = width_ratio
        # PP-OCR trains on lines padded to 320 px; reading a plate padded the same way fixed
        # most D/0, G/6 and Q/0 confusions on the real crops (97.7% -> 98.8% exact); 256 px
        # reads as well for less (pipeline.PP_OCR_PAD_TO).
        self.pad_to = pad_to
        self.top_k = top_k
        self._class_of = {ch: i for i, ch in enumerate(self.labels) if ch}
        # Classes the decoder drops (separator dots, PP-OCR's trailing space) count as blank
        # when scoring a text: the plate string never contains them.
        self._silent = np.array(
            [i for i, ch in enumerate(self.labels) if ch in DROP_CHARS], dtype=np.int64
        )
        self._cand_idx: np.ndarray | None = None
        if candidate_chars is not None:
            wanted = set(candidate_chars)
            idx = [i for i, ch in enumerate(self.labels) if ch in wanted]
            self._cand_idx = np.array(idx, dtype=np.int64)

    def _label(self, cls: int) -> str:
        return self.labels[cls] if cls < len(self.labels) else " "

    def _target_width(self, crop: np.ndarray) -> int:
        if self.fixed_width is not None:
            return self.fixed_width
        h, w = crop.shape[:2]
        width = round(self.input_height * w / max(h, 1) * self.width_ratio)
        return int(np.clip(width, self.input_height, self.max_width))

    def _padded_width(self, width: int) -> int:
        """The width of the line a crop of this target width is read in, alone."""
        return max(width, self.pad_to)

    def preprocess(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Resize every crop to the model height and pad them on the right to one width."""
        widths = [self._target_width(c) for c in crops]
        batch_w = max(self._padded_width(w) for w in widths)
        # Zero after normalisation == mid-grey, which the models saw as padding in training.
        out = np.zeros((len(crops), 3, self.input_height, batch_w), np.float32)
        for i, (crop, w) in enumerate(zip(crops, widths, strict=True)):
            img = crop if crop.ndim == 3 else cv2.cvtColor(crop, cv2.COLOR_GRAY2BGR)
            img = cv2.resize(img, (w, self.input_height), interpolation=cv2.INTER_LINEAR)
            if self.rgb:
                img = img[..., ::-1]
            x = (img.astype(np.float32) / 255.0 - self.mean) / self.std
            out[i, :, :, :w] = x.transpose(2, 0, 1)
        return out

    def decode(self, probs: np.ndarray) -> Reading:
        """Greedy CTC plus per-position alternatives for candidate ranking."""
        chars: list[str] = []
        cprobs: list[float] = []
        alts: list[tuple[tuple[str, float], ...]] = []
        first_t, last_t = probs.shape[0], -1
        for cls, p, t0, t1 in ctc_greedy(probs):
            ch = self._label(cls)
            if ch in DROP_CHARS:
                continue
            first_t, last_t = min(first_t, t0), max(last_t, t1)
            # The segment's peak frame carries the model's belief about this character.
            seg = probs[t0 : t1 + 1]
            frame = seg[int(seg[:, cls].argmax())]
            alts.append(self._alternatives(frame))
            chars.append(ch)
            cprobs.append(p)
        lead = self._alternatives(probs[:first_t].max(0)) if 0 < first_t < probs.shape[0] else ()
        trail = (
            self._alternatives(probs[last_t + 1 :].max(0))
            if 0 <= last_t < probs.shape[0] - 1
            else ()
        )
        return Reading("".join(chars), tuple(cprobs), tuple(alts), probs, self.name, lead, trail)

    def _alternatives(self, frame: np.ndarray) -> tuple[tuple[str, float], ...]:
        idx = self._cand_idx if self._cand_idx is not None else np.arange(frame.shape[0])
        idx = idx[idx < frame.shape[0]]
        vals = frame[idx]
        k = min(self.top_k, len(idx))
        top = np.argpartition(-vals, k - 1)[:k]
        top = top[np.argsort(-vals[top])]
        return tuple((self._label(int(idx[j])), float(vals[j])) for j in top)

    def log_likelihoods(self, reading: Reading, texts: Sequence[str]) -> np.ndarray:
        """log P(text | reading) for each text under this reader's CTC output."""
        probs = reading.probs
        if not texts:
            return np.zeros(0)
        # A character outside the charset maps to an extra all-but-impossible class.
        probs = np.concatenate([probs, np.full((probs.shape[0], 1), 1e-12, probs.dtype)], 1)
        missing = probs.shape[1] - 1
        n = max(len(t) for t in texts)
        labels = np.zeros((len(texts), max(n, 1)), np.int64)
        for k, text in enumerate(texts):
            labels[k, : len(text)] = [self._class_of.get(ch, missing) for ch in text]
        past_charset = probs[:, len(self.labels) : missing].sum(1)  # PP-OCR's space
        blank = probs[:, 0] + probs[:, self._silent].sum(1) + past_charset
        lengths = np.array([len(t) for t in texts], np.int64)
        return ctc_log_likelihoods(probs, labels, lengths, blank)

    def read_batch(self, crops: Sequence[np.ndarray]) -> list[Reading]:
        """Each crop read as it would be alone: the reader mixes a whole padded line, so a crop
        padded to a wider companion's width could read otherwise (7 of 200 real crops at
        270 px did beside a 330-px one). Crops are batched by the width they pad to."""
        groups: dict[int, list[int]] = {}
        for i, crop in enumerate(crops):
            groups.setdefault(self._padded_width(self._target_width(crop)), []).append(i)
        readings: dict[int, Reading] = {}
        for idx in groups.values():
            (out,) = self.model.run(self.preprocess([crops[i] for i in idx]))
            readings.update((i, self.decode(out[k])) for k, i in enumerate(idx))
        return [readings[i] for i in range(len(crops))]

    def read(self, crop_bgr: np.ndarray) -> Reading:
        return self.read_batch([crop_bgr])[0]
