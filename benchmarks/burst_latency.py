"""`bench burst-latency`: one-frame Authorize against a burst, through real servers.

Two `recognizer serve` subprocesses on loopback: this checkout, and (with --base-src) a
source tree of the release before bursts (e.g. `git archive <commit> | tar -x -C DIR`), run
with the same interpreter and models. Calls go one at a time, interleaved round robin over
the cases, so whatever else loads the machine loads every case alike; the ratios between
cases of one run are the figures to read.

Events are genuine: a payer enrolled with one photo, a PLATE_AND_FACE binding on a CCPD
scene's plate, another photo of the payer at the gate. A burst is the frame and the photo,
then seeded perturbed copies (benchmarks/bursts.py); "plate unbound" sends scenes whose
plate no one holds, so every vehicle frame is read (no early exit).
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.bursts import perturbed_frames
from benchmarks.report import Report, progress, shown
from benchmarks.service import enrol_payers, subprocess_server
from devtools.metrics import percentiles
from devtools.stats import ratio

ONE, BURST, UNBOUND, BASE = (
    "1 frame",
    "{n} frames, plate bound",
    "{n} frames, plate unbound",
    "1 frame, release before bursts",
)


def _sender(client: Any, **frames: Any) -> Callable[[], None]:
    from recognizer.v1 import gate_pb2

    def send() -> None:
        client.gate.Authorize(
            gate_pb2.AuthorizeRequest(
                gate_id="bench-gate",
                event_id=uuid.uuid4().hex,  # never a replay
                amount_minor=1000,
                currency="CNY",
                **frames,
            ),
            metadata=client.metadata,
            timeout=60,
        )

    return send


def run(
    out: Path,
    *,
    faces_dir: Path,
    plates_dir: Path,
    base_src: Path | None,
    requests: int,
    frames: int = 3,
    payers: int = 6,
    profile: str = "default",
) -> Report:
    from recognizer.client import Client

    scenes = sorted(plates_dir.glob("*.jpg"))
    bound, unbound = scenes[:payers], scenes[payers : 2 * payers]
    load_before = os.getloadavg()
    cases: dict[str, list[Callable[[], None]]] = {}
    with contextlib.ExitStack() as stack:
        servers = {"branch": stack.enter_context(subprocess_server(profile))}
        if base_src is not None:
            servers["base"] = stack.enter_context(
                subprocess_server(profile, env={"PYTHONPATH": str(base_src)}, cwd=base_src)
            )
        clients = {}
        for name, (target, key) in servers.items():
            clients[name] = stack.enter_context(contextlib.closing(Client.connect(target, key)))
        events = {name: enrol_payers(c, faces_dir, bound, payers) for name, c in clients.items()}
        branch = clients["branch"]
        for scene, photo in events["branch"]:
            v, f = scene.read_bytes(), photo.read_bytes()
            cases.setdefault(ONE, []).append(_sender(branch, vehicle_image=v, face_image=f))
            cases.setdefault(BURST.format(n=frames), []).append(
                _sender(
                    branch,
                    vehicle_images=perturbed_frames(scene, frames),
                    face_images=perturbed_frames(photo, frames),
                )
            )
        for (_, photo), scene in zip(events["branch"], unbound, strict=False):
            cases.setdefault(UNBOUND.format(n=frames), []).append(
                _sender(
                    branch,
                    vehicle_images=perturbed_frames(scene, frames),
                    face_images=perturbed_frames(photo, frames),
                )
            )
        if "base" in clients:
            for scene, photo in events["base"]:
                cases.setdefault(BASE, []).append(
                    _sender(
                        clients["base"],
                        vehicle_image=scene.read_bytes(),
                        face_image=photo.read_bytes(),
                    )
                )
        for sends in cases.values():  # warm-up, outside the measurement
            sends[0]()
        times: dict[str, list[float]] = {name: [] for name in cases}
        for i in progress(range(requests), "interleaved calls"):
            for name, sends in cases.items():
                t0 = time.perf_counter()
                sends[i % len(sends)]()
                times[name].append(1000 * (time.perf_counter() - t0))
    load_after = os.getloadavg()
    stats = {name: percentiles(ts, (50, 95)) for name, ts in times.items()}
    rep = Report("Authorize latency: one frame and bursts")
    rep.p(
        f"Servers: `recognizer serve --profile {profile}` subprocesses on loopback (this "
        f"checkout; the release before bursts from `{shown(base_src) if base_src else '-'}`). "
        f"{requests} calls per case, one at a time, interleaved round robin; {len(bound)} "
        f"payers (faces from `{shown(faces_dir)}`, frames from `{shown(plates_dir)}`). Load "
        f"average (1, 5, 15 min) before {tuple(round(x, 2) for x in load_before)}, after "
        f"{tuple(round(x, 2) for x in load_after)} on {os.cpu_count()} cores."
    )
    one = stats[ONE]["p50"]
    rows = [
        [name, len(times[name]), s["p50"], s["p95"], ratio(s["p50"], one)]
        for name, s in stats.items()
    ]
    rep.table(["case", "calls", "p50 ms", "p95 ms", "p50 / one frame (this checkout)"], rows)
    rep.results = {
        "profile": profile,
        "frames": frames,
        "load_before": load_before,
        "load_after": load_after,
        "p50_ms": {k: v["p50"] for k, v in stats.items()},
        "p95_ms": {k: v["p95"] for k, v in stats.items()},
        "times_ms": times,
    }
    rep.write(out)
    return rep
