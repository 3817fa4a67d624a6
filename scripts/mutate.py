"""Mutation testing: break one line of the code at a time and see whether the tests notice.

    python scripts/mutate.py --target model.py:MAE_ViT.forward_decoder --tests tests/test_model.py
    python scripts/mutate.py --campaign            # the core modules, see CAMPAIGN below

Each mutant is one small change made on the syntax tree of one function (a flipped comparison
or arithmetic operator, a constant changed by one, two call arguments swapped, a statement
deleted, a returned value replaced by None, `and`/`or` swapped, a unary minus or `not`
dropped). It is written into a private copy of the repository (the working tree is never
touched) and the target's tests run there in a fresh interpreter on one thread, with a
per-mutant timeout. A mutant is KILLED when the tests fail, TIMEOUT when they hang (counted as
killed), SURVIVED when they pass: a survivor is either equivalent (no behaviour changed) or a
hole in the tests. docs/mutation.md says how to read the output. Not part of CI: it is slow.
"""
import argparse
import ast
import copy
import difflib
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # the CPUs are shared
SKIP_ANYWHERE = shutil.ignore_patterns(".git", "__pycache__", ".pytest_cache", ".venv", "*.pt",
                                       "*.png")
SKIP_AT_ROOT = {"outputs", "data", "out", "results"}  # run outputs; mae_cifar/data/ is code
TIMEOUT_FACTOR = 5  # a mutant may run this many times the unmutated tests' time (the
MIN_TIMEOUT_S = 60  # cores are shared: a tighter bound turns slow runs into false kills)
POLL_S = 0.05
NO_TESTS = 5  # pytest's exit code when no test was selected
# -n 0: the suite's pytest-xdist workers (pyproject addopts) off; each mutant runs in the fork
PYTEST = ["-q", "-x", "-n", "0", "-p", "no:cacheprovider", "-p", "no:randomly"]

# (file, functions, tests): the modules whose bugs ruin a study, each with its fast tests
CAMPAIGN = [
    ("model.py", ["sincos_pos_embed", "MAE_ViT.patchify", "MAE_ViT.unpatchify",
                  "MAE_ViT.num_kept", "MAE_ViT.random_masking", "MAE_ViT.forward_encoder",
                  "MAE_ViT.forward_decoder", "MAE_ViT.forward_loss", "MAE_ViT.forward"],
     ["tests/test_model.py"]),
    ("mae_cifar/data/augment.py", ["augment_batch", "random_flip", "random_crop", "rrc_boxes",
                                   "random_resized_crop"],
     ["tests/test_utils_data.py", "tests/test_recipes.py::test_crop_scales_cover_their_range"]),
    ("mae_cifar/data/datasets.py", ["load_dataset"], ["tests/test_utils_data.py"]),
    ("mae_cifar/data/augment.py", ["rand_augment", "parse_rand_augment"],
     ["tests/test_recipes.py", "-k", "rand_augment or pixel_ops or paper_loader"]),
    ("mae_cifar/training/optim.py", ["cosine_lr"], ["tests/test_utils_data.py", "-k", "lr"]),
    ("train_classifier.py", ["Stage.on_epoch_end"], ["tests/test_classifier.py"]),
    ("mae_cifar/training/objectives.py", ["Objective.__call__"], ["tests/test_classifier.py"]),
    # the machinery around the core: resume, statistics, kNN, probe grid, writes, weights
    ("mae_cifar/training/engine.py", ["Trainer.state", "Trainer.save", "Trainer.resume",
                                      "Trainer._check_resumable", "Trainer._restore_rng",
                                      "Trainer.fit", "Trainer.train_epoch", "_count_before"],
     ["tests/test_trainer.py"]),
    ("mae_cifar/checkpoint.py", ["save_checkpoint", "load_checkpoint"],
     ["tests/test_utils_data.py", "-k", "load_checkpoint or checkpoint_round_trip"]),
    ("mae_cifar/reporting/stats.py", [],
     ["tests/test_report.py", "-k", "t_interval or paired_difference or zero_spread or "
      "skip_the_seeds or interval_text"]),
    ("mae_cifar/evaluation/knn.py", ["neighbours", "vote", "knn_classify", "knn_accuracy",
                                     "knn_grid_accuracy", "encode"],
     ["tests/test_knn.py", "-k", "by_hand or temperature or grid or chunked or every_patch"]),
    ("mae_cifar/evaluation/probe.py", ["fit_standardiser", "probe_grid", "cell_losses", "choose",
                                       "run_linear", "run_knn"],
     ["tests/test_baselines.py", "-k",
      "probe_grid or test_split or standardis or knn or cell or lr_at"]),
    ("mae_cifar/fileio.py", ["_file_mode", "atomic_write", "atomic_write_text",
                             "atomic_write_bytes", "write_json", "remove_temp_files"],
     ["tests/test_utils_data.py", "tests/test_disk_full.py", "tests/test_faults.py", "-k",
      "csv_logger or kill_during_a_save or failed_write or interrupted_write or synced or "
      "json_files"]),
    ("mae_cifar/weights.py", ["timm_model_args", "fold_bn_linear", "load_pretrained",
                              "weights_file", "_load_project", "_foreign_state", "_infer_config",
                              "_exported_heads", "check_tensors"],
     ["tests/test_weights.py", "-k", "unreadable or imply or heads_come or project_s_mae or "
      "no_vit or config_json or check_tensors or folded or rebuild"]),
]
SWAPS = {  # operator -> its mutant
    ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn,
    ast.NotIn: ast.In, ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div,
    ast.Div: ast.Mult, ast.FloorDiv: ast.Div, ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult,
    ast.And: ast.Or, ast.Or: ast.And, ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd,
}


