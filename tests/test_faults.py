"""Faults lose nothing: signals, kill -9, non-finite losses, locks and killed writes.

A resumed run must end with exactly the weights, optimizer state and metrics.csv (wall-clock
columns aside) of an uninterrupted run with the same flags, whether it stopped on SIGTERM in
the middle of an epoch or was killed with SIGKILL.
"""
import csv
import os
import signal
import subprocess
import sys
import time
from argparse import Namespace

import pytest
import torch
from conftest import REPO, TINY_MAE, run_scripts, script_env

import mae_pretrain
from mae_cifar.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from mae_cifar.cli import UsageError
from mae_cifar.fileio import TEMP_PREFIX
from mae_cifar.training import run_folder

BATCH, TRAIN_IMAGES = 16, 1024
STEPS_PER_EPOCH = TRAIN_IMAGES // BATCH  # 64: a signal after the first checkpoint lands mid-epoch
SIGTERM_AFTER = STEPS_PER_EPOCH + 5  # optimizer steps: the 6th step of the second epoch
NAN_FROM = STEPS_PER_EPOCH + 3  # the loss turns NaN at this step (epoch 1, step 2)
SIGINT_AFTER = STEPS_PER_EPOCH + 9  # Ctrl-C during the 10th step of the second epoch
STOP_AT = STEPS_PER_EPOCH + 7  # the run to kill -9 freezes after this step (second epoch)
WALL_CLOCK = {"epoch_seconds", "images_per_s"}  # CSV columns that may differ between runs
WAIT_S = 240  # generous bound for a subprocess to reach a state on 2 busy cores
POLL_S = 0.01  # seconds between looks at a background run's files
KILL_TRIES = 5  # SIGKILLs, each during a save, of a process that saves in a loop


def tiny_args(root, exp):
    """A ViT of width 32 on 16x16 fake images: 64 steps per epoch, 2 epochs, ~1 s each."""
    return ["--dataset", "fake", "--device", "cpu", "--image_size", "16", "--patch_size", "4",
            *TINY_MAE, "--batch_size", str(BATCH), "--max_train_images", str(TRAIN_IMAGES),
            "--max_eval_images", "32", "--eval_images", "32", "--save_images_n", "4",
            "--total_epoch", "2", "--warmup_epoch", "1", "--output_root", str(root),
            "--exp_name", exp]


def stage(root, exp):
    return os.path.join(root, exp, mae_pretrain.STAGE)


# `python fault.py AT ACTION script args`: runs the script; at optimizer step AT, an ACTION
# with 'sigint' sends SIGINT to the process (like Ctrl-C), 'stop' freezes it (SIGSTOP), one
# with 'nan' copies the checkpoint to BEFORE_NAN (next to the stage folder) and makes the loss
# NaN from then on.
FAULT_WRAPPER = """
import os, runpy, shutil, signal, sys
from mae_cifar.training import engine
from mae_cifar.training import run_folder
at, action = int(sys.argv[1]), sys.argv[2]
step = engine.Trainer._optimizer_step
def faulty_step(self, *a):
    faulty_step.calls += 1
    loss = step(self, *a)
    if faulty_step.calls == at and "nan" in action:
        shutil.copy(self.run.ckpt_path, self.run.path + {before!r})
    if faulty_step.calls == at and "sigint" in action:
        os.kill(os.getpid(), signal.SIGINT)
    if faulty_step.calls == at and action == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
    return loss * float("nan") if "nan" in action and faulty_step.calls >= at else loss
faulty_step.calls = 0
engine.Trainer._optimizer_step = faulty_step
try:
    sys.argv = sys.argv[3:]
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    engine.Trainer._optimizer_step = step
"""
BEFORE_NAN = "-checkpoint-before-nan.pt"


def start(argv, log_dir):
    """`python *argv` in the background, output to files in log_dir."""
    out = open(os.path.join(log_dir, "stdout"), "w")
    err = open(os.path.join(log_dir, "stderr"), "w")
    with out, err:
        return subprocess.Popen([sys.executable, *map(str, argv)], cwd=REPO, env=script_env(),
                                stdout=out, stderr=err)


