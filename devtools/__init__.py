"""Development code shared by the scripts, the benchmarks and the tests (issue 33): synthetic
plates and presentation attacks, dataset parsing, statistics and a local PostgreSQL.

Never shipped (the wheel holds `recognizer*` only) and never imported by the product (an
import-linter contract in pyproject.toml). `make install` puts the checkout on the venv's path
(a .pth file), so `python scripts/x.py` imports `devtools` and `benchmarks` with no path hacks.
"""
