"""--extend_to N continues a finished run from its last checkpoint to N epochs: the lr follows
an N-epoch warmup + cosine from the current step, args.json and summary.json record the
extension, and an extension killed once in the middle equals an uninterrupted one bit for
bit. Without the flag, a finished run with another --total_epoch is still refused."""
import csv
import json
import shutil
from argparse import Namespace

import pytest
import torch
from conftest import TINY_DATA, TINY_ENCODER, one_error_line, run_scripts

from mae_cifar import fileio
from mae_cifar.cli import UsageError
from mae_cifar.training import engine, run_folder
from mae_cifar.training.optim import cosine_lr

pytestmark = pytest.mark.usefixtures("one_thread")
EPOCHS, EXTEND_TO, WARMUP = 2, 4, 1
STEPS_PER_EPOCH = 2  # TINY_DATA: 64 training images in batches of 32
KILL_AFTER_STEPS = 3  # of the extension: in the middle of its second epoch
SIGTERM_EXIT = 128 + 15
STAGE, MODEL = "scratch-cls", "vit-t-clf-from_scratch.pt"
WALL_CLOCK = {"epoch_seconds", "images_per_s", "wall_seconds", "feature_seconds"}
BASE_LR = 1e-3


def cmd(root, exp, *extra):
    return ["train_classifier.py", *TINY_DATA, *TINY_ENCODER, "--total_epoch", str(EPOCHS),
            "--warmup_epoch", str(WARMUP), "--base_learning_rate", str(BASE_LR),
            "--output_root", root, "--exp_name", exp, *extra]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("extend")
    base = run_scripts([cmd(root, "base")])[0]
    assert base.returncode == 0, base.stderr[-2000:]
    for exp in ("a", "b"):
        shutil.copytree(root / "base", root / exp)
    extend = ("--extend_to", str(EXTEND_TO))
    names = ["a", "b_killed", "b", "a_again", "no_flag", "too_few", "new_folder"]
    results = run_scripts([
        cmd(root, "a", *extend),
        {"argv": cmd(root, "b", *extend), "sigterm_after": KILL_AFTER_STEPS},
        cmd(root, "b", *extend),
        cmd(root, "a", *extend),
        [*cmd(root, "base")[:-4], "--total_epoch", str(EXTEND_TO), "--output_root", root,
         "--exp_name", "base"],
        cmd(root, "base", "--extend_to", str(EPOCHS)),
        cmd(root, "new", *extend)])
    return dict(root=root, results=dict(zip(names, results)))


def folder(runs, exp):
    return runs["root"] / exp / STAGE


def rows(runs, exp):
    with open(folder(runs, exp) / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in csv.DictReader(f)]


def summary(runs, exp):
    s = json.loads((folder(runs, exp) / "summary.json").read_text())
    return {k: v for k, v in s.items() if k not in WALL_CLOCK}


def test_an_extension_killed_once_equals_an_uninterrupted_one_bit_for_bit(runs):
    r = runs["results"]
    assert r["a"].returncode == 0, r["a"].stderr[-2000:]
    assert r["b_killed"].returncode == SIGTERM_EXIT, r["b_killed"].stderr[-2000:]
    assert r["b"].returncode == 0, r["b"].stderr[-2000:]
    assert "resuming from" in r["b"].stdout
    a, b = (torch.load(folder(runs, e) / MODEL, weights_only=True) for e in ("a", "b"))
    assert a["epoch"] == EXTEND_TO
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())
    assert rows(runs, "a") == rows(runs, "b") and len(rows(runs, "a")) == EXTEND_TO
    assert rows(runs, "a")[:EPOCHS] == rows(runs, "base")  # the finished epochs are kept
    assert summary(runs, "a") == summary(runs, "b")


def test_the_extension_follows_the_cosine_of_an_n_epoch_run(runs):
    peak = BASE_LR * 32 / engine.LR_REFERENCE_BATCH
    total, warmup = EXTEND_TO * STEPS_PER_EPOCH, WARMUP * STEPS_PER_EPOCH
    for r in rows(runs, "a")[EPOCHS:]:  # the CSV's lr: the epoch's last step
        last_step = (int(r["epoch"]) + 1) * STEPS_PER_EPOCH - 1
        assert float(r["lr"]) == pytest.approx(cosine_lr(last_step, total, warmup, peak, 0.0))


def test_args_and_summary_record_the_extension(runs):
    args = json.loads((folder(runs, "a") / "args.json").read_text())
    assert args["total_epoch"] == EPOCHS and args["extend_to"] == EXTEND_TO
    s = summary(runs, "a")
    assert s["epochs"] == EXTEND_TO
    assert s["extensions"] == [{"from_epochs": EPOCHS, "to_epochs": EXTEND_TO}]
    again = runs["results"]["a_again"]
    assert again.returncode == 0 and "is finished; nothing to do" in again.stdout


@pytest.mark.parametrize("name,words", [
    ("no_flag", ["holds a run with other flags", "--total_epoch: 2 (saved) vs 4 (now)"]),
    ("too_few", ["--extend_to 2 must exceed --total_epoch 2"]),
    ("new_folder", ["--extend_to continues a finished run", "holds no run"]),
])
def test_extension_refusals_are_one_error_line(runs, name, words):
    one_error_line(runs["results"][name], words)
    assert not (runs["root"] / "new").exists()


def test_a_run_that_stopped_early_is_not_extended(tmp_path):
    """Its patience would stop the extension at once: one clear line instead."""
    flags = {"total_epoch": 8, "overwrite": False, "extend_to": 12}
    fileio.write_json(tmp_path / run_folder.ARGS_FN, {**flags, "extend_to": None})
    fileio.write_json(tmp_path / run_folder.SUMMARY_FN,
                      {"epochs": 5, "stop_reason": "patience: no val_acc improvement"})
    (tmp_path / run_folder.CHECKPOINT_FN).write_bytes(b"")
    with pytest.raises(UsageError, match="stopped early after 5 of 8 epochs .patience"):
        run_folder.RunFolder(str(tmp_path), Namespace(**flags)).status()
