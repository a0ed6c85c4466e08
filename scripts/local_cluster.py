"""One command for a local cluster: PostgreSQL and two recognizer nodes on loopback.

    make cluster                      # or: .venv/bin/python scripts/local_cluster.py
    .venv/bin/python scripts/local_cluster.py --nodes 3 --dir var/cluster

Node k listens on 127.0.0.1:(50061 + k) with /metrics on 9471 + k, and keeps its index file
in DIR/node-k; all share the PostgreSQL cluster in DIR/pg. Ctrl-C stops the nodes and the
database. For trying it out only: keys are the development keys of `make serve`, and the
database trusts every local connection.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from devtools import pg_local

DEV_KEYS = "admin:dev-admin-key,verifier:dev-verifier-key,gate:dev-gate-key"


def _interrupt(*_: object) -> None:
    """SIGTERM stops the cluster as Ctrl-C does (main's finally), leaving no process."""
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=Path("var/cluster"))
    parser.add_argument("--base-port", type=int, default=50061)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _interrupt)
    root = args.dir.resolve()
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)  # under root, the database runs as another user and must get in
    db = pg_local.start(root / "pg")
    print(f"PostgreSQL: {db.url}", flush=True)
    env = {
        **os.environ,
        "RECOGNIZER_DATABASE_URL": db.url,
        "RECOGNIZER_API_KEYS": os.environ.get("RECOGNIZER_API_KEYS", DEV_KEYS),
        # A development cluster, like `make serve`: unsealed unless a template key is set.
        "RECOGNIZER_ALLOW_PLAINTEXT": os.environ.get("RECOGNIZER_ALLOW_PLAINTEXT", "true"),
    }
    nodes: list[subprocess.Popen[bytes]] = []
    try:
        for k in range(args.nodes):
            port, metrics = args.base_port + k, 9471 + k
            nodes.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "recognizer.cli",
                        "serve",
                        "--port",
                        str(port),
                        "--data-dir",
                        str(root / f"node-{k}"),
                    ],
                    env={**env, "RECOGNIZER_METRICS_PORT": str(metrics)},
                )
            )
            print(f"node {k}: 127.0.0.1:{port}  metrics :{metrics}", flush=True)
        print("Ctrl-C stops the cluster.", flush=True)
        while all(n.poll() is None for n in nodes):
            time.sleep(0.5)
        print("a node exited; stopping the cluster", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for n in nodes:
            if n.poll() is None:
                n.send_signal(signal.SIGTERM)
        for n in nodes:
            n.wait(30)
        db.stop()


if __name__ == "__main__":
    sys.exit(main())
