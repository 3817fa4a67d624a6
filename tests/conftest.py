"""Shared test helpers: tiny-model flags and ways to run the stage scripts as a user would.

    from conftest import TINY_DATA, TINY_MAE, run_script, run_scripts
    pytestmark = pytest.mark.usefixtures("one_thread")

run_script runs one command in a fresh interpreter. Importing torch, timm and torchvision
costs several seconds, so run_scripts runs a list of commands one after the other in ONE
fresh interpreter (each as `python script.py ...`: __main__, argv, exit code, stdout and
stderr are its own); use it when a test needs several runs.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the modules under test live at the repository root

# CPU, generated 16x16 images (64 patches of 2x2), 2 steps of 32 images per epoch.
TINY_DATA = ["--dataset", "fake", "--device", "cpu", "--image_size", "16", "--batch_size", "32",
             "--max_train_images", "64", "--max_eval_images", "32"]
# A ViT of width 32 and depth 2 (sizes of mae_pretrain.py; the classifier takes the encoder
# part, or the encoder of its --pretrained_model_path).
TINY_ENCODER = ["--emb_dim", "32", "--encoder_layer", "2", "--encoder_head", "2"]
TINY_MAE = TINY_ENCODER + ["--decoder_layer", "1", "--decoder_dim", "32"]
SCRIPT_TIMEOUT_S = 900
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # the CPUs are shared


@pytest.fixture
def one_thread():
    """torch on one CPU thread for the test: on shared, busy cores two threads of tiny ops
    run tens of times slower than one. Use with pytest.mark.usefixtures("one_thread")."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def script_env():
    return {**os.environ, **THREAD_ENV, "PYTHONPATH": str(REPO)}


def run_script(script, *args):
    """`python script *args` in the repo root -> CompletedProcess (text stdout/stderr)."""
    return subprocess.run([sys.executable, script, *map(str, args)], cwd=REPO, env=script_env(),
                          capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S)


# Runs each {"argv": [script, *args], "sigterm_after": N or None, "enospc_at": M or None} as
# __main__ and prints a JSON list of {"returncode", "stdout", "stderr", "end_ns", "writes"}.
# sigterm_after=N sends SIGTERM to the process right after its N-th optimizer step, like a
# scheduler pre-empting the job. enospc_at=M makes the M-th atomic write (fileio) fail with
# ENOSPC, as on a full disk; "writes" counts the command's atomic writes.
_DRIVER = r"""
import contextlib, errno, io, json, os, runpy, signal, sys, time, traceback, types
from mae_cifar.training import engine
from mae_cifar import fileio
commands = json.loads(sys.argv[1])
class FullDisk(types.ModuleType):  # fileio's view of os: every atomic write ends in fsync
    def __getattr__(self, name):
        return getattr(os, name)
    def fsync(self, fd):
        self.writes += 1
        if self.writes == self.fail_at:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os.fsync(fd)
disk = fileio.os = FullDisk("os")
step = engine.Trainer._optimizer_step
def counting_step(self, *a):
    out = step(self, *a)
    counting_step.calls += 1
    if counting_step.calls == counting_step.stop_at:
        os.kill(os.getpid(), signal.SIGTERM)
    return out
engine.Trainer._optimizer_step = counting_step
results = []
for cmd in commands:
    counting_step.calls, counting_step.stop_at = 0, cmd.get("sigterm_after")
    disk.writes, disk.fail_at = 0, cmd.get("enospc_at")
    sys.argv = [str(a) for a in cmd["argv"]]
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_path(sys.argv[0], run_name="__main__")
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
    results.append({"returncode": code, "stdout": out.getvalue(), "stderr": err.getvalue(),
                    "end_ns": time.time_ns(), "writes": disk.writes})
print(json.dumps(results))
"""


def run_scripts(commands, cwd=REPO):
    """Run commands (lists [script, *args], or dicts {"argv": [...], "sigterm_after": N,
    "enospc_at": M}) in order in one fresh interpreter, in folder cwd -> a CompletedProcess
    per command, whose .end_ns is the time.time_ns() at which the command returned (files it
    wrote are no newer) and .writes the number of its atomic writes."""
    specs = [c if isinstance(c, dict) else {"argv": c} for c in commands]
    proc = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps(specs, default=str)],
                          cwd=cwd, env=script_env(), capture_output=True, text=True,
                          timeout=SCRIPT_TIMEOUT_S)
    if proc.returncode != 0:
        raise RuntimeError(f"the script driver failed:\n{proc.stderr[-4000:]}")
    results = []
    for spec, r in zip(specs, json.loads(proc.stdout.splitlines()[-1])):
        results.append(subprocess.CompletedProcess(spec["argv"], r["returncode"], r["stdout"],
                                                   r["stderr"]))
        results[-1].end_ns, results[-1].writes = r["end_ns"], r["writes"]
    return results


# Seconds per timed call that `known_bench_times` makes bench.py report, by timed path.
KNOWN_STEP_S = {"fast": 0.1, "eager": 0.2, "seed": 0.4, "extract": 0.05, "head": 0.01}


@pytest.fixture
def known_bench_times(monkeypatch):
    """bench.py runs every path for real, but each timed call reports KNOWN_STEP_S of its
    path: its numbers can then be checked against values worked out by hand."""
    import bench
    measure = bench.Bench.measure

    def known(self, fns):
        return {name: [KNOWN_STEP_S[name]] * len(t) for name, t in measure(self, fns).items()}
    monkeypatch.setattr(bench.Bench, "measure", known)
    return KNOWN_STEP_S


def one_error_line(proc, words):
    """proc exited 2 with one `error:` line holding every word of words -> that line."""
    assert proc.returncode == 2, proc.stdout[-500:] + proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]
