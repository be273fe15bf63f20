"""The package's architecture, checked from the source with ``ast`` (no deployer module is imported).

* no import circle between modules of deployer/ (imports anywhere in a module
  count: module level, inside functions, under ``if TYPE_CHECKING``);
* imports go one way down the floors: cli -> serve -> alerts -> ops -> build / discovery ->
  engine / config / gitrepo -> shared (deployer/{errors,model,labels,values,
  spec,imageref,files}.py and deployer/__init__.py). A module may import its
  own folder, a lower floor, or the shared modules. Same floor only where
  stated: config may import deployer.gitrepo.git. Nothing imports cli (only
  the entry point, deployer/__main__.py);
* no module over 700 lines;
* git is started only from deployer/gitrepo/ (no argument list starting with
  "git" elsewhere, no GitPython);
* every exception class defined in deployer/ lives in deployer/errors.py;
* every deployer/*/ folder has an __init__.py whose docstring names each of
  its modules.

Each failure names the file, the line and the offending import or statement.
"""

from __future__ import annotations

import ast
import builtins
import re
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "deployer"
ROOT = PACKAGE.parent
MAX_LINES = 700

SHARED = {"deployer", "deployer.errors", "deployer.model", "deployer.labels", "deployer.values", "deployer.spec",
          "deployer.imageref", "deployer.files"}
FLOORS = {  # folder -> floor; shared modules are floor 0
    "engine": 1, "config": 1, "gitrepo": 1,
    "build": 2, "discovery": 2,
    "ops": 3,
    "alerts": 4,
    "serve": 5,
    "cli": 6,
}
ENTRY_POINT = "deployer.__main__"  # above everything: the one module that may import cli
# same-floor imports allowed: (importing folder, imported module or folder)
SAME_FLOOR_ALLOWED = {("config", "deployer.gitrepo.git"), ("build", "deployer.gitrepo")}
GIT_LIBRARIES = ("git", "pygit2", "dulwich")  # GitPython's import name is "git"
PROCESS_CALLS = {"run", "Popen", "call", "check_call", "check_output", "system", "popen", "execv", "execvp",
                 "execvpe", "spawnv", "spawnvp", "create_subprocess_exec", "create_subprocess_shell"}


# --------------------------------------------------------------------------
# reading the package


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported deployer module
    line: int
    text: str  # the import statement as written

    def where(self) -> str:
        return f"{path_of(self.source)}:{self.line}: {self.text}"


@lru_cache(maxsize=None)
def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package is its __init__.py)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def path_of(module: str) -> str:
    return str(modules()[module].relative_to(ROOT))


