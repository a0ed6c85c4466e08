"""`python -m benchmarks faces|plates|service ...`."""

from benchmarks.cli import bench

if __name__ == "__main__":
    bench(prog_name="python -m benchmarks")