@dataclass
class Mutant:
    file: str
    function: str
    line: int
    col: int  # the mutated node's column: tells apart mutants of one kind on one line
    what: str
    source: str  # the whole mutated module


def skip_outputs(root, folder, names):
    """copytree's ignore for a copy of `root`: caches and weights anywhere, run outputs at
    the root only."""
    skipped = SKIP_ANYWHERE(folder, names)
    if Path(folder).resolve() == Path(root).resolve():
        skipped |= SKIP_AT_ROOT & set(names)
    return skipped


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", action="append", default=[],
                   help="FILE.py[:FUNC,CLASS.METHOD,...] to mutate (repeatable); "
                        "no functions: every function of the file")
    p.add_argument("--tests", nargs=argparse.REMAINDER, default=None,
                   help="pytest arguments that test --target (the rest of the command line)")
    p.add_argument("--campaign", action="store_true",
                   help="mutate the core modules of CAMPAIGN, each with its own tests")
    p.add_argument("--only", action="append", default=[], metavar="FILE",
                   help="with --campaign: only CAMPAIGN's entries of this file (repeatable); "
                        "each keeps the sample the whole campaign draws for it")
    p.add_argument("--sample", type=int, default=0,
                   help="at most this many mutants per file, drawn with --seed (0: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of --sample")
    p.add_argument("--repo", default=str(REPO),
                   help="repository to copy and test (e.g. a checkout of an older commit)")
    p.add_argument("--out", default=None, help="write every result as JSON lines here")
    p.add_argument("--survivors_of", default=None, metavar="RESULTS_JSONL",
                   help="only the mutants (of the same sample) that SURVIVED in this earlier "
                        "--out file: rerun them after adding tests")
    p.add_argument("--statuses", default="SURVIVED",
                   help="with --survivors_of: the statuses to rerun, comma-separated (e.g. "
                        "SURVIVED,TIMEOUT to also retry timeouts on a quieter machine)")
    p.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    p.add_argument("--diff", action="store_true",
                   help="with --list: print each mutant's changed line(s) as a diff")
    p.add_argument("--line", type=int, default=None,
                   help="only the mutants on this source line (with --target)")
    return p


