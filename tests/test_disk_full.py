"""A full disk loses nothing: every atomic write of a short pretraining and of a short
fine-tuning run fails in turn with ENOSPC. Each failure is one `error:` line with exit code 2,
and running the same command again ends with the weights and metrics.csv of a run that never
failed. Then atomic writes one by one: a failed write leaves the old file and no temporary
file, and a written file has its complete bytes synced and the mode open() would give."""
import csv
import errno
import json
import os
import stat

import pytest
import torch
from conftest import TINY_DATA, TINY_MAE, run_scripts

from mae_cifar import fileio
from mae_cifar.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
EPOCHS = {"mae": ["--total_epoch", "2", "--warmup_epoch", "0"],  # resumes mid-run, too
          "clf": ["--total_epoch", "1", "--warmup_epoch", "0"]}
WALL_CLOCK = {"epoch_seconds", "images_per_s", "wall_seconds"}  # may differ between runs
STAGES = {  # name -> (stage folder, final model file)
    "mae": ("mae-pretrain", "vit-t-mae.pt"),
    "clf": ("pretrain-cls", "vit-t-clf-from_pretrained.pt"),
}


def command(root, name, exp):
    if name == "mae":  # a grid at the end only (--visualize_freq 10)
        return ["mae_pretrain.py", *TINY_DATA, *TINY_MAE, *EPOCHS[name], "--output_root", root,
                "--exp_name", exp]
    mae = os.path.join(root, "ref", "mae-pretrain", "vit-t-mae.pt")
    return ["train_classifier.py", *TINY_DATA, *EPOCHS[name], "--pretrained_model_path", mae,
            "--output_root", root, "--exp_name", exp]


def results(root, name, exp):
    """(weights, metrics rows and summary without wall-clock values) of a finished run."""
    folder, model = STAGES[name]
    folder = os.path.join(root, exp, folder)
    weights = load_checkpoint(os.path.join(folder, model))["model"]
    with open(os.path.join(folder, "metrics.csv"), newline="") as f:
        rows = [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in csv.DictReader(f)]
    with open(os.path.join(folder, "summary.json")) as f:
        summary = {k: v for k, v in json.load(f).items()
                   if k not in WALL_CLOCK and k != "model_sha256"}  # the file holds exp_name
    return weights, rows, summary


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Uninterrupted runs (counting their writes), then for each write W: a run whose W-th
    write fails, and the same command again."""
    root = str(tmp_path_factory.mktemp("disk_full"))
    refs = dict(zip(STAGES, run_scripts([command(root, name, "ref") for name in STAGES])))
    for proc in refs.values():
        assert proc.returncode == 0, proc.stderr
    cases = [(name, w) for name in STAGES for w in range(1, refs[name].writes + 1)]
    commands = []
    for name, w in cases:
        commands += [{"argv": command(root, name, f"{name}{w}"), "enospc_at": w},
                     command(root, name, f"{name}{w}")]
    procs = run_scripts(commands)
    faults = {case: (procs[2 * i], procs[2 * i + 1]) for i, case in enumerate(cases)}
    return root, refs, faults


def test_every_write_is_covered(runs):
    _, refs, faults = runs
    # args.json, per epoch metrics.csv + checkpoint (+ the last grid), model, summary.json
    assert refs["mae"].writes == 1 + 2 * 2 + 1 + 2 and refs["clf"].writes == 1 + 2 + 2
    assert len(faults) == refs["mae"].writes + refs["clf"].writes
    for (_, w), (fault, _) in faults.items():
        assert fault.writes == w  # it stopped at the write that failed


def test_a_full_disk_is_one_line_and_the_rerun_is_identical(runs):
    root, _, faults = runs
    for (name, w), (fault, rerun) in faults.items():
        lines = fault.stderr.strip().splitlines()
        assert fault.returncode == 2, (name, w, fault.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: cannot write "), lines
        assert "No space left on device; free some space, then run the same command" in lines[0]
        assert rerun.returncode == 0, (name, w, rerun.stderr)
        want, got = results(root, name, "ref"), results(root, name, f"{name}{w}")
        assert got[0].keys() == want[0].keys()
        assert all(torch.equal(got[0][k], want[0][k]) for k in want[0]), (name, w)
        assert got[1:] == want[1:], (name, w)


# --------------------------------------------------------------------------- atomic writes
def failing_write(error):
    def write(f):
        f.write("half of the new text")
        raise error
    return write


@pytest.mark.parametrize("error,strerror", [
    (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), os.strerror(errno.ENOSPC)),
    (OSError("a message without an errno"), "a message without an errno")])
def test_a_failed_write_keeps_the_old_file_and_names_it(tmp_path, error, strerror):
    path = tmp_path / "metrics.csv"
    path.write_text("old")
    with pytest.raises(OSError) as e:
        fileio.atomic_write(path, failing_write(error), mode="w")
    assert (e.value.errno, e.value.strerror, e.value.filename) == (error.errno, strerror, path)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["metrics.csv"]


def test_an_interrupted_write_leaves_no_temporary_file(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        fileio.atomic_write(tmp_path / "a.json", failing_write(KeyboardInterrupt()), mode="w")
    assert os.listdir(tmp_path) == []


def test_a_written_file_is_synced_whole_with_the_mode_open_gives(tmp_path, monkeypatch):
    """fsync sees every byte (flushed first); the file gets 0o666 minus the umask, as open()
    would give it (not mkstemp's 0o600), and the umask is left as it was."""
    synced, real_fsync = [], os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.fstat(fd).st_size)
                        or real_fsync(fd))
    data = b"x" * 1000
    umask = os.umask(0o022)
    try:
        fileio.atomic_write_bytes(tmp_path / "model.pt", data)
        assert os.umask(0o022) == 0o022  # unchanged by the write
    finally:
        os.umask(umask)
    assert synced == [len(data)] and (tmp_path / "model.pt").read_bytes() == data
    assert stat.S_IMODE((tmp_path / "model.pt").stat().st_mode) == 0o644


def test_json_files_are_indented_with_sorted_keys(tmp_path):
    fileio.write_json(tmp_path / "args.json", {"seed": 1, "batch_size": {"per_rank": 2}})
    assert (tmp_path / "args.json").read_text() == (
        '{\n  "batch_size": {\n    "per_rank": 2\n  },\n  "seed": 1\n}\n')
