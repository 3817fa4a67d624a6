"""The run folder keeps results apart: its state comes from every file in it, one run at a
time holds it, a classifier knows the exact MAE file it started from, and files a user edited
by hand give one line instead of a traceback."""
import json
import os
import shutil
import subprocess
import sys
from argparse import Namespace

import pytest
from conftest import REPO, TINY_DATA, TINY_ENCODER, TINY_MAE, run_scripts, script_env

from mae_cifar import cli
from mae_cifar.fileio import file_sha256
from mae_cifar.training import run_folder

pytestmark = pytest.mark.usefixtures("one_thread")
RACE_ROUNDS = 320  # tries, each two processes starting the same run at the same instant
RACE_TIMEOUT_S = 300
MAE = "mae_pretrain.py"
CLF = "train_classifier.py"
EPOCHS = ["--total_epoch", "2", "--warmup_epoch", "0"]
STEPS_PER_EPOCH = 2  # TINY_DATA: 64 images, batch 32

# Two processes (forked after the imports) meet at a barrier, then both do what a stage does
# at start: status(), open(), and while holding the folder mkdir (then rmdir) a marker that
# a second holder at the same time could not create. Rounds cycle through a new folder, a
# lock left by a dead process (pid 1 never holds it), a lock with garbage in it, and an
# unfinished run (args.json).
_RACE = r"""
import json, multiprocessing as mp, os, sys, time
from argparse import Namespace
from mae_cifar import fileio
from mae_cifar.training import run_folder
from mae_cifar import cli
from mae_cifar.cli import UsageError
root, rounds = sys.argv[1], int(sys.argv[2])
KINDS = ("new", "stale_lock", "garbage_lock", "unfinished")
args = Namespace(overwrite=False, seed=1)

def prepare(i):
    path = os.path.join(root, f"r{i}")
    kind = KINDS[i % len(KINDS)]
    if kind != "new":
        os.makedirs(path)
    if kind == "stale_lock":
        open(os.path.join(path, run_folder.LOCK_FN), "w").write("1\n")
    if kind == "garbage_lock":
        open(os.path.join(path, run_folder.LOCK_FN), "w").write("\x00garbage 99999999999999999999")
    if kind == "unfinished":
        fileio.write_json(os.path.join(path, run_folder.ARGS_FN), vars(args))
    return path

def worker(barrier, out):
    held = refused = double = 0
    for i in range(rounds):
        barrier.wait()
        run = run_folder.RunFolder(os.path.join(root, f"r{i}"), args)
        try:
            run.open(fresh=run.status() == "new")
        except UsageError:
            refused += 1
            barrier.wait()
            continue
        held += 1
        marker = os.path.join(root, f"r{i}.holder")
        try:
            os.mkdir(marker)  # fails while the other process holds the folder too
        except FileExistsError:
            double += 1
        else:
            time.sleep(0.001)
            os.rmdir(marker)
        run.release()
        barrier.wait()
    out.put({"held": held, "refused": refused, "double": double})

for i in range(rounds):
    prepare(i)
ctx = mp.get_context("fork")
barrier, out = ctx.Barrier(2), ctx.Queue()
procs = [ctx.Process(target=worker, args=(barrier, out)) for _ in range(2)]
for p in procs:
    p.start()
results = [out.get() for _ in procs]
for p in procs:
    p.join()
print(json.dumps(results))
"""


def test_two_processes_never_both_hold_the_lock(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _RACE, str(tmp_path), str(RACE_ROUNDS)],
                          cwd=REPO, env=script_env(), capture_output=True, text=True,
                          timeout=RACE_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.splitlines()[-1])
    assert sum(r["double"] for r in results) == 0
    # every round had exactly one holder at a time and at least one holder in all
    assert sum(r["held"] + r["refused"] for r in results) == 2 * RACE_ROUNDS
    assert sum(r["held"] for r in results) >= RACE_ROUNDS
    assert not any(n.endswith(".holder") for n in os.listdir(tmp_path))


