"""Generate `docs/architecture.md` from the imports, and check the package rules.

    python docs/architecture.py           # write docs/architecture.md; exit 1 if a rule is broken
    python docs/architecture.py --check   # CI: exit 1 if it is stale or a rule is broken
    python docs/architecture.py --root DIR [--check]   # another checkout (the tests' fake trees)

The graph comes from every `import` in the five packages (inside functions and under
`if TYPE_CHECKING:` too; they follow the same rules), the prose from the packages' docstrings,
so the document cannot drift from the code. Standard library only: it runs before any install.
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path

# The project's packages, the base first.
PACKAGES = ("accounting", "spaces", "trainers", "results", "search")

# Which packages each package may import (the graph of today's code, acyclic).
ALLOWED_EDGES: dict[str, frozenset[str]] = {
    "accounting": frozenset(),
    "spaces": frozenset(),
    "trainers": frozenset({"accounting", "spaces"}),
    "results": frozenset({"accounting"}),
    "search": frozenset({"accounting", "spaces", "trainers", "results"}),
}

# Allowed edges that only some modules may use: trainers reads spaces only in its command line.
ONLY_FROM: dict[tuple[str, str], frozenset[str]] = {
    ("trainers", "spaces"): frozenset({"trainers/__main__.py"}),
}

DOC = Path("docs") / "architecture.md"
STALE = "docs/architecture.md is out of date: run python docs/architecture.py"


@dataclass(frozen=True)
class Import:
    """One use of another package: `path` reaches `module` (or `name` in it) at `line`."""

    path: str  # the importing file, "search/plan.py"
    line: int
    source: str  # the importing package, "search"
    package: str  # the imported package, "accounting"
    module: str  # the module imported or imported from, "accounting" or "accounting.ledger"
    name: str | None  # `from module import name`, or `module.name` read from `import module`
    statement: bool  # an import statement (False: an attribute read from an imported package)


@dataclass(frozen=True)
class Package:
    name: str
    description: str | None  # the first paragraph of its __init__.py docstring
    public: frozenset[str] | None  # its __all__; None when __init__.py defines none
    modules: tuple[tuple[str, str | None], ...]  # (path, first docstring paragraph)


def _first_paragraph(docstring: str | None) -> str | None:
    if not docstring or not docstring.strip():
        return None
    return " ".join(docstring.strip().split("\n\n")[0].split())


def _dunder_all(tree: ast.Module) -> frozenset[str] | None:
    """The literal `__all__` of a module (assignments and `+=` at its top level)."""
    names: set[str] | None = None
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        if not any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            continue
        try:
            literal = ast.literal_eval(value)
        except ValueError:
            continue
        if isinstance(node, ast.AugAssign):
            names = (names or set()) | set(literal)
        else:
            names = set(literal)
    return None if names is None else frozenset(names)


def _module_files(root: Path, package: str) -> list[Path]:
    return sorted(
        p for p in (root / package).rglob("*.py") if "__pycache__" not in p.relative_to(root).parts
    )


def _rebound(tree: ast.AST) -> set[str]:
    """Names a module assigns or takes as parameters: `x.attr` on those is not a package."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
    return names


def _imports(root: Path, path: Path, tree: ast.Module) -> list[Import]:
    """Every use of another project package in one file: imports anywhere in it, and the
    attributes it reads from a package it imported whole (`import accounting; accounting.x`)."""
    relative = path.relative_to(root)
    rel = relative.as_posix()
    source = relative.parts[0]
    here = list(relative.parent.parts)  # the package that relative imports start from
    found: list[Import] = []
    bound: dict[str, str] = {}  # a local name → the package `import pkg [as name]` bound to it

    def add(line: int, module: str, name: str | None = None, statement: bool = True) -> None:
        package = module.split(".")[0]
        if package in PACKAGES and package != source:
            found.append(Import(rel, line, source, package, module, name, statement))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(node.lineno, alias.name)
                if "." not in alias.name:
                    bound[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                if node.level - 1 > len(here):
                    continue  # above the top level: it cannot run anyway
                base = here[: len(here) - (node.level - 1)]
                module = ".".join(base + ([module] if module else []))
            for alias in node.names:  # a star import takes exactly __all__: no name to check
                add(node.lineno, module, None if alias.name == "*" else alias.name)
    rebound = _rebound(tree)
    packages = {name: package for name, package in bound.items() if name not in rebound}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in packages
        ):
            add(node.lineno, packages[node.value.id], node.attr, statement=False)
    return found


def scan(root: Path) -> tuple[dict[str, Package], list[Import], list[str]]:
    """The packages under `root`, their cross-package imports, and files that do not parse."""
    packages: dict[str, Package] = {}
    imports: list[Import] = []
    problems: list[str] = []
    for name in PACKAGES:
        init = root / name / "__init__.py"
        if not init.is_file():
            problems.append(f"{name}/__init__.py: missing, but {name} is one of the packages")
            continue
        description, public, modules = None, None, []
        for path in _module_files(root, name):
            rel = path.relative_to(root).as_posix()
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
            except SyntaxError as error:
                problems.append(f"{rel}:{error.lineno}: does not parse: {error.msg}")
                continue
            imports.extend(_imports(root, path, tree))
            summary = _first_paragraph(ast.get_docstring(tree))
            if path == init:
                description, public = summary, _dunder_all(tree)
            else:
                modules.append((rel, summary))
        packages[name] = Package(name, description, public, tuple(modules))
    return packages, imports, problems


def edges(imports: list[Import]) -> dict[str, list[str]]:
    """package → the packages it imports, both in PACKAGES order."""
    graph: dict[str, set[str]] = {name: set() for name in PACKAGES}
    for item in imports:
        graph[item.source].add(item.package)
    return {name: [p for p in PACKAGES if p in graph[name]] for name in PACKAGES}


