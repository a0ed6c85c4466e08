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


DEV = ("benchmarks", "devtools", "tests", "scripts")


def test_the_product_never_imports_development_code() -> None:
    """No module of the product names the development code in an import, with no exception
    (the benchmarks run as `python -m benchmarks`, never as a `recognizer` command)."""
    offenders = []
    for path in sorted((REPO / "recognizer").rglob("*.py")):
        if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
            continue
        source = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(source)):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif (
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                names = [str(node.args[0].value)]
            if any(n.split(".")[0] in DEV for n in names):
                offenders.append(f"{path.relative_to(REPO)}: {names}")
    assert not offenders, offenders


def test_the_command_line_loads_no_development_code() -> None:
    """Every command's help, the server and the CLI loaded: none of benchmarks, devtools,
    scripts or tests in sys.modules, although the checkout's root is on sys.path (as it is here)."""
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "import recognizer.cli, recognizer.service.server\n"
        "r = CliRunner().invoke(recognizer.cli.main, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "assert 'bench' not in recognizer.cli.main.commands\n"
        f"print(','.join(m for m in sys.modules if m.split('.')[0] in {DEV!r}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert out.stdout.strip() == "", f"development code loaded: {out.stdout.strip()}"


def test_the_wheel_packages_only_the_product() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["tool"]["setuptools"]["packages"]["find"]["include"] == ["recognizer*"]


def test_no_test_module_imports_another() -> None:
    """Shared helpers and fakes live in tests/helpers.py (and tests/images.py), so a test
    module can be read, moved or deleted on its own."""
    offenders = []
    for path in sorted((REPO / "tests").glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            hit = [n for n in names if n.startswith("tests.test_")]
            offenders += [f"{path.name}:{node.lineno} {n}" for n in hit]
    assert not offenders, offenders
