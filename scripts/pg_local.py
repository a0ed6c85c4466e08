"""A throwaway PostgreSQL server on 127.0.0.1 (devtools/pg_local.py), from the command line.

    python scripts/pg_local.py /tmp/pg         # start (or reuse) a cluster there; prints its URL
    python scripts/pg_local.py /tmp/pg --stop

The library (start, throwaway, Cluster) is devtools.pg_local, for the tests and benchmarks.
"""

from __future__ import annotations

import sys

from devtools.pg_local import main

if __name__ == "__main__":
    sys.exit(main())