def test_only_the_owner_releases_the_lock(tmp_path):
    owner = run_folder.RunFolder(str(tmp_path), Namespace(overwrite=False))
    owner.open(fresh=True)
    other = run_folder.RunFolder(str(tmp_path), Namespace(overwrite=False))
    with pytest.raises(cli.UsageError, match=f"another run \\(pid {os.getpid()}\\)"):
        other.open(fresh=False)
    other.release()  # it never held the lock: a no-op
    assert os.path.exists(tmp_path / run_folder.LOCK_FN)
    owner.release()
    assert not os.path.exists(tmp_path / run_folder.LOCK_FN)


# --------------------------------------------------------------------------- Ctrl-C, sizes
# `python ctrl_c.py MODULE OWNER NAME script args`: OWNER.NAME of MODULE (OWNER "-" for the
# module itself) raises KeyboardInterrupt, as Ctrl-C during it would; then the script runs.
CTRL_C = """
import importlib, runpy, sys
module, owner, name = sys.argv[1:4]
target = importlib.import_module(module)
target = target if owner == "-" else getattr(target, owner)
original = getattr(target, name)
def interrupted(*a, **k):
    raise KeyboardInterrupt
setattr(target, name, interrupted)
try:
    sys.argv = sys.argv[4:]
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    setattr(target, name, original)
"""


# --------------------------------------------------------------------------- hand-edited files
def mae_flags(root, exp, *extra):
    return [MAE, *TINY_DATA, *TINY_MAE, *EPOCHS, "--output_root", root, "--exp_name", exp,
            *extra]


def edit(folder, name, change):
    path = os.path.join(folder, name)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    with open(path, "w", encoding="utf-8") as f:
        f.write(change(text))


EDITS = {  # exp -> (file, edit, extra flags, expected returncode, fragment of the output)
    "bom": ("metrics.csv", lambda t: "\ufeff" + t, [], 0, "resuming from"),
    "garbage_row": ("metrics.csv", lambda t: t + "x,y\n", [], 2, "line 3 is damaged"),
    "emb_dim": ("args.json", lambda t: t.replace('"emb_dim": 32', '"emb_dim": 64'),
                ["--emb_dim", "64"], 2, "holds another model (emb_dim 32 (checkpoint)"),
    "huge_pid": (".lock", lambda t: "9" * 20 + "\n", [], 0, "resuming from"),
    "args_gone": ("args.json", None, [], 0, "resuming from"),
    "args_gone_other_flags": ("args.json", None, ["--seed", "1"], 2,
                              "--seed: 42 (saved) vs 1 (now)"),
    "model_as_checkpoint": ("checkpoint.pt", "final model", [], 2,
                            "is not a resumable checkpoint (no optimizer"),
}
FINAL_MODEL = "final model"  # an edit: the finished run's model file copied over the file


def classifier_flags(root, *extra):
    return [CLF, *TINY_DATA, "--total_epoch", "1", "--warmup_epoch", "0", "--output_root", root,
            *extra]


