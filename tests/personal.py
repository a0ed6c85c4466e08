"""Looking for personal strings at rest: every file under a folder, in every way a database,
a dump or a JSON document could hold them."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path


def forms(text: str) -> dict[bytes, str]:
    """The bytes a copy of `text` would hold: UTF-8, UTF-16 (both byte orders) and JSON's
    \\uXXXX escapes."""
    escaped = json.dumps(text, ensure_ascii=True)[1:-1]
    return {
        text.encode("utf-8"): "utf-8",
        text.encode("utf-16-le"): "utf-16-le",
        text.encode("utf-16-be"): "utf-16-be",
        escaped.encode("ascii"): "json",
    }


def needles(names: Iterable[str], plates: Iterable[str], refs: Iterable[str]) -> dict[bytes, str]:
    """Byte pattern -> what it is, for names, payment references, and plates with and without
    their province character."""
    out: dict[bytes, str] = {}
    texts = [*names, *refs]
    for plate in plates:
        texts += [plate, plate[1:]]
    for text in texts:
        for raw, how in forms(text).items():
            out[raw] = f"{text!r} ({how})"
    return out


def hits_in(data: bytes, pats: dict[bytes, str], where: str) -> list[str]:
    return [f"{where}: {what}" for raw, what in pats.items() if raw in data]


def scan(paths: Iterable[Path], pats: dict[bytes, str]) -> list[str]:
    """Every (file, string) where a pattern occurs, for files and every file under folders."""
    found: list[str] = []
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            found += hits_in(path.read_bytes(), pats, str(path))
    return found