def _cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one package (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for succ in graph[node]:
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in graph:
        if node not in index:
            visit(node)
    cycles = []
    for component in components:
        start = min(component, key=PACKAGES.index)
        path, seen = [start], {start}
        while True:  # walk inside the component until it closes
            succ = next(s for s in graph[path[-1]] if s in component)
            if succ in seen:
                cycles.append(path[path.index(succ) :] + [succ])
                break
            path.append(succ)
            seen.add(succ)
    return cycles


def violations(packages: dict[str, Package], imports: list[Import]) -> list[str]:
    """Every broken rule, as `path:line: sentence`, sorted."""
    found: set[str] = set()
    for item in imports:
        where = f"{item.path}:{item.line}"
        allowed = ALLOWED_EDGES[item.source]
        only = ONLY_FROM.get((item.source, item.package))
        if not item.statement:
            pass  # its import statement is checked on its own line
        elif item.package not in allowed:
            may = ", ".join(p for p in PACKAGES if p in allowed) or "no other package"
            found.add(
                f"{where}: {item.source} must not import {item.package} "
                f"({item.source} may import {may})"
            )
        elif only is not None and item.path not in only:
            found.add(
                f"{where}: {item.source} may import {item.package} only in "
                f"{', '.join(sorted(only))}"
            )
        package = packages.get(item.package)
        if item.module != item.package:
            found.add(
                f"{where}: imports the submodule {item.module}; import from {item.package} "
                f"(its __all__) instead"
            )
        elif package is None or item.name is None:
            continue
        elif package.public is None:
            found.add(
                f"{where}: uses {item.package}.{item.name}, but {item.package}/__init__.py "
                f"defines no __all__"
            )
        elif item.name not in package.public:
            found.add(
                f"{where}: uses {item.package}.{item.name}, which is not in {item.package}.__all__"
            )
    for name, package in packages.items():
        if package.description is None:
            found.add(
                f"{name}/__init__.py:1: has no docstring (its first paragraph describes {name} "
                f"in docs/architecture.md)"
            )
    ordered = sorted(found, key=_location)
    for cycle in _cycles(edges(imports)):
        ordered.append(f"packages import each other in a cycle: {' -> '.join(cycle)}")
    return ordered


def _location(message: str) -> tuple[str, int, str]:
    path, line, rest = message.split(":", 2)
    return path, int(line), rest


def render(packages: dict[str, Package], imports: list[Import]) -> str:
    graph = edges(imports)
    lines = [
        "# Architecture",
        "",
        "Generated from the code by `python docs/architecture.py`, and checked in CI "
        "(`python docs/architecture.py --check`, run by `tests/test_architecture.py`): edit the "
        "package docstrings, not this file.",
        "",
        "## Package graph",
        "",
        "An arrow means that some module of the first package imports the second.",
        "",
        "```mermaid",
        "graph LR",
    ]
    lines += [f"    {name}" for name in PACKAGES]
    for name in PACKAGES:
        for dependency in graph[name]:
            only = ONLY_FROM.get((name, dependency))
            label = f' -- "only {", ".join(sorted(only))}" -->' if only else " -->"
            lines.append(f"    {name}{label} {dependency}")
    width = max(map(len, PACKAGES))
    lines += ["```", "", "```text"]
    for name in PACKAGES:
        lines.append(f"{name:<{width}} -> {', '.join(graph[name]) or '(nothing)'}")
    lines += [
        "```",
        "",
        "## Rules",
        "",
        "`python docs/architecture.py --check` fails when one of these is broken:",
        "",
        "- A package imports only these packages:",
    ]
    for name in PACKAGES:
        allowed = [p for p in PACKAGES if p in ALLOWED_EDGES[name]]
        if not allowed:
            lines.append(f"  - `{name}`: no other package.")
            continue
        parts = []
        for dependency in allowed:
            only = ONLY_FROM.get((name, dependency))
            where = ", ".join(f"`{m}`" for m in sorted(only)) if only else ""
            parts.append(f"`{dependency}`" + (f" (only in {where})" if only else ""))
        lines.append(f"  - `{name}`: {', '.join(parts)}.")
    lines += [
        "- No cycle between packages.",
        "- Another package is used only through its `__all__`: `import accounting` or "
        "`from accounting import name`, never `from accounting.ledger import name`.",
        "",
        "## Packages",
    ]
    for name in PACKAGES:
        package = packages.get(name)
        if package is None:
            continue
        lines += ["", f"### `{name}`", "", package.description or "(no docstring)", ""]
        lines += [f"- `{path}`: {summary or '(no docstring)'}" for path, summary in package.modules]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if docs/architecture.md is stale or a rule is broken",
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=Path(__file__).resolve().parents[1],
        help="the repository to read (default: the one holding this script)",
    )
    args = parser.parse_args(argv)
    packages, imports, problems = scan(args.root)
    text = render(packages, imports)
    broken = problems + violations(packages, imports)
    doc = args.root / DOC
    failed = False
    if args.check:
        current = doc.read_text(encoding="utf-8") if doc.is_file() else None
        if current != text:
            print(STALE, file=sys.stderr)
            failed = True
    else:
        doc.parent.mkdir(parents=True, exist_ok=True)
        doc.write_text(text, encoding="utf-8", newline="\n")
        print(f"wrote {DOC.as_posix()}")
    if broken:
        print(f"{len(broken)} violation(s) of the package rules:", file=sys.stderr)
        for message in broken:
            print(f"  {message}", file=sys.stderr)
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
