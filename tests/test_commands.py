"""The shell drivers in commands/: syntax, the flags and paths they pass, the order of
reproduce.sh, the launcher, and the quickstart end to end on generated images.

The tests run the drivers with stand-ins for `python` and `torchrun` on PATH that only record
their arguments; the recorded arguments are then parsed by the real scripts' get_args_parser(),
so a flag a parser does not accept fails here, not after hours of training. The quickstart's
recorded launches then run for real.
"""
import contextlib
import importlib
import io
import json
import os
import subprocess
from argparse import Namespace

import pytest
from conftest import REPO, run_scripts

COMMANDS = REPO / "commands"
SHELL_FILES = sorted(p.name for p in COMMANDS.glob("*.sh"))
LIBRARIES = ("common.sh", "study_lib.sh")  # sourced by the drivers, not run
DRIVERS = [name for name in SHELL_FILES if name not in LIBRARIES]
SCRIPTS = ("mae_pretrain.py", "train_classifier.py", "visualize_pred.py", "report.py",
           "baselines.py")
TRAINING = ("mae_pretrain.py", "train_classifier.py")
# Appends one launch to CALLS_LOG: its name and arguments, each ended by NUL, then a newline.
RECORDER = """#!/usr/bin/env bash
printf '%s\\0' "$(basename "$0")" "$@" >> "$CALLS_LOG"
echo >> "$CALLS_LOG"
"""
OUT = "out"  # OUTPUT_ROOT of the recorded runs
MAIN_EXP, SHORT_EXP = "main_exp", "main_exp_150_50"
ABLATIONS = {  # name -> (mae_pretrain.py flag, its default, experiment of its first value)
    "depth": ("decoder_layer", 4, "ablation_depth_d1"),
    "width": ("decoder_dim", 192, "ablation_width_w64"),
    "mask": ("mask_ratio", 0.75, "ablation_mask_r0.5"),
}
COMPARISONS = [  # (scratch driver, MAE driver): the two sides of one comparison
    ("scratch_cls.sh", "pretrain_cls.sh"),
    ("scratch_cls_50.sh", "pretrain_cls_50.sh"),
    ("scratch_lin.sh", "pretrain_lin.sh"),
    ("scratch_lin_50.sh", "lin_default_d4_w192.sh"),
]


class Call:
    """One recorded launch: launcher ('python' or 'torchrun'), its own flags, script, args."""

    def __init__(self, argv):
        i = next(i for i, a in enumerate(argv) if a.endswith(".py"))
        self.launcher, self.launcher_args = argv[0], argv[1:i]
        self.script, self.args = argv[i], argv[i + 1:]
        self.ns = parse(self.script, self.args)

    def without(self, *keys):
        """The parsed flags minus keys (to compare two runs)."""
        return {k: v for k, v in vars(self.ns).items() if k not in keys}


def parse(script, args) -> Namespace:
    """args parsed by the script's own parser; fails the test with argparse's message."""
    assert script in SCRIPTS, f"a driver runs an unknown script {script}"
    parser = importlib.import_module(script.removesuffix(".py")).get_args_parser()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parser.parse_args(args)
    except SystemExit:
        pytest.fail(f"{script} rejects {args}: {err.getvalue()}")


@pytest.fixture(scope="module")
def fake_bin(tmp_path_factory):
    """A folder with recording stand-ins named python and torchrun."""
    path = tmp_path_factory.mktemp("bin")
    for name in ("python", "torchrun"):
        (path / name).write_text(RECORDER)
        (path / name).chmod(0o755)
    return path


