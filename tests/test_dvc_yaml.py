"""dvc.yaml guards: each stage's deps cover the code it runs, and each templated dep's key is one of its params.

The code a stage runs is the import closure of `stages/<name>.py` within the project (slmops, stages), read with
`ast`: every `import`/`from ... import` anywhere in a module (lazy ones inside functions too), a submodule named
in `from package import submodule`, a child process started as `python -m <module>`, and the data files a
module opens by a path built from its own `__file__` (`Path(__file__).parent / "x.json"`).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

PROJECT_PACKAGES = ("slmops", "stages")
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())
STAGES = DVC["stages"]
TEMPLATE = re.compile(r"\$\{\s*([\w.]+)\s*\}")


def module_file(name: str) -> Path | None:
    """The file of a project module by dotted name (a package's __init__.py), or None."""
    if name.split(".")[0] not in PROJECT_PACKAGES:
        return None
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def empty(path: Path) -> bool:
    """A package __init__.py with nothing in it: importing the package runs no code of the project."""
    return not path.read_text().strip()


def _path_of(node, file: Path, names: dict[str, Path]) -> Path | None:
    """The path an expression built from `__file__` evaluates to, or None when it is not one."""
    if isinstance(node, ast.Name):
        return file if node.id == "__file__" else names.get(node.id)
    if isinstance(node, ast.Call):
        if isinstance(node.func, ast.Name) and node.func.id == "Path" and len(node.args) == 1:
            return _path_of(node.args[0], file, names)
        if isinstance(node.func, ast.Attribute) and node.func.attr in ("resolve", "absolute"):
            return _path_of(node.func.value, file, names)
    if isinstance(node, ast.Attribute) and node.attr == "parent":
        base = _path_of(node.value, file, names)
        return base.parent if base else None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(node.right, ast.Constant):
        base = _path_of(node.left, file, names)
        return base / node.right.value if base and isinstance(node.right.value, str) else None
    return None


def data_files(tree: ast.Module, file: Path) -> set[Path]:
    """Existing non-.py files that a module reaches by a path built from its own `__file__`."""
    names: dict[str, Path] = {}
    for stmt in tree.body:  # module-level names bound to such paths: ROOT = Path(__file__).parent
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            path = _path_of(stmt.value, file, names)
            if path is not None:
                names[stmt.targets[0].id] = path
    found = {_path_of(node, file, names) for node in ast.walk(tree) if isinstance(node, ast.BinOp)}
    return {p.resolve() for p in found if p is not None and p.suffix != ".py" and p.is_file()}


def imported_modules(tree: ast.Module, name: str, is_package: bool) -> set[str]:
    """Dotted names of the modules a module imports or starts with `python -m`."""
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            parent = ".".join([*base, node.module] if node.module else base)
            found.add(parent)
            found.update(f"{parent}.{alias.name}" for alias in node.names if module_file(f"{parent}.{alias.name}"))
        elif isinstance(node, ast.List | ast.Tuple | ast.Call):
            items = node.args if isinstance(node, ast.Call) else node.elts
            values = [item.value if isinstance(item, ast.Constant) else None for item in items]
            found.update(v for flag, v in zip(values, values[1:], strict=False) if flag == "-m" and isinstance(v, str))
    return found


def closure(stage: str) -> set[Path]:
    """Project files a stage runs or reads through its code: modules, non-empty package __init__s, data files."""
    start = ROOT / "stages" / f"{stage}.py"
    seen: set[Path] = set()
    todo = [start]
    while todo:
        file = todo.pop()
        if file in seen:
            continue
        seen.add(file)
        if file.suffix != ".py":
            continue
        tree = ast.parse(file.read_text(), filename=str(file))
        name = module_name(file)
        for module in imported_modules(tree, name, file.name == "__init__.py"):
            parts = module.split(".")
            for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__ and a/b/c
                path = module_file(".".join(parts[:depth]))
                implicit_package = depth < len(parts) and path is not None and empty(path)
                if path is not None and not implicit_package:
                    todo.append(path)
        todo.extend(data_files(tree, file))
    return {p for p in seen if not (p.name == "__init__.py" and empty(p))}


def covered(path: Path, deps: list[str]) -> bool:
    relative = path.relative_to(ROOT)
    return any(relative == Path(dep) or Path(dep) in relative.parents for dep in deps)


def plain_deps(stage: str) -> list[str]:
    return [dep for dep in STAGES[stage].get("deps", []) if not TEMPLATE.search(dep)]


def declared_params(stage: str) -> set[str]:
    keys = set()
    for entry in STAGES[stage].get("params", []):
        if isinstance(entry, str):
            keys.add(entry)
        else:  # {file: [keys]}
            for file, names in entry.items():
                if file == "params.yaml":
                    keys.update(names or [])
    return keys


def test_every_stage_has_its_module():
    assert sorted(STAGES) == sorted(p.stem for p in (ROOT / "stages").glob("*.py") if p.stem != "__init__")
    for name, stage in STAGES.items():
        assert stage["cmd"] == f"python -m stages.{name}", name


def test_the_closure_reader_sees_what_it_must():
    """The reader itself, on the known cases: a `python -m` child, a `from package import module`, a data file."""
    evaluate, package = closure("evaluate"), closure("package")
    assert ROOT / "slmops/eval/benchmark.py" in evaluate  # runs itself as `python -m slmops.eval.benchmark`
    assert ROOT / "slmops/foundry/manifest.schema.json" in package  # Path(__file__).parent / "manifest.schema.json"
    assert ROOT / "stages/package.py" in package and ROOT / "slmops/core/task.py" in package
    assert ROOT / "slmops/__init__.py" in package  # runs first on every `import slmops...`
    assert not any(p.name == "__init__.py" and empty(p) for p in package)  # empty packages are no code
    # slmops.train.parallel hands distill and finetune to Azure ML's multi-node jobs: its code is theirs
    assert {stage for stage in STAGES if ROOT / "slmops/azureml.py" in closure(stage)} == {"distill", "finetune"}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_deps_cover_the_code_the_stage_runs(stage):
    deps = plain_deps(stage)
    missing = sorted(str(p.relative_to(ROOT)) for p in closure(stage) if not covered(p, deps))
    assert not missing, f"stage '{stage}' runs or reads {missing}, which its deps in dvc.yaml do not cover"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_code_deps_are_in_the_closure(stage):
    """No stale code deps: each slmops/stages dep exists and holds code the stage runs (else it reruns for nothing)."""
    files = closure(stage)
    for dep in plain_deps(stage):
        if dep.split("/")[0] not in PROJECT_PACKAGES:
            continue
        path = ROOT / dep
        assert path.exists(), f"stage '{stage}': dep {dep} does not exist"
        assert any(p == path or path in p.parents for p in files), (
            f"stage '{stage}': dep {dep} holds nothing the stage imports or reads"
        )


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_templated_deps_are_declared_params(stage):
    declared = declared_params(stage)
    for dep in STAGES[stage].get("deps", []):
        for key in TEMPLATE.findall(dep):
            prefixes = {".".join(key.split(".")[:n]) for n in range(1, key.count(".") + 2)}
            assert prefixes & declared, (
                f"stage '{stage}': dep {dep} reads {key}, not among its params {sorted(declared)}"
            )