def upstream_flags(root, mae):
    return classifier_flags(root, "--exp_name", "c", "--pretrained_model_path", mae,
                            "--output_model_path", os.path.join(root, "new", "c.pt"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two interpreters. First: an unfinished run (stopped by SIGTERM in its second epoch), a
    finished one, an MAE and a classifier fine-tuned from it. In between: the unfinished run
    copied and edited once per case, the finished one's args.json deleted, the MAE copied
    elsewhere. Then: the edited runs resumed, the finished one run with other flags, the
    classifier with its MAE spelled or placed differently, the MAE re-pretrained and the
    classifier once more, and Ctrl-C before training (CTRL_C) -> facts for the tests."""
    tmp = tmp_path_factory.mktemp("run_folder")
    root = str(tmp)
    mae = os.path.join(root, "m", "mae-pretrain", "vit-t-mae.pt")
    first = run_scripts([{"argv": mae_flags(root, "base"), "sigterm_after": STEPS_PER_EPOCH + 1},
                         mae_flags(root, "done"), mae_flags(root, "m"),
                         upstream_flags(root, mae)])
    assert [p.returncode for p in first] == [143, 0, 0, 0], [p.stderr for p in first]
    base = os.path.join(root, "base", "mae-pretrain")
    for exp, (name, change, _, _, _) in EDITS.items():
        folder = os.path.join(root, exp, "mae-pretrain")
        shutil.copytree(base, folder)
        if change is None:
            os.remove(os.path.join(folder, name))
        elif change == FINAL_MODEL:
            shutil.copy(os.path.join(root, "done", "mae-pretrain", "vit-t-mae.pt"),
                        os.path.join(folder, name))
        else:
            if not os.path.exists(os.path.join(folder, name)):
                open(os.path.join(folder, name), "w").close()
            edit(folder, name, change)
    done = os.path.join(root, "done", "mae-pretrain")
    os.remove(os.path.join(done, "args.json"))
    before = sorted(os.listdir(done))
    moved = os.path.join(root, "moved.pt")
    shutil.copy(mae, moved)
    wrapper = tmp / "ctrl_c.py"
    wrapper.write_text(CTRL_C)
    probe = classifier_flags(root, "--linear_probe", *TINY_ENCODER, "--exp_name", "cache")
    commands = {
        **{exp: mae_flags(root, exp, *EDITS[exp][2]) for exp in EDITS},
        "done": mae_flags(root, "done", "--mask_ratio", "0.5"),
        "respelled": upstream_flags(root, "./" + os.path.relpath(mae, REPO)),
        "moved": upstream_flags(root, moved),
        "repretrain": mae_flags(root, "m", "--overwrite", "--mask_ratio", "0.5"),
        "stale": upstream_flags(root, mae),
        "ctrl_c_load": [wrapper, "mae_cifar.training.engine", "-", "load_dataset",
                        *mae_flags(root, "load")],
        "ctrl_c_cache": [wrapper, "model", "ViT_Classifier", "features", *probe],
        "huge_batch": [*mae_flags(root, "big"), "--batch_size", "100000000", "--total_epoch",
                       "1"],
    }
    procs = dict(zip(commands, run_scripts(list(commands.values()))))
    return {"root": root, "procs": procs, "done_before": before, "mae": mae, "moved": moved,
            "done_after": sorted(os.listdir(done))}


@pytest.mark.parametrize("case", list(EDITS))
def test_hand_edited_run_files(runs, case):
    proc = runs["procs"][case]
    code, fragment = EDITS[case][3], EDITS[case][4]
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    if code:
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0]
    else:
        assert fragment in proc.stdout and "epoch 1, step 1" in proc.stdout


def test_finished_run_without_args_json_is_not_wiped(runs):
    """Issue 17, case 1: other flags are refused (the checkpoint still names the run)."""
    proc, before, after = runs["procs"]["done"], runs["done_before"], runs["done_after"]
    assert proc.returncode == 2 and "--mask_ratio: 0.75 (saved) vs 0.5 (now)" in proc.stderr
    assert after == before and "summary.json" in after and "vit-t-mae.pt" in after


# --------------------------------------------------------------------------- upstream identity
def test_classifier_follows_the_content_of_its_mae(runs):
    """Issue 17, case 3: the hash is recorded; the same file spelled or placed differently is
    the same upstream; a re-pretrained MAE is reported with --overwrite as the remedy."""
    root, procs, mae, moved = runs["root"], runs["procs"], runs["mae"], runs["moved"]
    with open(os.path.join(root, "c", "pretrain-cls", "summary.json")) as f:
        summary = json.load(f)
    assert summary["pretrained_sha256"] == file_sha256(moved)
    assert os.path.exists(os.path.join(root, "new", "c.pt"))  # its folder made at the start
    for case in ("respelled", "moved"):
        proc = procs[case]
        assert proc.returncode == 0 and "nothing to do" in proc.stdout, proc.stderr
    assert procs["repretrain"].returncode == 0
    with open(os.path.join(root, "m", "mae-pretrain", "summary.json")) as f:
        assert json.load(f)["model_sha256"] == file_sha256(mae) != file_sha256(moved)
    lines = procs["stale"].stderr.strip().splitlines()
    assert procs["stale"].returncode == 2 and len(lines) == 1
    assert f"trained from a pretrained model with sha256 {file_sha256(moved)[:12]}" in lines[0]
    assert "--overwrite" in lines[0]


# --------------------------------------------------------------------------- Ctrl-C, sizes
def test_ctrl_c_before_training_and_absurd_sizes(runs):
    root, procs = runs["root"], runs["procs"]
    for case in ("ctrl_c_load", "ctrl_c_cache"):
        proc = procs[case]
        assert proc.returncode == 130, proc.stderr
        assert proc.stderr.strip().splitlines() == [
            "stopped by SIGINT before training started; nothing to resume yet: run the same "
            "command again"]
    assert not os.path.exists(os.path.join(root, "cache", "scratch-cls-lin", run_folder.LOCK_FN))
    proc = procs["huge_batch"]
    assert proc.returncode == 0, proc.stderr
    assert "warning: --batch_size 100000000 exceeds the 64 training images" in proc.stdout


# --------------------------------------------------------------------------- issue 25
def test_output_paths_of_other_runs_are_refused(tmp_path):
    """25.3: --model_fn in another run's folder, or at a file this run did not write, is one
    error line and nothing is written; a path the run wrote itself is its own on rerun."""
    root = str(tmp_path)
    mae = os.path.join(root, "base", "mae-pretrain", "vit-t-mae.pt")
    foreign = tmp_path / "mine.pt"
    foreign.write_bytes(b"a user's file")
    own = os.path.join(root, "out", "x.pt")
    clf = [*classifier_flags(root), *TINY_ENCODER, "--exp_name"]
    procs = run_scripts([
        mae_flags(root, "base"),
        [*clf, "other", "--model_fn", mae],
        [*clf, "other", "--model_fn", os.path.join(root, "base", "mae-pretrain", "new.pt")],
        [*clf, "other", "--model_fn", foreign],
        [*clf, "ok", "--model_fn", own],
        [*clf, "ok", "--model_fn", own],
        [*clf, "ok", "--model_fn", own, "--overwrite"],
        [*clf, "ok2", "--model_fn", own]])
    assert procs[0].returncode == 0, procs[0].stderr[-2000:]
    for proc, words in ((procs[1], "another run's folder"), (procs[2], "another run's folder"),
                        (procs[3], "exists and this run did not write it"),
                        (procs[7], "exists and this run did not write it")):
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and words in lines[0], proc.stderr
    assert [p.returncode for p in procs[4:7]] == [0, 0, 0], procs[6].stderr[-2000:]
    assert "nothing to do" in procs[5].stdout
    with open(os.path.join(root, "base", "mae-pretrain", "summary.json")) as f:
        assert json.load(f)["model_sha256"] == file_sha256(mae)  # base's MAE is untouched
    assert foreign.read_bytes() == b"a user's file"
    assert not os.path.exists(os.path.join(root, "other"))


def test_refused_run_leaves_a_folder_the_corrected_command_takes(tmp_path):
    """25.16: --recipe paper's batch 1024 on 64 images is refused after the folder is made;
    the corrected command (with --batch_size) then runs instead of meeting "other flags"."""
    at = TINY_DATA.index("--batch_size")
    data = TINY_DATA[:at] + TINY_DATA[at + 2:]
    cmd = [CLF, *data, *TINY_ENCODER, "--total_epoch", "1", "--warmup_epoch", "0",
           "--output_root", tmp_path, "--exp_name", "e", "--recipe", "paper"]
    refused, corrected = run_scripts([cmd, [*cmd, "--batch_size", "32"]])
    assert refused.returncode == 2 and "64 images make no full batch of 1024" in refused.stderr
    assert corrected.returncode == 0, corrected.stderr[-2000:]
    assert os.path.exists(tmp_path / "e" / "scratch-cls" / "summary.json")


def test_flag_missing_from_saved_args_counts_as_its_default(tmp_path):
    """A folder written before a flag existed (no val_split in its args.json) is still the
    same run at that flag's default, and another value is still other flags."""
    root = str(tmp_path)
    assert run_scripts([mae_flags(root, "old")])[0].returncode == 0
    folder = os.path.join(root, "old", "mae-pretrain")
    edit(folder, "args.json",
         lambda t: json.dumps({k: v for k, v in json.loads(t).items() if k != "val_split"}))
    same, other = run_scripts([mae_flags(root, "old"), mae_flags(root, "old", "--val_split", "8")])
    assert same.returncode == 0 and "nothing to do" in same.stdout, same.stderr[-2000:]
    assert other.returncode == 2 and "--val_split: None (saved) vs 8 (now)" in other.stderr


# --------------------------------------------------------------------------- nested run folders
def finished_run(path):
    os.makedirs(path)
    for name in (run_folder.ARGS_FN, run_folder.SUMMARY_FN):
        with open(os.path.join(path, name), "w") as f:
            json.dump({"overwrite": False}, f)


@pytest.mark.parametrize("overwrite", [False, True])
def test_run_folder_never_nests_in_another(tmp_path, overwrite):
    """A run inside another run's folder (--output_root there) is refused, and so is a run
    (or its --overwrite) whose folder holds one: the outer's --overwrite would delete it."""
    outer = tmp_path / "exp" / "mae-pretrain"
    finished_run(outer)
    args = Namespace(overwrite=overwrite)
    with pytest.raises(cli.UsageError, match="inside .*mae-pretrain, another run's folder"):
        run_folder.RunFolder(str(outer / "nested" / "exp" / "stage"), args).status()
    inner = tmp_path / "a" / "stage" / "x" / "exp" / "stage"
    finished_run(inner)
    with pytest.raises(cli.UsageError, match="holds another run's folder"):
        run_folder.RunFolder(str(tmp_path / "a" / "stage"), args).status()
    assert os.path.exists(inner / run_folder.SUMMARY_FN)


# --------------------------------------------------------------------------- the data of a run
def test_a_run_resumes_only_on_the_data_it_started_on(tmp_path):
    """Issue 35: a run resumed on an image folder whose files changed mixed two datasets in
    one metrics.csv; the data's sha256 is recorded in args.json and a resume on other data
    is one error line, the run folder untouched."""
    import numpy as np
    from PIL import Image
    data, rng = tmp_path / "data", np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            (data / split / cls).mkdir(parents=True)
            for i in range(40 if split == "train" else 8):
                pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(data / split / cls / f"{i}.png")
    flags = [MAE, "--dataset", "folder", "--data_dir", data, "--image_size", "16",
             "--batch_size", "32", "--device", "cpu", *TINY_MAE, *EPOCHS, "--output_root",
             tmp_path / "out", "--exp_name", "e"]
    first = run_scripts([{"argv": flags, "sigterm_after": STEPS_PER_EPOCH + 1}])[0]
    assert first.returncode == 143, first.stderr[-2000:]
    folder = tmp_path / "out" / "e" / "mae-pretrain"
    recorded = json.loads((folder / "args.json").read_text())[cli.DATA_KEY]
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    Image.new("RGB", (16, 16), (1, 2, 3)).save(data / "train" / "cat" / "0.png")  # one image
    resumed = run_scripts([flags])[0]
    lines = resumed.stderr.strip().splitlines()
    assert resumed.returncode == 2 and len(lines) == 1, resumed.stderr[-2000:]
    assert f"was trained on other data (sha256 {recorded[:12]})" in lines[0]
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before


def test_a_fifo_named_metrics_csv_is_never_opened(tmp_path):
    """Issue 35: opening a FIFO waits for a writer for ever; a resume refuses it in one
    line, the report reads it as no rows."""
    from mae_cifar.fileio import read_metrics
    os.mkfifo(tmp_path / "metrics.csv")
    with pytest.raises(cli.UsageError, match="is not a regular file"):
        read_metrics(str(tmp_path / "metrics.csv"))
    assert read_metrics(str(tmp_path / "metrics.csv"), skip_damaged=True) == []
