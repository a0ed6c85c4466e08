"""Judge a finished `mutmut run` (make test-mutants): every mutant of the gate rules, the
fusion model and the gate policies must be killed by the tests, except those listed in the
equivalents file with a reason each (a mutant that no test can tell apart from the code,
because it computes the same thing).

Prints the figures (mutants, killed, equivalents) and exits 1 when a mutant survived that
is not listed, when the run left mutants unchecked, or when a listed equivalent has no
reason or is no longer a survivor (the list must stay true to the code)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections import Counter
from pathlib import Path

KILLED = {"killed", "timeout", "caught by type check", "segfault"}


def results(mutmut: str) -> dict[str, str]:
    out = subprocess.run(
        [mutmut, "results", "--all", "true"], capture_output=True, text=True, check=True
    ).stdout
    found: dict[str, str] = {}
    for line in out.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and name:
            found[name] = status.strip()
    return found


def equivalents(path: Path) -> dict[str, str]:
    """name -> reason, from lines `name  # reason` (blank lines and # comments skipped)."""
    listed: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, _, reason = line.partition("#")
        listed[name.strip()] = reason.strip()
    return listed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("equivalents", type=Path)
    ap.add_argument("--mutmut", default=str(Path(sys.executable).with_name("mutmut")))
    args = ap.parse_args()
    found = results(args.mutmut)
    listed = equivalents(args.equivalents)
    counts = Counter("killed" if s in KILLED else s for s in found.values())
    survivors = {n for n, s in found.items() if s not in KILLED}
    unexplained = sorted(survivors - set(listed))
    stale = sorted(n for n in listed if found.get(n) in KILLED or n not in found)
    no_reason = sorted(n for n, reason in listed.items() if not reason)
    print(
        f"mutants {len(found)}, killed {counts['killed']}, "
        f"equivalent {len(survivors & set(listed))}, other survivors {len(unexplained)}"
    )
    for n in unexplained:
        print(f"SURVIVED (not a listed equivalent): {n} [{found[n]}]  (mutmut show {n})")
    for n in stale:
        print(f"listed as equivalent but {found.get(n, 'not a mutant any more')}: {n}")
    for n in no_reason:
        print(f"listed as equivalent without a reason: {n}")
    return 1 if unexplained or stale or no_reason or not found else 0


if __name__ == "__main__":
    raise SystemExit(main())
