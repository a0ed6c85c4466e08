"""The product package holds the product: light client imports, no development code."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib

from tests.conftest import REPO

HEAVY = ("onnxruntime", "cv2", "faiss", "recognizer.service.server")


def test_client_and_cli_import_neither_the_runtime_nor_the_server() -> None:
    code = (
        "import sys, recognizer.client, recognizer.cli, recognizer.cli_client\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert out.stdout.strip() == "", f"client imports pulled in: {out.stdout.strip()}"


def test_the_product_never_imports_development_code() -> None:
    offenders = []
    for path in sorted((REPO / "recognizer").rglob("*.py")):
        if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            dev = any(n.split(".")[0] in ("benchmarks", "tests", "scripts") for n in names)
            # The one allowed door: `recognizer bench` mounts the benchmarks if present.
            if dev and path.name != "cli.py":
                offenders.append(f"{path.relative_to(REPO)}: {names}")
    assert not offenders, offenders


def test_the_wheel_packages_only_the_product() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["tool"]["setuptools"]["packages"]["find"]["include"] == ["recognizer*"]