@lru_cache(maxsize=None)
def tree(module: str) -> ast.Module:
    path = modules()[module]
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def folder(module: str) -> str | None:
    """The layer folder a module is in (engine, config, ...), or None for the shared and top modules."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in FLOORS else None


def floor(module: str) -> int:
    if module == ENTRY_POINT:
        return max(FLOORS.values()) + 1
    f = folder(module)
    return FLOORS[f] if f else 0


def _package_of(module: str) -> str:
    return module if modules()[module].name == "__init__.py" else module.rpartition(".")[0]


def _resolve(module: str, name: str) -> str | None:
    """The deployer module ``name`` is, or the nearest enclosing one; None outside the package."""
    if name != "deployer" and not name.startswith("deployer."):
        return None
    while name and name not in modules():
        name = name.rpartition(".")[0]
    return name or None


def _statement(node: ast.AST) -> str:
    return " ".join(ast.unparse(node).split())


@lru_cache(maxsize=None)
def imports(module: str) -> tuple[Import, ...]:
    """The deployer modules ``module`` imports, anywhere in its source."""
    found: list[Import] = []
    for node in ast.walk(tree(module)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _resolve(module, alias.name)
                if target:
                    found.append(Import(module, target, node.lineno, _statement(node)))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(module).split(".")
                base = base[: len(base) - (node.level - 1)]
                base_name = ".".join(base + ([node.module] if node.module else []))
            else:
                base_name = node.module or ""
            for alias in node.names:
                # from deployer.x import y: the module deployer.x.y when there is one, else deployer.x
                target = _resolve(module, f"{base_name}.{alias.name}") if f"{base_name}.{alias.name}" in modules() \
                    else _resolve(module, base_name)
                if target:
                    found.append(Import(module, target, node.lineno, _statement(node)))
    unique = {(i.target, i.line): i for i in found if i.target != module}
    return tuple(sorted(unique.values(), key=lambda i: (i.line, i.target)))


# --------------------------------------------------------------------------
# the checks, each a list of violations (one line each)


def import_circles() -> list[str]:
    graph = {m: sorted({i.target for i in imports(m)}) for m in modules()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0

    def visit(start: str) -> None:  # Tarjan, iterative (no recursion limit to hit)
        nonlocal counter
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        components.append(sorted(component))

    for m in sorted(graph):
        if m not in index:
            visit(m)
    return [_describe_circle(c) for c in sorted(components)]


def _describe_circle(component: list[str]) -> str:
    """The modules of one strongly connected component, and every import between them (each a step of a circle)."""
    members = set(component)
    steps = [i for m in component for i in imports(m) if i.target in members]
    return (f"import circle among {', '.join(component)}; the imports between them: "
            + "; ".join(f"{i.source} -> {i.target} ({i.where()})" for i in steps))


def floor_violations() -> list[str]:
    problems = []
    for module in sorted(modules()):
        own = folder(module)
        for imp in imports(module):
            target = imp.target
            if folder(target) == "cli" and own != "cli" and module != ENTRY_POINT:
                problems.append(f"{imp.where()}: imports cli ({target}); nothing imports the CLI")
                continue
            if own is not None and folder(target) == own:
                continue  # its own folder
            if floor(target) < floor(module) or floor(target) == floor(module) == 0:
                continue  # one way down; the shared modules may use each other
            if own and any(own == f and (target == t or target.startswith(t + ".")) for f, t in SAME_FLOOR_ALLOWED):
                continue
            where = "up" if floor(target) > floor(module) else "sideways"
            problems.append(f"{imp.where()}: {module} (floor {floor(module)}, {own or 'shared'}) imports {where} "
                            f"{target} (floor {floor(target)}, {folder(target) or 'shared'})")
    return problems


def long_modules() -> list[str]:
    problems = []
    for module, path in sorted(modules().items()):
        count = len(path.read_text(encoding="utf-8").splitlines())
        if count > MAX_LINES:
            problems.append(f"{path_of(module)}: {count} lines (at most {MAX_LINES})")
    return problems


def _git_constants(mod: ast.Module) -> set[str]:
    """Module-level names bound to the string "git" (GIT = "git")."""
    names = set()
    for node in mod.body:
        if isinstance(node, ast.Assign) and _is_git(node.value, set()):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def _is_git(node: ast.AST, constants: set[str]) -> bool:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value == "git" or node.value.endswith("/git")
    return isinstance(node, ast.Name) and node.id in constants


def git_outside_gitrepo() -> list[str]:
    problems: list[tuple[str, int, str]] = []
    for module in sorted(modules()):
        if folder(module) == "gitrepo":
            continue
        mod = tree(module)
        constants = _git_constants(mod)
        for node in ast.walk(mod):
            if isinstance(node, (ast.List, ast.Tuple)) and node.elts and _is_git(node.elts[0], constants):
                problems.append((module, node.lineno, f"starts git: {_statement(node)}"))
            elif isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
                if name in PROCESS_CALLS and node.args and isinstance(node.args[0], ast.Constant) \
                        and isinstance(node.args[0].value, str) and re.match(r"\s*(\S*/)?git(\s|$)", node.args[0].value):
                    problems.append((module, node.lineno, f"starts git: {_statement(node)}"))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] in GIT_LIBRARIES:
                        problems.append((module, node.lineno, f"imports a git library: {_statement(node)}"))
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module \
                    and node.module.split(".")[0] in GIT_LIBRARIES:
                problems.append((module, node.lineno, f"imports a git library: {_statement(node)}"))
    return [f"{path_of(m)}:{line}: {what}" for m, line, what in sorted(set(problems))]


_BUILTIN_EXCEPTIONS = {n for n, v in vars(builtins).items() if isinstance(v, type) and issubclass(v, BaseException)}
_EXCEPTION_NAME = re.compile(r"(Error|Exception|Exit|Warning|Interrupt|Abort)$")


@lru_cache(maxsize=None)
def _classes() -> dict[tuple[str, str], ast.ClassDef]:
    return {(m, node.name): node for m in modules() for node in ast.walk(tree(m)) if isinstance(node, ast.ClassDef)}


def _imported_names(module: str) -> dict[str, tuple[str, str]]:
    """name bound by ``from deployer.x import Name`` -> (deployer.x, Name)."""
    out = {}
    for node in ast.walk(tree(module)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(module).split(".")
                base_name = ".".join(base[: len(base) - (node.level - 1)] + ([node.module] if node.module else []))
            else:
                base_name = node.module or ""
            target = _resolve(module, base_name)
            if target:
                for alias in node.names:
                    out[alias.asname or alias.name] = (target, alias.name)
    return out


def _is_exception(module: str, base: ast.expr, seen: frozenset = frozenset()) -> bool:
    if isinstance(base, ast.Name):
        name = base.id
        if name in _BUILTIN_EXCEPTIONS:
            return True
        if (module, name) in _classes() and (module, name) not in seen:
            return _is_exception_class(module, name, seen)
        origin = _imported_names(module).get(name)
        if origin and origin in _classes() and origin not in seen:
            return _is_exception_class(*origin, seen)
        return bool(_EXCEPTION_NAME.search(name)) and origin is None and (module, name) not in _classes()
    if isinstance(base, ast.Attribute):  # docker.errors.APIError, click.ClickException, errors.DeployerError
        return bool(_EXCEPTION_NAME.search(base.attr)) or base.attr in _BUILTIN_EXCEPTIONS
    return False


def _is_exception_class(module: str, name: str, seen: frozenset = frozenset()) -> bool:
    node = _classes()[(module, name)]
    seen = seen | {(module, name)}
    return any(_is_exception(module, b, seen) for b in node.bases)


def exceptions_outside_errors() -> list[str]:
    problems = []
    for (module, name), node in sorted(_classes().items(), key=lambda kv: (kv[0][0], kv[1].lineno)):
        if module != "deployer.errors" and _is_exception_class(module, name):
            bases = ", ".join(ast.unparse(b) for b in node.bases)
            problems.append(f"{path_of(module)}:{node.lineno}: exception class {name}({bases}) "
                            "is defined outside deployer/errors.py")
    return problems


def folder_docstrings() -> list[str]:
    problems = []
    for sub in sorted(p for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"):
        mods = sorted(p.stem for p in sub.glob("*.py") if p.name != "__init__.py")
        init = sub / "__init__.py"
        rel = init.relative_to(ROOT)
        if not init.is_file():
            problems.append(f"{rel}: missing (the folder {sub.name}/ holds {', '.join(mods) or 'no modules'})")
            continue
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        if not doc.strip():
            problems.append(f"{rel}: no docstring saying what lives in {sub.name}/")
            continue
        missing = [m for m in mods if not re.search(rf"(?<![\w.]){re.escape(m)}(\.py)?(?!\w)", doc)]
        if missing:
            problems.append(f"{rel}: the docstring does not name {', '.join(m + '.py' for m in missing)}")
    return problems


def report(problems: list[str]) -> str:
    return f"{len(problems)} found:\n  " + "\n  ".join(problems)


# --------------------------------------------------------------------------
# the tests


def test_no_import_circle():
    problems = import_circles()
    assert not problems, report(problems)


def test_imports_go_one_way_down_the_floors():
    problems = floor_violations()
    assert not problems, report(problems)


def test_no_module_over_700_lines():
    problems = long_modules()
    assert not problems, report(problems)


def test_git_runs_only_from_gitrepo():
    problems = git_outside_gitrepo()
    assert not problems, report(problems)


def test_every_exception_class_lives_in_errors():
    problems = exceptions_outside_errors()
    assert not problems, report(problems)


def test_every_folder_has_an_init_naming_its_modules():
    problems = folder_docstrings()
    assert not problems, report(problems)


# the checker itself: it must see what is there, or the tests above pass for nothing


def test_the_checker_reads_the_package():
    mods = modules()
    assert {"deployer", "deployer.errors", "deployer.engine", "deployer.engine.plan", "deployer.engine.state"} <= set(mods)
    targets = {i.target for i in imports("deployer.engine.plan")}
    assert {"deployer.engine.state", "deployer.labels", "deployer.spec"} <= targets
    assert floor("deployer.cli.main") > floor("deployer.ops.deploy") > floor("deployer.build.registry") \
        > floor("deployer.engine.plan") > floor("deployer.errors")


def test_the_checker_resolves_relative_and_function_level_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "deployer"
    (pkg / "engine").mkdir(parents=True)
    (pkg / "ops").mkdir()
    (pkg / "__init__.py").write_text('"""top."""\n')
    (pkg / "errors.py").write_text("class DeployerError(Exception):\n    pass\n")
    (pkg / "engine" / "__init__.py").write_text('"""engine: a.py and b."""\n')
    (pkg / "engine" / "a.py").write_text("from . import b\nfrom ..errors import DeployerError\n"
                                         "class Oops(DeployerError):\n    pass\n")
    (pkg / "engine" / "b.py").write_text("def f():\n    from deployer.engine import a\n"
                                         "    from deployer.ops import run\n")
    (pkg / "ops" / "__init__.py").write_text('"""ops."""\n')
    (pkg / "ops" / "run.py").write_text('import subprocess\nGIT = "git"\nsubprocess.run([GIT, "status"])\n'
                                        "import git\n" + "x = 1\n" * 700)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    for cached in (modules, tree, imports, _classes):
        cached.cache_clear()
    try:
        assert [i.target for i in imports("deployer.engine.a")] == ["deployer.engine.b", "deployer.errors"]
        assert [i.target for i in imports("deployer.engine.b")] == ["deployer.engine.a", "deployer.ops.run"]
        circles = import_circles()
        assert len(circles) == 1 and circles[0].startswith("import circle among deployer.engine.a, deployer.engine.b")
        assert floor_violations() == [
            "deployer/engine/b.py:3: from deployer.ops import run: deployer.engine.b (floor 1, engine) imports up "
            "deployer.ops.run (floor 3, ops)"]
        assert long_modules() == ["deployer/ops/run.py: 704 lines (at most 700)"]
        assert git_outside_gitrepo() == ["deployer/ops/run.py:3: starts git: [GIT, 'status']",
                                         "deployer/ops/run.py:4: imports a git library: import git"]
        assert exceptions_outside_errors() == [
            "deployer/engine/a.py:3: exception class Oops(DeployerError) is defined outside deployer/errors.py"]
        assert folder_docstrings() == ["deployer/ops/__init__.py: the docstring does not name run.py"]
    finally:
        for cached in (modules, tree, imports, _classes):
            cached.cache_clear()


def test_test_modules_have_unique_names_across_the_tiers():
    """pytest imports tests/unit and tests/engines by basename: two files of one name break collection."""
    tests = Path(__file__).resolve().parents[1]
    seen: dict[str, Path] = {}
    clashes = []
    for path in sorted(tests.rglob("test_*.py")):
        if path.name in seen:
            clashes.append(f"{seen[path.name].relative_to(tests)} and {path.relative_to(tests)}")
        seen.setdefault(path.name, path)
    assert not clashes, "; ".join(clashes)