# --------------------------------------------------------------------------- mutants
def functions(tree, names):
    """{qualified name: FunctionDef} of the module's functions and methods in `names`
    (all of them when names is empty)."""
    found = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            found[node.name] = node
        elif isinstance(node, ast.ClassDef):
            for sub in node.body:
                if isinstance(sub, ast.FunctionDef):
                    found[f"{node.name}.{sub.name}"] = sub
    missing = sorted(set(names) - set(found))
    if missing:
        raise SystemExit(f"error: no function {', '.join(missing)}")
    return {k: v for k, v in found.items() if not names or k in names}


def is_docstring(node, parent):
    return (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str) and parent.body and parent.body[0] is node)


def edits(node, parent):
    """(description, apply) pairs: each apply(node) changes the node in place."""
    out = []
    if isinstance(node, (ast.BinOp, ast.BoolOp, ast.UnaryOp)) and type(node.op) in SWAPS:
        new = SWAPS[type(node.op)]
        out.append((f"{type(node.op).__name__} -> {new.__name__}",
                    lambda n, new=new: setattr(n, "op", new())))
    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            if type(op) in SWAPS:
                new = SWAPS[type(op)]
                which = f" (comparison {i + 1})" if len(node.ops) > 1 else ""
                out.append((f"{type(op).__name__} -> {new.__name__}{which}",
                            lambda n, i=i, new=new: n.ops.__setitem__(i, new())))
    if isinstance(node, ast.Constant) and type(node.value) in (int, float) \
            and not isinstance(node.value, bool):
        v = node.value
        for new in ({v + 1, v - 1} if v not in (0, 1) else {1 - v}):
            out.append((f"constant {v!r} -> {new!r}", lambda n, new=new: setattr(n, "value", new)))
    if isinstance(node, ast.Constant) and isinstance(node.value, bool):
        out.append((f"{node.value} -> {not node.value}",
                    lambda n: setattr(n, "value", not n.value)))
    if isinstance(node, ast.Call) and len(node.args) >= 2 \
            and not any(isinstance(a, ast.Starred) for a in node.args[:2]):
        out.append(("swap the first two arguments",
                    lambda n: n.args.__setitem__(slice(0, 2), n.args[1::-1][:2])))
    if isinstance(node, ast.Return) and node.value is not None:
        out.append(("return None", lambda n: setattr(n, "value", None)))
    if isinstance(node, (ast.Expr, ast.Assign, ast.AugAssign)) and parent is not None \
            and not is_docstring(node, parent):
        out.append(("delete the statement", "delete"))
    return out


def with_parents(func):
    """(node, parent statement-list owner) for every node under func, body excluded."""
    stack = [(child, func) for child in ast.iter_child_nodes(func)]
    while stack:
        node, parent = stack.pop()
        yield node, parent if isinstance(node, ast.stmt) else None
        stack.extend((child, node) for child in ast.iter_child_nodes(node))


def mutants_of(path, names):
    """Every mutant of the named functions of the file at `path`, in source order."""
    text = Path(path).read_text()
    tree = ast.parse(text)
    out = []
    for qual, func in functions(tree, names).items():
        defaults = [*func.args.defaults, *[d for d in func.args.kw_defaults if d]]
        skip = {id(n) for d in defaults for n in ast.walk(d)}  # default values stay as they are
        for node, parent in with_parents(func):
            if id(node) in skip or isinstance(node, ast.FunctionDef):
                continue
            for k, (what, _) in enumerate(edits(node, parent)):
                mutated = mutate(tree, node, parent, k)
                if mutated is not None:
                    out.append(Mutant(os.path.basename(path), qual, node.lineno,
                                      node.col_offset, what, mutated))
    return sorted(out, key=lambda m: (m.line, m.what))


