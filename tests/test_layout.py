"""The repository's layout: entry scripts at the root, the library in the mae_cifar package,
imports pointing one way (scripts -> package -> model.py / utils.py -> third party)."""
import ast
import subprocess

from conftest import REPO

MAX_ROOT_MODULES = 10
BOTTOM = {"model", "utils"}  # root modules the package builds on; they import nothing of ours
PACKAGE = "mae_cifar"


def root_modules():
    out = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.split()
    return {p[:-3] for p in out if "/" not in p}


def module_name(path):
    rel = path.relative_to(REPO).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def project_modules():
    """{module name: path} of every root module and package module."""
    paths = [*REPO.glob("*.py"), *REPO.glob(f"{PACKAGE}/**/*.py")]
    return {module_name(p): p for p in paths if module_name(p) in root_modules() or
            module_name(p).startswith(PACKAGE)}


def imports(path, known):
    """The project modules `path` imports (anywhere in the file), by full name."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:  # a module, or from one
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known
                     else node.module for a in node.names]
        else:
            continue
        found |= {n for n in names if n in known}
    return found


def graph():
    known = project_modules()
    return {m: imports(p, known) for m, p in known.items()}


def floors(g):
    """{module: floor}: 0 imports nothing of ours, else 1 + the highest floor it imports.
    Raises on a cycle."""
    out, visiting = {}, set()

    def floor(m):
        if m in out:
            return out[m]
        assert m not in visiting, f"import cycle through {m}"
        visiting.add(m)
        out[m] = 1 + max((floor(d) for d in g[m] if d != m), default=-1)
        visiting.discard(m)
        return out[m]
    for m in g:
        floor(m)
    return out


def test_the_root_holds_only_the_entry_points_and_the_design_files():
    roots = root_modules()
    assert len(roots) <= MAX_ROOT_MODULES, sorted(roots)
    assert {"model", "utils", "mae_pretrain", "train_classifier", "visualize_pred"} <= roots


def test_no_script_imports_another_script():
    g = graph()
    for script in root_modules() - BOTTOM:
        others = {d for d in g[script] if not d.startswith(PACKAGE) and d not in BOTTOM}
        assert not others, f"{script}.py imports the scripts {sorted(others)}"


def test_the_package_and_the_bottom_import_no_script():
    g = graph()
    for m, deps in g.items():
        if m.startswith(PACKAGE):
            assert not {d for d in deps if not d.startswith(PACKAGE)} - BOTTOM, m
    for m in BOTTOM:
        assert not g[m], f"{m}.py imports {sorted(g[m])}"


def test_imports_have_no_cycle():
    floors(graph())  # asserts on a cycle
