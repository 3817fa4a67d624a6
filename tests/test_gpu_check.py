"""scripts/gpu_check.sh without a GPU: the launches it makes, recorded by a stand-in `python`
on PATH and parsed by the real scripts' parsers, so that a typo fails here and not in the
minutes of a lent device. (Its dry run at toy size, GPU_CHECK_TINY=1 DEVICE=cpu, trains for
real and takes minutes: see the script's header.)"""
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, SCRIPT_TIMEOUT_S, THREAD_ENV

import bench
import mae_pretrain
import train_classifier

SCRIPT = REPO / "scripts" / "gpu_check.sh"
# Runs `python -` (the epoch planning) for real; records every other launch: its arguments,
# each ended by NUL, then a newline.
RECORDER = """#!/usr/bin/env bash
if [[ "$1" == "-" ]]; then exec "$REAL_PYTHON" "$@"; fi
printf '%s\\0' "$@" >> "$CALLS_LOG"
echo >> "$CALLS_LOG"
"""
PARSERS = {"bench.py": bench.get_args_parser, "mae_pretrain.py": mae_pretrain.get_args_parser,
           "train_classifier.py": train_classifier.get_args_parser}


def record(tmp_path, **env):
    """Run the script with the stand-in python -> (list of argv, the script's output)."""
    bin_dir, out, data = tmp_path / "bin", tmp_path / "out", tmp_path / "data"
    for d in (bin_dir, out, data):
        d.mkdir(exist_ok=True)
    (data / "train-images-idx3-ubyte.gz").touch()  # present: nothing is copied
    stub = bin_dir / "python"
    stub.write_text(RECORDER)
    stub.chmod(0o755)
    log = tmp_path / "calls.log"
    env = {**os.environ, **THREAD_ENV, "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "CALLS_LOG": str(log), "REAL_PYTHON": sys.executable, "OUT_DIR": str(out),
           "RUNS": str(tmp_path / "runs"), "DATA_DIR": str(data), **env}
    proc = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True,
                          timeout=SCRIPT_TIMEOUT_S, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = log.read_text().split("\n") if log.exists() else []
    return [line.split("\0")[:-1] for line in lines if line], proc.stdout


def parsed(calls):
    """{script: [parsed Namespace, ...]} of the recorded launches of Python scripts."""
    out = {}
    for argv in calls:
        if argv[0] in PARSERS:
            out.setdefault(argv[0], []).append(PARSERS[argv[0]]().parse_args(argv[1:]))
    return out


def test_every_stage_launches_with_flags_the_scripts_accept(tmp_path):
    calls, stdout = record(tmp_path)
    log = (tmp_path / "out" / "gpu_check.log").read_text()
    assert "failed stages: none" in log and log == stdout  # everything printed is logged
    calls = [argv for argv in calls if argv[0] != "-c"]  # env.txt's versions
    assert calls[0][:4] == ["-m", "pytest", "-q", "-m"] and calls[0][4] == "cuda"
    runs = parsed(calls)
    assert [a[0] for a in calls[1:]] == ["bench.py", "mae_pretrain.py", "train_classifier.py",
                                         "train_classifier.py"]
    b = runs["bench.py"][0]
    assert (b.preset, b.device, b.compile, b.with_eager) == ("vit-t", "cuda", True, True)
    assert b.phases == ["data", "pretrain"] and b.out == str(tmp_path / "out" / "bench.json")
    mae = runs["mae_pretrain.py"][0]
    assert (mae.dataset, mae.image_size, mae.batch_size, mae.device) == \
        ("fashion_mnist", 32, 4096, "cuda")
    assert mae.total_epoch == 10  # no bench.json: the fixed fallback
    model = os.path.join(mae.output_root, mae.exp_name, "mae-pretrain", mae.model_fn)
    probe, finetune = runs["train_classifier.py"]
    assert probe.linear_probe and not finetune.linear_probe
    assert probe.pretrained_model_path == finetune.pretrained_model_path == model
    assert {probe.image_size, finetune.image_size} == {32}


@pytest.mark.parametrize("speed,epochs,warmup", [(20_000.0, 40, 4), (10.0, 1, 1)])
def test_pretraining_epochs_follow_the_measured_eager_speed(tmp_path, speed, epochs, warmup):
    """epochs = PRETRAIN_SECONDS x eager images/s x 0.8 / 60,000 (at least 1)."""
    (tmp_path / "out").mkdir()
    result = {"results": {"pretrain": {"fast": {"images_per_s": 3 * speed},
                                       "eager": {"images_per_s": speed}}}}
    (tmp_path / "out" / "bench.json").write_text(json.dumps(result))
    calls, _ = record(tmp_path, STAGES="c", PRETRAIN_SECONDS="150")
    mae = parsed(calls)["mae_pretrain.py"][0]
    assert (mae.total_epoch, mae.warmup_epoch) == (epochs, warmup)
