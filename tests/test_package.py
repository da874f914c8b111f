"""The package's shape: which way its layers point, what a plain install needs, one version.

The layers, by import: ``lawn_monitor`` (Monitor, LAWN, sink, RunStore) imports neither the
project's ``trainers`` nor the checkout's ``app``; its core modules import only the core
dependencies at load time (optional ones inside the function that needs them); the dashboard,
the integrations and the command line sit on top and nothing in the core imports them; no module imports one that
imports it back, however indirectly (an import inside a function counts too).
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "lawn_monitor"
CORE_DEPENDENCIES = {"torch", "numpy", "pandas", "pyarrow", "duckdb"}
# What sits on the core: the dashboard, the adapters, and the command line that reaches them all.
ON_TOP = ("lawn_monitor.dashboard", "lawn_monitor.integrations", "lawn_monitor.cli")
TRAINERS = "lawn_monitor_trainers"  # the installed name of the repository's trainers/ folder (setup.py)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at load time?) for every import in the file; relative ones resolved.
    ``from package import name`` also counts ``package.name`` (it may be a module)."""
    tree = ast.parse(path.read_text(), str(path))
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    top_level = {id(node) for node in tree.body}
    for node in tree.body:  # imports under a top-level `if`/`try` run at load time too
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            continue  # for type checkers only: never run
        if isinstance(node, (ast.If, ast.Try)):
            top_level |= {id(n) for n in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module
            found.append((target, id(node) in top_level))
            found += [(f"{target}.{alias.name}", id(node) in top_level) for alias in node.names]
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def test_lawn_monitor_imports_neither_trainers_nor_app():
    wrong = [
        (name, target)
        for name, path in MODULES.items()
        for target, _ in imports(path)
        if target.split(".")[0] in ("trainers", TRAINERS, "app")
    ]
    assert not wrong, f"lawn_monitor must not depend on the trainers or the checkout's app: {wrong}"


def test_core_loads_with_core_dependencies_only():
    stdlib = set(sys.stdlib_module_names)
    wrong = []
    for name, path in MODULES.items():
        if name.startswith(ON_TOP):
            continue
        for target, at_load in imports(path):
            top = target.split(".")[0]
            if target.startswith(ON_TOP):
                wrong.append((name, target))  # the core never imports what sits on top of it
            elif at_load and top not in stdlib and top not in CORE_DEPENDENCIES and top != "lawn_monitor":
                wrong.append((name, target))
    assert not wrong, f"core modules importing optional packages at load time, or the layers above: {wrong}"


def test_no_import_cycle_inside_lawn_monitor():
    graph = {name: {t for t, _ in imports(path) if t in MODULES and t != name} for name, path in MODULES.items()}
    # The package's __init__ is the door for users (`from lawn_monitor import Monitor`), not a
    # module the others lean on: an edge into it is an edge into nothing.
    graph = {n: {t for t in targets if t != "lawn_monitor"} for n, targets in graph.items()}
    cycles = []

    def visit(node, path, on_path, done):
        on_path.add(node)
        path.append(node)
        for nxt in sorted(graph[node]):
            if nxt in on_path:
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in done:
                visit(nxt, path, on_path, done)
        on_path.discard(node)
        path.pop()
        done.add(node)

    done: set[str] = set()
    for node in sorted(graph):
        if node not in done:
            visit(node, [], set(), done)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_a_cycle_and_an_upward_import(tmp_path):
    """The rules above, against a deliberately bad file (so they cannot pass by seeing nothing)."""
    bad = PACKAGE / "_layer_check_probe.py"
    bad.write_text("from . import sink\nfrom trainers import train\n\n\ndef f():\n    import streamlit\n")
    try:
        found = imports(bad)
    finally:
        bad.unlink()
    assert ("lawn_monitor.sink", True) in found
    assert ("trainers", True) in found and ("streamlit", False) in found


@pytest.mark.slow
def test_core_works_without_any_extra(tmp_path):
    """`pip install lawn-monitor` without extras: Monitor, LAWN and RunStore import and work with
    the extras' packages made unimportable (as if never installed)."""
    blocked = [
        "streamlit",
        "altair",
        "sklearn",
        "timm",
        "torchvision",
        "mnist1d",
        "adamp",
        "tqdm",
        "polars",
        "s3fs",
        "fsspec",
        "tbparse",
        "tensorboard",
        "lightning",
        "transformers",
        "wandb",
        "mlflow",
    ]
    script = f"""
import sys
for name in {blocked!r}:
    sys.modules[name] = None  # `import name` now fails as if it were not installed
import warnings
warnings.simplefilter("ignore")
import torch
from torch import nn
from lawn_monitor import LAWN, Monitor, RunStore
model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
opt = LAWN(torch.optim.Adam(model.parameters(), lr=1e-3), free_steps=2)
x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
with Monitor(model, opt, root={str(tmp_path)!r}, name="core", probe_batch=(x[:8], y[:8])) as monitor:
    for _ in range(4):
        out = model(x); loss = nn.functional.cross_entropy(out, y)
        opt.zero_grad(); loss.backward(); opt.step()
        monitor.step(loss=loss, logits=out, targets=y)
store = RunStore({str(tmp_path)!r})
print(len(store.runs()), len(store.series(store.run_ids(), "train/loss")))
print(sorted(m for m, module in sys.modules.items() if module is not None and m.split(".")[0] in {blocked!r}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split("\n")[:2] == ["1 4", "[]"], out.stdout


def test_dependencies_and_extras():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = {dep.split(">")[0].split("=")[0].split("[")[0].strip() for dep in project["dependencies"]}
    assert core == CORE_DEPENDENCIES
    extras = project["optional-dependencies"]
    assert {"dashboard", "trainers", "s3", "all"} <= set(extras)
    assert any(dep.startswith("streamlit") for dep in extras["dashboard"])
    assert any(dep.startswith("fsspec") for dep in extras["s3"])  # imported by storage.py: named, not implied
    assert project["dynamic"] == ["version"] and "version" not in project
    assert (REPO / "LICENSE").read_text().startswith("MIT License")
    assert (PACKAGE / "py.typed").exists()


def test_one_version():
    from importlib.metadata import PackageNotFoundError, version

    import lawn_monitor

    try:
        installed = version("lawn-monitor")
    except PackageNotFoundError:
        pytest.skip("the project is not installed (pip install -e .)")
    assert installed == lawn_monitor.__version__


def test_storage_contract_document_matches_the_code():
    """docs/storage.md is the contract for readers outside Python: its row schema is SCHEMA's,
    every run.json field the reader knows is described, and the statuses are the writer's."""
    from lawn_monitor.runinfo import FIELDS
    from lawn_monitor.schema import SCHEMA, STATUSES

    doc = (REPO / "docs" / "storage.md").read_text()
    rows = doc.split("## Rows", 1)[1].split("##", 1)[0]
    table = [line.split("|")[1:3] for line in rows.splitlines() if line.startswith("| `")]
    documented = {name.strip().strip("`"): kind.strip() for name, kind in table}
    arrow = {"string": "string", "int64": "int64", "double": "float64"}
    assert documented == {f.name: arrow[str(f.type)] for f in SCHEMA}
    run_json = doc.split("## run.json", 1)[1].split("## writer.lock", 1)[0]
    missing = [field for field in FIELDS if f"`{field}`" not in run_json]
    assert not missing, f"run.json fields the store reads but docs/storage.md does not describe: {missing}"
    assert all(f"`{status}`" in run_json for status in STATUSES)


def test_no_test_file_imports_another():
    """Helpers that several test files share live in tests/helpers.py (fixtures in conftest.py):
    a test file imports neither another test file nor conftest."""
    tests = REPO / "tests"
    wrong = []
    for path in sorted(tests.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                leaf = name.split(".")[-1]
                if leaf == "conftest" or (leaf.startswith("test_") and (tests / f"{leaf}.py").exists()):
                    wrong.append((path.name, name))
    assert not wrong, f"import shared helpers from tests.helpers instead: {wrong}"


def test_the_trainers_import_their_own_modules_relatively():
    """The trainers/ folder is the package ``trainers`` in a checkout and ``lawn_monitor_trainers``
    installed (setup.py): it names neither, in an import or a module name it runs (``python -m``
    takes ``f"{__package__}.tune"``), so it works under both."""
    wrong = []
    for path in sorted((REPO / "trainers").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                names = [node.value] if re.fullmatch(r"\w+(\.\w+)+", node.value) else []
            wrong += [(str(path.relative_to(REPO)), n) for n in names if n.split(".")[0] in ("trainers", TRAINERS)]
    assert not wrong, f"import the trainers' own modules relatively (from .config import ...): {wrong}"


@pytest.mark.slow
def test_an_install_has_no_top_level_trainers_and_its_commands_work(tmp_path):
    """The wheel, installed into a fresh virtual environment: no top-level ``trainers`` in it,
    ``lawn_monitor_trainers`` in its place, and ``lawn-monitor train`` / ``sweep`` found through
    the entry points, from a folder outside the checkout. The wheel is installed without its
    dependencies (offline); the environment then sees this one's packages (a .pth file, added
    after the install so pip never sees another lawn-monitor)."""
    source = tmp_path / "source"
    skip = shutil.ignore_patterns(".git", ".venv", "runs", "data", "__pycache__", "*.egg-info", "build", ".*_cache")
    shutil.copytree(REPO, source, ignore=skip)
    pip = [sys.executable, "-m", "pip"]
    wheel_dir = tmp_path / "dist"
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(wheel_dir), str(source)]
    subprocess.run(build, check=True, capture_output=True, timeout=600)
    wheel = next(wheel_dir.glob("lawn_monitor-*.whl"))
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert TRAINERS in tops and "lawn_monitor" in tops and "trainers" not in tops, tops
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = [*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=600)
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], capture_output=True, text=True
    )
    deps = sysconfig.get_path("purelib")  # this environment's packages: torch, pandas, ...
    (Path(site.stdout.strip()) / "dependencies.pth").write_text(deps + "\n")
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LAWN_MONITOR_ROOT")}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=600)

    checks = run(
        str(python),
        "-c",
        "import importlib.util, lawn_monitor_trainers\n"
        "from lawn_monitor.store import not_computed\n"
        "print(importlib.util.find_spec('trainers'), lawn_monitor_trainers.__file__, 'workers' in not_computed())",
    )
    spec, where, pooled = checks.stdout.split()
    assert checks.returncode == 0 and spec == "None" and where.startswith(str(venv)) and pooled == "True", checks
    cli = str(venv / "bin" / "lawn-monitor")
    for command in ("train", "sweep"):
        usage = run(cli, command, "--help")
        assert usage.returncode == 0 and f"lawn-monitor {command}" in usage.stdout, usage.stderr
    trained = run(cli, "train", "--dataset", "digits", "--model", "mlp", "--epochs", "1", "--no-curvature")
    assert trained.returncode == 0 and trained.stdout.startswith("finished:"), trained.stderr
    assert (work / "runs").is_dir()
