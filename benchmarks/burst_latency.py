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
from collections import defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from benchmarks.bursts import perturbed_frames
from benchmarks.report import Report, progress, shown, to_jsonable
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


def _cases(
    clients: dict[str, Any],
    events: dict[str, list[tuple[Path, Path]]],
    unbound: list[Path],
    frames: int,
) -> dict[str, list[Callable[[], None]]]:
    """The senders of each case: one frame and bursts (bound and unbound plates) on this
    checkout, one frame on the release before bursts."""
    cases: dict[str, list[Callable[[], None]]] = defaultdict(list)
    branch = clients["branch"]

    def burst(scene: Path, photo: Path) -> Callable[[], None]:
        vehicles, faces = perturbed_frames(scene, frames), perturbed_frames(photo, frames)
        return _sender(branch, vehicle_images=vehicles, face_images=faces)

    for scene, photo in events["branch"]:
        v, f = scene.read_bytes(), photo.read_bytes()
        cases[ONE].append(_sender(branch, vehicle_image=v, face_image=f))
        cases[BURST.format(n=frames)].append(burst(scene, photo))
    for (_, photo), scene in zip(events["branch"], unbound, strict=False):
        cases[UNBOUND.format(n=frames)].append(burst(scene, photo))
    for scene, photo in events.get("base", []):
        v, f = scene.read_bytes(), photo.read_bytes()
        cases[BASE].append(_sender(clients["base"], vehicle_image=v, face_image=f))
    return dict(cases)


def _interleaved(
    cases: dict[str, list[Callable[[], None]]], requests: int
) -> dict[str, list[float]]:
    """ms per call of each case, one call at a time, round robin over the cases."""
    for sends in cases.values():  # warm-up, outside the measurement
        sends[0]()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for i in progress(range(requests), "interleaved calls"):
        for name, sends in cases.items():
            t0 = time.perf_counter()
            sends[i % len(sends)]()
            times[name].append(1000 * (time.perf_counter() - t0))
    return times


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
    with contextlib.ExitStack() as stack:
        servers = {"branch": stack.enter_context(subprocess_server(profile))}
        if base_src is not None:
            servers["base"] = stack.enter_context(
                subprocess_server(profile, env={"PYTHONPATH": str(base_src)}, cwd=base_src)
            )
        clients = {
            name: stack.enter_context(contextlib.closing(Client.connect(target, key)))
            for name, (target, key) in servers.items()
        }
        events = {name: enrol_payers(c, faces_dir, bound, payers) for name, c in clients.items()}
        times = _interleaved(_cases(clients, events, unbound, frames), requests)
    stats = {name: percentiles(ts, (50, 95)) for name, ts in times.items()}
    results = {
        "profile": profile,
        "frames": frames,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "p50_ms": {k: v["p50"] for k, v in stats.items()},
        "p95_ms": {k: v["p95"] for k, v in stats.items()},
        "times_ms": times,
        "inputs": {
            "base": shown(base_src) if base_src else "-",
            "requests": requests,
            "payers": len(bound),
            "faces": shown(faces_dir),
            "plates": shown(plates_dir),
            "cores": os.cpu_count(),
        },
    }
    rep = render(results)
    rep.write(out)
    return rep


def render(results: Mapping[str, Any]) -> Report:
    """The report of a results tree (a run's, or an earlier run's rows.json)."""
    tree = to_jsonable(results)
    inputs = tree["inputs"]
    rep = Report("Authorize latency: one frame and bursts")
    rep.p(
        f"Servers: `recognizer serve --profile {tree['profile']}` subprocesses on loopback "
        f"(this checkout; the release before bursts from `{inputs['base']}`). "
        f"{inputs['requests']} calls per case, one at a time, interleaved round robin; "
        f"{inputs['payers']} payers (faces from `{inputs['faces']}`, frames from "
        f"`{inputs['plates']}`). Load average (1, 5, 15 min) before "
        f"{tuple(round(x, 2) for x in tree['load_before'])}, after "
        f"{tuple(round(x, 2) for x in tree['load_after'])} on {inputs['cores']} cores."
    )
    p50, p95, one = tree["p50_ms"], tree["p95_ms"], tree["p50_ms"][ONE]
    rep.table(
        ["case", "calls", "p50 ms", "p95 ms", "p50 / one frame (this checkout)"],
        [
            [name, len(tree["times_ms"][name]), p50[name], p95[name], ratio(p50[name], one)]
            for name in p50
        ],
    )
    rep.results = dict(results)
    return rep