def mutate(tree, node, parent, k):
    """The module's source with edit k applied to `node` (on a deep copy of the tree)."""
    paths = {}

    def index(n, p):
        paths[id(n)] = p
        for field, value in ast.iter_fields(n):
            if isinstance(value, list):
                for i, v in enumerate(value):
                    if isinstance(v, ast.AST):
                        index(v, p + [(field, i)])
            elif isinstance(value, ast.AST):
                index(value, p + [(field, None)])

    index(tree, [])
    new_tree = copy.deepcopy(tree)
    target, owner = new_tree, None
    for field, i in paths[id(node)]:
        owner = (target, field, i)
        target = getattr(target, field) if i is None else getattr(target, field)[i]
    new_parent = owner[0] if parent is not None else None
    what, apply = edits(target, new_parent)[k]
    if apply == "delete":
        holder, field, i = owner
        body = getattr(holder, field)
        body[i] = ast.Pass() if len(body) == 1 else None
        setattr(holder, field, [s for s in body if s is not None])
    else:
        apply(target)
    ast.fix_missing_locations(new_tree)
    try:
        return ast.unparse(new_tree)
    except Exception:  # an edit that makes no valid program (e.g. a constant in a slice)
        return None


# --------------------------------------------------------------------------- running
PRELOAD = ("numpy", "torch", "timm", "einops", "PIL.Image", "pytest")  # third-party only


def preload():
    """Import the heavy libraries once; each mutant's tests run in a fork that inherits them
    (the repository's own modules are imported afresh in the fork, mutated)."""
    import importlib
    for name in PRELOAD:
        importlib.import_module(name)


def run_tests(workdir, tests, timeout):
    """'passed', 'failed' or 'timeout' of pytest `tests` in workdir, and the seconds taken.
    pytest runs in its own process group; whatever is left of the group when it ends or
    times out is killed (a mutant can make a test hang with a process it forked still
    running, e.g. a save loop)."""
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: pytest in the copy, quietly
        code = 1
        try:
            os.setpgrp()
            import pytest
            os.chdir(workdir)
            os.environ.update({**THREAD_ENV, "PYTHONDONTWRITEBYTECODE": "1"})
            sys.path.insert(0, str(workdir))
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            code = int(pytest.main([*PYTEST, *tests]))
        finally:
            os._exit(code)
    timed_out = False
    # WNOWAIT: the child stays unreaped, so its group id cannot be reused before killpg
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        if timeout is not None and time.perf_counter() - started > timeout:
            timed_out = True
            break
        time.sleep(POLL_S)
    end_group(pid)
    _, status = os.waitpid(pid, 0)
    if timed_out:
        return "timeout", time.perf_counter() - started
    # any failure counts, also 2-4 (interrupted, internal or usage error: e.g. a mutant
    # that breaks the import, which the tests notice); no test selected notices nothing
    code = os.waitstatus_to_exitcode(status)
    outcome = "passed" if code in (0, NO_TESTS) else "failed"
    return outcome, time.perf_counter() - started