def wait_until_stopped(proc, what):
    """Wait until proc has stopped itself with SIGSTOP (without reaping it)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        pid, status = os.waitpid(proc.pid, os.WNOHANG | os.WUNTRACED)
        if pid:
            assert os.WIFSTOPPED(status), f"the run exited ({status}) before {what}"
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(POLL_S)


def wait_for(condition, proc, what):
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert proc.poll() is None, f"the run exited ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(POLL_S)


def kill_mid_epoch(root, wrapper):
    """Start a run that freezes itself (SIGSTOP) at step STOP_AT, in its second epoch; start
    the same command here (refused: the frozen run holds the lock), then SIGKILL the frozen
    run. Leaves a temporary file like the one a kill during a save leaves. -> facts for the
    tests."""
    args = tiny_args(root, "kill")
    ckpt = os.path.join(stage(root, "kill"), run_folder.CHECKPOINT_FN)
    proc = start([wrapper, STOP_AT, "stop", "mae_pretrain.py", *args], root)
    try:
        wait_until_stopped(proc, f"step {STOP_AT}")
        try:
            mae_pretrain.main(mae_pretrain.get_args_parser().parse_args(args))
            refusal = None
        except UsageError as e:
            refusal = str(e)
    finally:
        proc.kill()
        proc.wait()
    with open(os.path.join(stage(root, "kill"), run_folder.LOCK_FN)) as f:
        lock_pid = int(f.read())
    with open(os.path.join(stage(root, "kill"), ".tmp-killed-checkpoint.pt"), "wb") as f:
        f.write(b"half a checkpoint")
    return {"pid": proc.pid, "returncode": proc.returncode, "refusal": refusal,
            "lock_pid": lock_pid, "epoch": load_checkpoint(ckpt, kind="mae")["epoch"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A run killed with SIGKILL mid-epoch; then in one interpreter: an uninterrupted run, a
    run stopped by SIGTERM mid-epoch and its resume, the resume of the killed run, a run whose
    loss turns NaN after the first checkpoint (and one that also gets SIGINT then), one with a
    huge lr, one stopped by SIGINT."""
    root = tmp_path_factory.mktemp("faults")
    wrapper = root / "fault.py"
    wrapper.write_text(FAULT_WRAPPER.format(before=BEFORE_NAN))
    killed = kill_mid_epoch(root, wrapper)
    commands = {
        "reference": ["mae_pretrain.py", *tiny_args(root, "ref")],
        "sigterm": {"argv": ["mae_pretrain.py", *tiny_args(root, "term")],
                    "sigterm_after": SIGTERM_AFTER},
        "resume": ["mae_pretrain.py", *tiny_args(root, "term")],
        "resume_killed": ["mae_pretrain.py", *tiny_args(root, "kill")],
        "nan": [wrapper, NAN_FROM, "nan", "mae_pretrain.py", *tiny_args(root, "nan")],
        "nan_sigint": [wrapper, NAN_FROM, "nan_sigint", "mae_pretrain.py",
                       *tiny_args(root, "nan_sigint")],
        "huge_lr": ["mae_pretrain.py", *tiny_args(root, "lr"), "--base_learning_rate", "1e30"],
        "sigint": [wrapper, SIGINT_AFTER, "sigint", "mae_pretrain.py", *tiny_args(root, "int")],
    }
    return root, killed, dict(zip(commands, run_scripts(list(commands.values()))))


def final_state(folder):
    """(model weights, optimizer state, CSV rows without wall-clock columns) of a run."""
    model = torch.load(os.path.join(folder, "vit-t-mae.pt"), weights_only=True)["model"]
    optim = torch.load(os.path.join(folder, run_folder.CHECKPOINT_FN),
                       weights_only=True)["optimizer"]
    with open(os.path.join(folder, "metrics.csv"), newline="") as f:
        rows = [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in csv.DictReader(f)]
    return model, optim, rows


def assert_same_run(folder, reference):
    model, optim, rows = final_state(folder)
    ref_model, ref_optim, ref_rows = final_state(reference)
    assert model.keys() == ref_model.keys()
    assert all(torch.equal(model[k], ref_model[k]) for k in model), "weights differ"
    assert optim["state"].keys() == ref_optim["state"].keys(), "optimizer entries differ"
    for i, ref_state in ref_optim["state"].items():
        assert optim["state"][i].keys() == ref_state.keys(), f"optimizer entry {i} differs"
        assert all(torch.equal(optim["state"][i][k], v) for k, v in ref_state.items()), \
            f"optimizer entry {i} differs"
    assert optim["param_groups"] == ref_optim["param_groups"]
    assert [r["epoch"] for r in rows] == [str(e) for e in range(len(ref_rows))]
    assert rows == ref_rows


def no_temp_files(folder):
    return not [f for _, _, files in os.walk(folder) for f in files if f.startswith(".tmp-")]


def stop_line(root, exp, signame):
    path = os.path.join(stage(root, exp), run_folder.CHECKPOINT_FN)
    return f"stopped by {signame}: checkpoint saved to {path}; run the same command to resume"


# --------------------------------------------------------------------------- signals
def test_sigterm_checkpoints_and_says_how_to_resume(runs):
    root, _, procs = runs
    proc = procs["sigterm"]
    assert procs["reference"].returncode == 0, procs["reference"].stderr
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert proc.stderr.strip().splitlines() == [stop_line(root, "term", "SIGTERM")]
    # acknowledged on stdout when it arrived, before the step ended and the checkpoint
    assert "received SIGTERM: stopping after this step; a checkpoint follows" in proc.stdout


def test_resume_after_sigterm_mid_epoch_is_identical(runs):
    root, _, procs = runs
    proc = procs["resume"]
    assert proc.returncode == 0, proc.stderr
    # the signal arrived during step SIGTERM_AFTER; that step finished, then the checkpoint
    assert f"epoch 1, step {SIGTERM_AFTER - STEPS_PER_EPOCH}" in proc.stdout
    assert_same_run(stage(root, "term"), stage(root, "ref"))
    assert not os.path.exists(os.path.join(stage(root, "term"), run_folder.LOCK_FN))


