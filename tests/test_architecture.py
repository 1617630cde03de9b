"""The import structure matches docs/ARCHITECTURE.md: the layers table there is read here, and every
import (module-level and inside functions) of clipita/, the top-level modules, space/ and bench/ is
checked against it: no import of a higher layer, no import cycle, remote code importing only what a
model folder's users have."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections import defaultdict
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "ARCHITECTURE.md"
REMOTE_CODE = ("configuration_clipita", "modeling_clipita", "processing_clipita", "custom_st")
REMOTE_CODE_MAY_IMPORT = {"torch", "transformers", "numpy", "PIL", *sys.stdlib_module_names, *REMOTE_CODE}
SCRIPT_FOLDERS = ("space", "bench")  # run as scripts too: their modules import each other as top-level names


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def project_files() -> dict[str, Path]:
    """Module name -> file, for every module the layers cover."""
    paths = [p for p in ROOT.glob("*.py")]
    paths += [p for folder in ("clipita", *SCRIPT_FOLDERS) for p in (ROOT / folder).rglob("*.py")]
    return {module_name(p): p for p in sorted(paths) if "__pycache__" not in p.parts}


@cache
def layers() -> dict[str, int]:
    """docs/ARCHITECTURE.md's "Layers" table: listed name -> layer ("x.*" is the package x and its modules)."""
    text = DOC.read_text()
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    listed: dict[str, int] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and re.match(r"^\d+\b", cells[0]):
            for name in re.findall(r"`([\w.*]+)`", cells[1]):
                listed[name] = int(re.match(r"^\d+", cells[0]).group())
    assert listed, f"no layers table under '## Layers' in {DOC}"
    return listed


def layer_of(module: str) -> int | None:
    table = layers()
    if module in table:
        return table[module]
    packages = [name[:-2] for name in table if name.endswith(".*")]
    owners = [p for p in packages if module == p or module.startswith(p + ".")]
    return table[max(owners, key=len) + ".*"] if owners else None


def _not_imported_by_users(tree: ast.Module) -> set[int]:
    """ids of the import nodes under `if TYPE_CHECKING:` (never executed) and `if __name__ == "__main__":`
    (run only when the module is itself the command line, an entry point above every layer)."""
    skipped = set()
    for node in ast.walk(tree):
        test = ast.unparse(node.test) if isinstance(node, ast.If) else ""
        if "TYPE_CHECKING" in test or test in ("__name__ == '__main__'", '__name__ == "__main__"'):
            skipped |= {id(child) for stmt in node.body for child in ast.walk(stmt)}
    return skipped


def _project_target(name: str, importer: str) -> str | None:
    """The project module an absolute import name loads (longest project prefix), or None."""
    modules = project_files()
    folder = importer.split(".")[0]
    candidates = [name]
    if folder in SCRIPT_FOLDERS and importer != folder:
        candidates.insert(0, f"{folder}.{name}")  # a sibling, imported the way the script runs it
    for candidate in candidates:
        parts = candidate.split(".")
        for end in range(len(parts), 0, -1):
            prefix = ".".join(parts[:end])
            if prefix in modules and (end > 1 or candidate == name):
                return prefix
    return None


@cache
def imports_of(module: str) -> tuple[frozenset[str], frozenset[str]]:
    """(project modules it imports, top-level names of the other packages it imports), every import
    statement of the file counted (inside functions too), except those under `if TYPE_CHECKING:` or `if __name__ == "__main__":`."""
    path = project_files()[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    skipped = _not_imported_by_users(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    project, external = set(), set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                stem = ".".join([*base, node.module] if node.module else base)
            else:
                stem = node.module or ""
            if stem == "__future__":
                continue
            names = [f"{stem}.{alias.name}" if stem else alias.name for alias in node.names]
            names = [n if _project_target(n, module) == n else stem for n in names]
        for name in names:
            target = _project_target(name, module)
            if target is None:
                external.add(name.split(".")[0])
            elif target != module:
                project.add(target)
    return frozenset(project), frozenset(external)


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it loads: the ones it names, and the packages those live in (their
    __init__ runs first) when the importer is outside that package."""
    graph: dict[str, set[str]] = defaultdict(set)
    for module in project_files():
        for target in imports_of(module)[0]:
            graph[module].add(target)
            parts = target.split(".")
            for end in range(1, len(parts)):
                parent = ".".join(parts[:end])
                if parent in project_files() and not module.startswith(parent + ".") and parent != module:
                    graph[module].add(parent)
    return graph


def cycles(graph: dict[str, set[str]], nodes: set[str]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), restricted to `nodes`."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(set(graph.get(node, ())) & nodes):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(nodes):
        if node not in index:
            visit(node)
    return found


def test_every_module_has_a_layer():
    missing = sorted(m for m in project_files() if layer_of(m) is None)
    assert not missing, f"modules missing from the layers table of docs/ARCHITECTURE.md: {missing}"
    stale = sorted(
        name
        for name in layers()
        if not any(m == name.removesuffix(".*") or m.startswith(name[:-1]) for m in project_files())
    )
    assert not stale, f"the layers table lists modules that do not exist: {stale}"


def test_no_module_imports_a_higher_layer():
    upward = [
        f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})"
        for module, targets in sorted(import_graph().items())
        for target in sorted(targets)
        if layer_of(module) is not None
        and layer_of(target) is not None
        and layer_of(target) > layer_of(module)
    ]
    assert not upward, "imports against the layers of docs/ARCHITECTURE.md:\n" + "\n".join(upward)


def test_no_import_cycle():
    graph = import_graph()
    found = cycles(graph, set(project_files()))
    assert not found, "import cycles (imports inside functions count):\n" + "\n".join(
        " <-> ".join(component) for component in found
    )


@pytest.mark.parametrize("module", REMOTE_CODE)
def test_remote_code_imports_only_what_a_model_folder_user_has(module):
    project, external = imports_of(module)
    assert project <= set(REMOTE_CODE), (
        f"{module} imports project modules {sorted(project - set(REMOTE_CODE))}"
    )
    extra = sorted(external - REMOTE_CODE_MAY_IMPORT)
    assert not extra, f"{module} imports {extra}: remote code may import only torch, transformers, numpy, PIL"


def test_the_checker_sees_imports_inside_functions_and_siblings():
    """The parser itself: function-level imports, `from package import module`, relative imports and the
    Space's sibling imports all resolve to project modules."""
    assert "clipita.data" in imports_of("space.catalogue_images")[0]  # imported inside open_catalogue
    assert "space.catalogue_images" in imports_of("space.variants")[0]  # as `catalogue_images` and `space.…`
    assert "clipita.loading" in imports_of("space.variants")[0]
    assert "configuration_clipita" in imports_of("modeling_clipita")[0]  # relative and absolute
    assert "bench._machine" in imports_of("bench.flops")[0]
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph, set(graph)) == [["a", "b", "c"]]


def test_catalogue_and_data_modules_import_without_torch():
    """The catalogue generator's spawned workers and `python -m clipita.data` import these: torch and
    transformers (seconds of CPU per process) must stay out of them."""
    code = (
        "import sys, clipita.catalogue, clipita.data, clipita.schema, clipita.tree\n"
        "heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
        "assert not heavy, heavy"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
