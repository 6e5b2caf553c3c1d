"""The package's layering, checked on its static import graph (ast; imports inside functions count).

  - no cycles between the top-level folders (ir, frontend, passes, backends, hw, sim, models) and the
    root modules (api, cli, driver, the package __init__);
  - ir/ imports nothing of ternc outside ir/;
  - passes/ imports neither frontend/ nor backends/; backends/ imports neither frontend/ nor passes/;
  - no library module or test imports bench/ (nor loads a module from a file path);
  - nothing (library, tests, bench) edits sys.path.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIBRARY = ("ir", "frontend", "passes", "backends", "hw", "sim", "models")
BENCH_SCRIPTS = {p.stem for p in (REPO / "bench").glob("*.py")}

# (importing file, imported module) edges that break a rule today, each with its reason. Only for
# code another change owns; remove an entry once that code is fixed (the test fails on stale entries).
ALLOWED: dict[tuple[str, str], str] = {}


def _files(*roots: str) -> list[Path]:
    out = []
    for r in roots:
        p = REPO / r
        out += [p] if p.is_file() else sorted(f for f in p.rglob("*.py") if "__pycache__" not in f.parts)
    return out


def _module_of(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["ternc", *parts])


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:]) if module != "ternc" else Path()
    return (REPO / rel).with_suffix(".py").exists() or (REPO / rel / "__init__.py").exists()


def imports(path: Path) -> list[str]:
    """Absolute names of the ternc modules `path` imports (`from pkg import submodule` resolves to the
    submodule), plus the bare names of other top-level imports (to catch bench scripts)."""
    me = _module_of(path)
    pkg = me if _is_package(path) else me.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod == "ternc" or mod.startswith("ternc."):
                subs = [f"{mod}.{a.name}" for a in node.names if _exists(f"{mod}.{a.name}")]
                out += subs or [mod]
                out += [mod] if subs and len(subs) < len(node.names) else []
            else:
                out.append(mod)
    return out


def _area(module: str) -> str | None:
    """The layering unit of a ternc module: its top-level folder, or the root module itself."""
    if module != "ternc" and not module.startswith("ternc."):
        return None
    parts = module.split(".")
    if len(parts) == 1:
        return "ternc"
    if parts[1] in LIBRARY or parts[1] in ("bench", "tests"):
        return parts[1]
    return f"ternc.{parts[1]}"  # api, cli, driver


def _edges(roots=("__init__.py", "api.py", "cli.py", "driver.py") + LIBRARY):
    for f in _files(*roots):
        rel = str(f.relative_to(REPO))
        for m in imports(f):
            if (rel, m) in ALLOWED:
                continue
            a, b = _area(_module_of(f)), _area(m)
            if b is not None and a != b:
                yield rel, m, a, b


def test_allow_list_entries_are_still_needed():
    seen = set()
    for f in _files("__init__.py", "api.py", "cli.py", "driver.py", *LIBRARY):
        rel = str(f.relative_to(REPO))
        seen |= {(rel, m) for m in imports(f)}
    stale = [k for k in ALLOWED if k not in seen]
    assert not stale, f"allow-list entries no longer imported (remove them): {stale}"


def test_no_cycles_between_top_level_areas():
    graph: dict[str, dict[str, list[str]]] = {}
    for rel, m, a, b in _edges():
        graph.setdefault(a, {}).setdefault(b, []).append(f"{rel} -> {m}")

    def path(src, dst, seen):
        if src == dst:
            return [dst]
        for nxt in graph.get(src, {}):
            if nxt not in seen:
                seen.add(nxt)
                p = path(nxt, dst, seen)
                if p:
                    return [src] + p
        return None

    cycles = []
    for a, outs in graph.items():
        for b, why in outs.items():
            back = path(b, a, {b})
            if back:
                cycles.append(f"{a} -> {' -> '.join(back)} (first edge: {why[0]})")
    assert not cycles, "import cycles between top-level areas:\n" + "\n".join(sorted(cycles))


def _violations(area: str, forbidden: set[str]) -> list[str]:
    return [f"{rel} imports {m}" for rel, m, a, b in _edges() if a == area and b in forbidden]


def test_ir_imports_nothing_above_it():
    bad = [f"{rel} imports {m}" for rel, m, a, b in _edges() if a == "ir"]
    assert not bad, "\n".join(bad)


def test_passes_import_neither_frontend_nor_backends():
    bad = _violations("passes", {"frontend", "backends"})
    assert not bad, "\n".join(bad)


def test_backends_import_neither_frontend_nor_passes():
    bad = _violations("backends", {"frontend", "passes"})
    assert not bad, "\n".join(bad)


def test_library_and_tests_do_not_import_bench():
    bad = []
    for f in _files("__init__.py", "api.py", "cli.py", "driver.py", *LIBRARY, "tests"):
        rel = str(f.relative_to(REPO))
        for m in imports(f):
            top = m.split(".")[0]
            if top in ("bench",) or m.startswith("ternc.bench") or top in BENCH_SCRIPTS:
                bad.append(f"{rel} imports {m}")
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "spec_from_file_location":
                bad.append(f"{rel} loads a module from a file path (line {node.lineno})")
    assert not bad, "\n".join(bad)


def test_nothing_edits_sys_path():
    bad = []
    for f in _files("__init__.py", "api.py", "cli.py", "driver.py", *LIBRARY, "tests", "bench"):
        for node in ast.walk(ast.parse(f.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name)
                    and node.value.id == "sys"):
                bad.append(f"{f.relative_to(REPO)}:{node.lineno}")
            elif isinstance(node, ast.Attribute) and node.attr == "addsitedir":
                bad.append(f"{f.relative_to(REPO)}:{node.lineno} (site.addsitedir)")
    assert not bad, "sys.path is edited at:\n" + "\n".join(bad)


def test_the_checker_sees_imports():
    """The rules are only as good as the resolver: known edges must be found."""
    assert "ternc.ir.decoder" in imports(REPO / "passes" / "eval.py")  # relative, from ..ir.decoder
    assert "ternc.api" in imports(REPO / "__init__.py")                 # from .api import ... (subpackages load lazily)
    assert "ternc.frontend.decoder" in imports(REPO / "api.py")        # inside a function
    edges = {(a, b) for _r, _m, a, b in _edges()}
    assert ("passes", "ir") in edges and ("frontend", "ir") in edges