def end_group(pgid):
    """SIGKILL every process still in process group pgid."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:  # the group has no process left
        pass


def campaign_jobs(args):
    if args.campaign:
        unknown = set(args.only) - {f for f, _, _ in CAMPAIGN}
        if unknown:
            raise SystemExit(f"error: --only {', '.join(sorted(unknown))}: not in CAMPAIGN")
        return [(f, names, tests) for f, names, tests in CAMPAIGN]
    if args.only:
        raise SystemExit("error: --only needs --campaign")
    if not args.target or not (args.tests or args.list):
        raise SystemExit("error: give --campaign, or --target and --tests (last: the rest of "
                         "the command line goes to pytest)")
    jobs = []
    for t in args.target:
        file, _, names = t.partition(":")
        jobs.append((file, [n for n in names.split(",") if n], args.tests or []))
    return jobs


def run_job(work, file, mutants, tests, out):
    """Run the tests once unmutated, then once per mutant; returns the results."""
    original = (work / file).read_text()
    base, seconds = run_tests(work, tests, None)
    if base != "passed":
        raise SystemExit(f"error: the tests {' '.join(tests)} fail without any mutant")
    timeout = max(MIN_TIMEOUT_S, TIMEOUT_FACTOR * seconds)
    print(f"{file}: {len(mutants)} mutants; unmutated tests {seconds:.0f} s; "
          f"timeout {timeout:.0f} s; tests: {' '.join(tests)}", flush=True)
    results = []
    try:
        for m in mutants:
            (work / file).write_text(m.source)
            outcome, secs = run_tests(work, tests, timeout)
            status = {"passed": "SURVIVED", "failed": "KILLED", "timeout": "TIMEOUT"}[outcome]
            row = {"status": status, "file": m.file, "function": m.function, "line": m.line,
                   "col": m.col, "mutant": m.what, "seconds": round(secs, 1)}
            results.append(row)
            print(f"{status:8s} {m.file}:{m.line}:{m.col} {m.function}: {m.what} "
                  f"({secs:.0f} s)", flush=True)
            if out:
                with open(out, "a") as f:
                    f.write(json.dumps(row) + "\n")
    finally:
        (work / file).write_text(original)
    return results


def survivors_of(path, statuses):
    """Keys (file, function, line, col, mutant) of the rows of a results file whose status is
    in `statuses`; col is None in files written before it was recorded (it then matches any
    column)."""
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {(r["file"], r["function"], r["line"], r.get("col"), r["mutant"]) for r in rows
            if r["status"] in statuses}


def survived(m, keys):
    return any(k in keys for k in ((m.file, m.function, m.line, c, m.what) for c in (m.col, None)))


def summary(results):
    by_file = {}
    for r in results:
        by_file.setdefault(r["file"], []).append(r)
    lines = []
    for file, rows in [*by_file.items(), ("all", results)]:
        killed = sum(r["status"] != "SURVIVED" for r in rows)
        rate = 100 * killed / max(1, len(rows))
        lines.append(f"{file}: {killed}/{len(rows)} killed ({rate:.0f}%)")
    return "\n".join(lines)


def main(args):
    jobs = campaign_jobs(args)
    rng = random.Random(args.seed)
    planned = []
    for file, names, tests in jobs:
        mutants = mutants_of(Path(args.repo) / file, names)
        if args.line is not None:
            mutants = [m for m in mutants if m.line == args.line]
        if args.sample and len(mutants) > args.sample:
            mutants = sorted(rng.sample(mutants, args.sample), key=lambda m: (m.line, m.what))
        if args.survivors_of:
            keys = survivors_of(args.survivors_of, args.statuses.split(","))
            mutants = [m for m in mutants if survived(m, keys)]
        planned.append((file, mutants, tests))
    if args.only:  # after the draws, so that a file's sample does not depend on --only
        planned = [job for job in planned if job[0] in args.only]
    if args.list:
        for file, mutants, _ in planned:
            original = ast.unparse(ast.parse((Path(args.repo) / file).read_text())).splitlines()
            for m in mutants:
                print(f"{m.file}:{m.line}:{m.col} {m.function}: {m.what}")
                if args.diff:
                    diff = difflib.unified_diff(original, m.source.splitlines(), n=0,
                                                lineterm="")
                    print("\n".join(list(diff)[2:]))
        print(f"{sum(len(m) for _, m, _ in planned)} mutants")
        return
    preload()
    results = []
    with tempfile.TemporaryDirectory(prefix="mutate-") as tmp:
        work = Path(tmp) / "repo"
        shutil.copytree(args.repo, work,
                        ignore=lambda folder, names: skip_outputs(args.repo, folder, names))
        for file, mutants, tests in planned:
            if mutants:
                results += run_job(work, file, mutants, tests, args.out)
    print(summary(results))
    survivors = [r for r in results if r["status"] == "SURVIVED"]
    if survivors:
        print("survivors:")
        for r in survivors:
            print(f"  {r['file']}:{r['line']}:{r['col']} {r['function']}: {r['mutant']}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