def test_sigint_checkpoints_mid_epoch(runs):
    root, _, procs = runs
    proc = procs["sigint"]
    assert proc.returncode == 128 + signal.SIGINT, proc.stderr
    assert proc.stderr.strip().splitlines() == [stop_line(root, "int", "SIGINT")]
    saved = load_checkpoint(os.path.join(stage(root, "int"), run_folder.CHECKPOINT_FN))
    assert (saved["epoch"], saved["step"]) == (1, SIGINT_AFTER - STEPS_PER_EPOCH)


# --------------------------------------------------------------------------- kill -9, lock
def test_second_run_is_refused_while_one_runs(runs):
    _, killed, _ = runs
    assert killed["refusal"] is not None, "the second run was not refused"
    assert f"another run (pid {killed['pid']}) is writing to" in killed["refusal"]


def test_kill9_mid_epoch_then_resume_is_identical(runs):
    root, killed, procs = runs
    assert killed["returncode"] == -signal.SIGKILL
    assert killed["epoch"] == 1  # the last complete checkpoint survived the kill
    assert killed["lock_pid"] == killed["pid"]  # a stale lock: its owner is dead
    proc = procs["resume_killed"]
    assert proc.returncode == 0, proc.stderr
    assert "epoch 1, step 0" in proc.stdout
    assert_same_run(stage(root, "kill"), stage(root, "ref"))  # each epoch once in the CSV
    assert no_temp_files(stage(root, "kill"))
    assert not os.path.exists(os.path.join(stage(root, "kill"), run_folder.LOCK_FN))


# --------------------------------------------------------------------------- non-finite loss
@pytest.mark.parametrize("case", ["nan", "nan_sigint"])
def test_nonfinite_loss_stops_and_keeps_the_last_checkpoint(runs, case):
    """Also when a signal asks for a checkpoint before the loss was next checked."""
    root, _, procs = runs
    proc, folder = procs[case], stage(root, case)
    assert proc.returncode == 3, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert f"loss is not finite at epoch 1, step {NAN_FROM - STEPS_PER_EPOCH - 1}" in line
    assert "last good checkpoint is kept" in line and "--base_learning_rate" in line
    with open(os.path.join(folder, run_folder.CHECKPOINT_FN), "rb") as now, \
            open(folder + BEFORE_NAN, "rb") as before:
        assert now.read() == before.read()
    assert load_checkpoint(os.path.join(folder, run_folder.CHECKPOINT_FN))["epoch"] == 1
    assert not os.path.exists(os.path.join(folder, run_folder.SUMMARY_FN))


def test_huge_learning_rate_stops_with_a_hint(runs):
    root, _, procs = runs
    proc = procs["huge_lr"]
    assert proc.returncode == 3, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: loss is not finite at epoch 0, step ")
    assert "no checkpoint had been written" in line and "--base_learning_rate" in line
    assert not os.path.exists(os.path.join(stage(root, "lr"), run_folder.CHECKPOINT_FN))


# --------------------------------------------------------------------------- killed writes
def save_forever(path, state):
    """Child process: rewrite the checkpoint until killed."""
    try:
        while True:
            save_checkpoint(state, path)
    finally:
        os._exit(0)


def temp_files(folder):
    return [f for f in os.listdir(folder) if f.startswith(TEMP_PREFIX)]


def test_checkpoint_survives_kill_during_a_save(tmp_path):
    """SIGKILL a process that saves checkpoints in a loop, each time while a save is under
    way (its temporary file exists): the file always loads whole, and the temporary files the
    killed saves leave are removed when the run folder is opened."""
    path = str(tmp_path / run_folder.CHECKPOINT_FN)
    state = {"format": CHECKPOINT_FORMAT, "kind": "mae", "weights": torch.randn(2 ** 21)}
    save_checkpoint(state, path)
    left = set()
    for _ in range(KILL_TRIES):
        pid = os.fork()
        if pid == 0:
            save_forever(path, state)
        try:
            deadline = time.monotonic() + WAIT_S
            while not set(temp_files(tmp_path)) - left:  # a save of this child is under way
                assert time.monotonic() < deadline, "no save started"
                time.sleep(POLL_S / 10)
        finally:  # also when no save started: the child would save forever
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        assert torch.equal(load_checkpoint(path, kind="mae")["weights"], state["weights"])
        left |= set(temp_files(tmp_path))
    assert left  # the kills did land in the middle of saves
    with open(tmp_path / ".tmp-stale-metrics.csv", "w") as f:
        f.write("epoch,loss\n0,")
    run = run_folder.RunFolder(str(tmp_path), Namespace(overwrite=False))
    run.open(fresh=False)
    run.release()
    assert no_temp_files(str(tmp_path))
    assert torch.equal(load_checkpoint(path, kind="mae")["weights"], state["weights"])