@pytest.fixture(scope="module")
def record(fake_bin):
    """record(driver, *args, **env) -> the driver's launches as Calls, in order (memoised:
    the drivers are deterministic)."""
    cache = {}

    def run(driver, *args, **env):
        key = (driver, args, tuple(sorted(env.items())))
        if key not in cache:
            log = fake_bin / "calls.log"
            log.unlink(missing_ok=True)
            full_env = {"PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}",
                        "CALLS_LOG": str(log), "OUTPUT_ROOT": OUT,
                        # study.sh writes its run files and environment there, not into the repo;
                        # its arms one at a time, so that launches are logged whole and in order
                        "RESULTS": str(fake_bin / "results"), "JOBS": "1", **env}
            proc = subprocess.run(["bash", str(COMMANDS / driver), *args], env=full_env,
                                  capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, f"{driver} failed:\n{proc.stderr}"
            text = log.read_text() if log.exists() else ""
            launches = [line.split("\0") for line in text.split("\0\n")[:-1]]
            # `python -c ...` (a driver writing notes) launches no script: not a stage
            cache[key] = [Call(argv) for argv in launches if any(a.endswith(".py") for a in argv)]
        return list(cache[key])
    return run


def mae_path(exp):
    return f"{OUT}/{exp}/mae-pretrain/vit-t-mae.pt"


def outputs(call):
    """The model file a training call writes."""
    if call.script == "mae_pretrain.py":
        return f"{call.ns.output_root}/{call.ns.exp_name}/mae-pretrain/{call.ns.model_fn}"
    from mae_cifar.training.classifier import MODES
    folder, model_fn, _ = MODES[(call.ns.pretrained_model_path is not None,
                                 call.ns.linear_probe)]
    return f"{call.ns.output_root}/{call.ns.exp_name}/{folder}/{model_fn}"


def inputs(call):
    """The model files a call reads."""
    if call.script == "train_classifier.py":
        return [call.ns.pretrained_model_path] if call.ns.pretrained_model_path else []
    if call.script == "visualize_pred.py":
        return [call.ns.finetuned_model_path, call.ns.scratch_model_path,
                call.ns.pretrained_model_path]
    return []


# --------------------------------------------------------------------------- every driver
@pytest.mark.parametrize("name", SHELL_FILES)
def test_bash_syntax(name):
    proc = subprocess.run(["bash", "-n", str(COMMANDS / name)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("name", DRIVERS)
def test_driver_flags_are_accepted(record, name):
    """Every launch names a known script with flags its parser accepts (checked in Call)."""
    assert record(name), f"{name} launched nothing"


def test_extra_arguments_override_and_reach_every_training_stage(record):
    (call,) = record("pretrain_cls.sh", "--device", "cpu", "--seed", "3")
    assert call.args[-4:] == ["--device", "cpu", "--seed", "3"]
    assert call.ns.device == "cpu" and call.ns.seed == 3
    for call in record("reproduce.sh", "--seed", "3"):
        assert (call.args[-2:] == ["--seed", "3"]) == (call.script in TRAINING), call.script


def test_environment_overrides(record):
    (call,) = record("scratch_cls.sh", DATASET="fake", MAIN_CLS_EPOCHS="7", DEVICE="cpu")
    assert (call.ns.dataset, call.ns.total_epoch, call.ns.device) == ("fake", 7, "cpu")


# --------------------------------------------------------------------------- launcher
def test_launcher_plain_python_without_nproc(record):
    (call,) = record("mae_pretrain.sh")
    assert (call.launcher, call.launcher_args) == ("python", [])


def test_launcher_torchrun_single_and_multi_node(record):
    (call,) = record("mae_pretrain.sh", NPROC="2")
    assert call.launcher == "torchrun"
    assert "--nproc_per_node=2" in call.launcher_args and "--standalone" in call.launcher_args
    (call,) = record("mae_pretrain.sh", NPROC="4", NNODES="2", MASTER_ADDR="node0",
                     MASTER_PORT="1234")
    assert call.launcher == "torchrun"
    for flag in ("--nproc_per_node=4", "--nnodes=2", "--rdzv_backend=c10d",
                 "--rdzv_endpoint=node0:1234"):
        assert flag in call.launcher_args
    assert "--standalone" not in call.launcher_args


# --------------------------------------------------------------------------- experiments
def test_main_experiments_budgets_and_paths(record):
    (main,) = record("mae_pretrain.sh")
    (short,) = record("mae_pretrain_150.sh")
    assert (main.ns.exp_name, main.ns.total_epoch) == (MAIN_EXP, 600)
    assert (short.ns.exp_name, short.ns.total_epoch) == (SHORT_EXP, 150)
    assert short.without("exp_name", "total_epoch", "warmup_epoch") == \
        main.without("exp_name", "total_epoch", "warmup_epoch")
    assert [c.ns.total_epoch for c in record("scratch_cls.sh") + record("scratch_cls_50.sh")] \
        == [100, 50]


@pytest.mark.parametrize("scratch,mae", COMPARISONS)
def test_comparison_sides_share_recipe_epochs_and_warmup(record, scratch, mae):
    """Scratch and MAE side of one comparison differ only in the MAE checkpoint, which is the
    one the experiment's own pretraining writes."""
    (a,) = record(scratch)
    (b,) = record(mae)
    assert a.ns.pretrained_model_path is None
    assert b.ns.pretrained_model_path == mae_path(b.ns.exp_name)
    assert a.without("pretrained_model_path") == b.without("pretrained_model_path")


def test_default_row_drivers_repeat_existing_runs(record):
    """ft/lin_default_d4_w192.sh are the same runs (same folder, same flags) as
    pretrain_cls_50.sh and lin_depth.sh's first, so a second one is skipped as finished."""
    (ft,) = record("ft_default_d4_w192.sh")
    (ft50,) = record("pretrain_cls_50.sh")
    assert ft.args == ft50.args
    (lin,) = record("lin_default_d4_w192.sh")
    assert lin.args == record("lin_depth.sh")[0].args
    assert lin.ns.exp_name == SHORT_EXP and lin.ns.linear_probe


@pytest.mark.parametrize("name", ABLATIONS)
def test_ablation_runs_differ_from_default_in_one_setting(record, name):
    flag, default, first_exp = ABLATIONS[name]
    (base,) = record("mae_pretrain_150.sh")
    runs = record(f"mae_pretrain_{name}.sh")
    assert runs[0].ns.exp_name == first_exp
    values = [getattr(r.ns, flag) for r in runs]
    assert default not in values and len(set(values)) == len(values) > 1
    for r in runs:
        assert r.without("exp_name", flag) == base.without("exp_name", flag)
    exps = [SHORT_EXP] + [r.ns.exp_name for r in runs]
    for stage, ref in (("ft", "pretrain_cls_50.sh"), ("lin", "lin_default_d4_w192.sh")):
        calls = record(f"{stage}_{name}.sh")
        (ref_call,) = record(ref)
        assert [c.ns.exp_name for c in calls] == exps
        for c in calls:
            assert c.ns.pretrained_model_path == mae_path(c.ns.exp_name)
            keys = ("exp_name", "pretrained_model_path")
            assert c.without(*keys) == ref_call.without(*keys)


def test_reproduce_runs_every_driver_in_dependency_order(record):
    calls = record("reproduce.sh")
    made = set()
    for call in calls:
        missing = [p for p in inputs(call) if p not in made]
        assert not missing, f"{call.script} {call.args} runs before {missing} is made"
        if call.script in TRAINING:
            made.add(outputs(call))
    assert calls[-1].script == "report.py" and calls[-1].ns.outputs_root == OUT
    assert "visualize_pred.py" in [c.script for c in calls]
    standalone = {"reproduce.sh", "quickstart.sh", "study.sh"}
    wanted = {tuple(c.args) for d in DRIVERS if d not in standalone for c in record(d)}
    assert wanted == {tuple(c.args) for c in calls[:-1]}
    runs = {}  # model file -> the distinct argument lists that write it
    for c in calls:
        if c.script in TRAINING:
            runs.setdefault(outputs(c), set()).add(tuple(c.args))
    assert all(len(args) == 1 for args in runs.values()), "one run, two sets of flags"
    repeated = {p for p in runs if sum(outputs(c) == p for c in calls if c.script in TRAINING) > 1}
    assert repeated == {f"{OUT}/{SHORT_EXP}/pretrain-cls/vit-t-clf-from_pretrained.pt",
                        f"{OUT}/{SHORT_EXP}/pretrain-cls-lin/vit-t-clf-lin-from_pretrained.pt"}


# --------------------------------------------------------------------------- end to end
def test_quickstart_end_to_end(record, tmp_path):
    """The whole chain, as small as its settings allow, on generated images: the driver's
    launches, recorded, then run for real in order in one interpreter (each its own __main__,
    argv and exit code; imports paid once)."""
    settings = {"OUTPUT_ROOT": str(tmp_path), "DEVICE": "cpu", "PRETRAIN_EPOCHS": "1",
                "PRETRAIN_WARMUP": "0", "CLS_EPOCHS": "1", "CLS_WARMUP": "0",
                "LIN_EPOCHS": "1", "LIN_WARMUP": "0", "TRAIN_IMAGES": "128",
                "EVAL_IMAGES": "64", "BATCH_SIZE": "64"}
    calls = record("quickstart.sh", **settings)
    for call, proc in zip(calls, run_scripts([[c.script, *c.args] for c in calls])):
        assert proc.returncode == 0, f"{call.script}: {proc.stdout[-2000:]}{proc.stderr[-4000:]}"
    exp = tmp_path / "quickstart"
    for stage, model_fn in (("mae-pretrain", "vit-t-mae.pt"),
                            ("pretrain-cls", "vit-t-clf-from_pretrained.pt"),
                            ("pretrain-cls-lin", "vit-t-clf-lin-from_pretrained.pt"),
                            ("scratch-cls-lin", "vit-t-clf-lin-from_scratch.pt"),
                            ("scratch-cls", "vit-t-clf-from_scratch.pt")):
        for name in (model_fn, "metrics.csv", "summary.json"):
            assert (exp / stage / name).is_file(), f"no {stage}/{name}"
        assert json.loads((exp / stage / "args.json").read_text())["dataset"] == "shapes"
    assert (exp / "visualize" / "predictions.png").is_file()
    results = (tmp_path / "report" / "results.md").read_text()
    assert "`quickstart`" in results


def test_quickstart_defaults_to_generated_shapes(record):
    """On a fresh machine it runs offline; DATASET=cifar10 switches to real data."""
    calls = record("quickstart.sh")
    assert {c.ns.dataset for c in calls if c.script != "report.py"} == {"shapes"}
    assert calls[0].ns.exp_name == "quickstart"
    calls = record("quickstart.sh", DATASET="cifar10")
    assert {c.ns.dataset for c in calls if c.script != "report.py"} == {"cifar10"}


def test_drivers_have_the_standard_header():
    """bash, strict mode, and a cd to the repository root (relative paths land there)."""
    for name in DRIVERS:
        text = (COMMANDS / name).read_text()
        assert 'cd "$(dirname "$0")/.."' in text, f"{name} does not cd to the repo root"
        assert text.startswith("#!/usr/bin/env bash\n"), name
        assert "set -euo pipefail" in text, name

