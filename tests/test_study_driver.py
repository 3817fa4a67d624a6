"""commands/study.sh, the v2 study: its experiments and every stage's flags.

Every part is dry-run with stand-ins for `python` on PATH that record their arguments (one
file per call, so that arms running at once under JOBS=2 cannot interleave); the recorded
arguments are parsed by the real scripts' get_args_parser(). One part then runs for real with
SMOKE=1 on generated images, two arms at a time, and again to show that it skips.
"""
import importlib
import os
import re
import subprocess
import tempfile
from argparse import Namespace

import pytest
from conftest import REPO, SCRIPT_TIMEOUT_S, THREAD_ENV

import baselines

pytestmark = pytest.mark.usefixtures("one_thread")
# OUTPUT_ROOT of the dry runs: the stand-in python writes nothing there, but JOBS=2 writes its
# logs under it, so it lies outside the repository (the driver runs in the repository root)
OUT = os.path.join(tempfile.gettempdir(), "study_driver_dry_run")
SEEDS = (1, 2, 3)
PARTS = ("pilot", "head", "scratch", "pixels", "abl_depth", "abl_width", "abl_mask",
         "head_depth")
# every headline encoder's read-outs (pool, block): READOUT_POOLS x READOUT_BLOCKS
READOUTS = [(pool, block) for pool in ("cls", "mean") for block in (3, 4, -1)]
OTHER_LRS = ("5e-4", "2e-3")  # CLS_LRS but v2's 1e-3, whose runs keep v2's names
# Writes each launch to its own file in CALLS_DIR, named by the time it began: its name and
# arguments, each ended by NUL.
RECORDER = """#!/usr/bin/env bash
printf '%s\\0' "$(basename "$0")" "$@" > "$CALLS_DIR/$(date +%s%N)-$$"
"""
# The labelled split of every classifier and baseline.
SPLIT_KEYS = ("dataset", "max_train_images", "val_split", "max_eval_images", "batch_size",
              "image_size")
STUDY_SPLIT = ("fashion_mnist", 5000, 2000, 10000, 128, None)
ENCODER = {"patch_size": 4, "emb_dim": 64, "encoder_layer": 6, "encoder_head": 4,
           "pos_embed": "sincos"}


def parse(script, args) -> Namespace:
    module = importlib.import_module(script.removesuffix(".py"))
    return module.get_args_parser().parse_args(args)


class Call:
    """One recorded launch: script, its arguments and their parse."""

    def __init__(self, argv):
        self.script, self.args = argv[1], argv[2:]
        self.ns = parse(self.script, self.args)
        self.exp = self.ns.exp_name if self.script != "report.py" else None

    def without(self, *flags):
        """The arguments minus each of flags and its value."""
        args, skip = [], False
        for a in self.args:
            if skip or a in flags:
                skip = not skip and a in flags
                continue
            args.append(a)
        return args

    def stage(self):
        if self.script == "mae_pretrain.py":
            return "mae-pretrain"
        if self.script == "train_classifier.py":
            return "pretrain-cls" if self.ns.pretrained_model_path else "scratch-cls"
        feats = self.ns.features or ("encoder" if self.ns.pretrained_model_path else "pixels")
        prefix = "mae" if feats == "encoder" else feats
        pca = f"-pca{self.ns.pca_dim}" if self.ns.pca_dim else ""
        readout = "" if feats == "pixels" else baselines.readout_name(self.ns.pool, self.ns.block)
        return f"{prefix}{pca}{readout}-{self.ns.method[:3]}"


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """dry_run(PART=..., **env) -> the driver's launches as Calls, in the order they began."""
    bin_dir = tmp_path_factory.mktemp("bin")
    (bin_dir / "python").write_text(RECORDER)
    (bin_dir / "python").chmod(0o755)
    cache = {}

    def run(**env):
        key = tuple(sorted(env.items()))
        if key not in cache:
            calls = tmp_path_factory.mktemp("calls")
            full_env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                        "CALLS_DIR": str(calls), "OUTPUT_ROOT": OUT,
                        "RESULTS": str(tmp_path_factory.mktemp("results")), **env}
            proc = subprocess.run(["bash", str(REPO / "commands" / "study.sh")], env=full_env,
                                  capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, proc.stderr
            argvs = [p.read_text().split("\0")[:-1] for p in sorted(calls.iterdir())]
            cache[key] = [Call(a) for a in argvs if any(x.endswith(".py") for x in a)]
        return list(cache[key])
    return run


@pytest.fixture(scope="module")
def parts(dry_run):
    return {part: dry_run(PART=part) for part in PARTS}


def stages(calls):
    return {(c.exp, c.stage()) for c in calls}


def test_experiments_and_stages_of_every_part(parts):
    assert stages(parts["pilot"]) == {
        (f"pilot_{v}_seed1", s) for v in ("base", "nonormpix", "learnedpos", "dec4x128")
        for s in ("mae-pretrain", "mae-lin", "mae-knn")}
    head_stages = {"mae-pretrain", "pretrain-cls"} | {
        f"{features}{baselines.readout_name(pool, block)}-{method}"
        for features in ("mae", "random") for pool, block in READOUTS
        for method in ("lin", "knn")}
    assert {"mae-lin", "mae-knn", "random-lin", "random-knn", "mae-mean-b3-lin"} < head_stages
    fine_tunes = {(f"head_lr{lr}_seed{n}", "pretrain-cls") for lr in OTHER_LRS for n in SEEDS}
    assert stages(parts["head"]) == {
        (f"head_seed{n}", s) for n in SEEDS for s in head_stages} | fine_tunes
    assert stages(parts["head_depth"]) == {
        (f"head_depth{d}_seed{n}", s) for d in (1, 8) for n in SEEDS for s in head_stages} | {
        (f"head_depth{d}_lr{lr}_seed{n}", "pretrain-cls") for d in (1, 8) for lr in OTHER_LRS
        for n in SEEDS}
    depths = {c.exp: c.ns.decoder_layer for c in parts["head_depth"]
              if c.script == "mae_pretrain.py"}
    assert depths == {f"head_depth{d}_seed{n}": d for d in (1, 8) for n in SEEDS}
    assert stages(parts["scratch"]) == {(f"scratch_seed{n}", "scratch-cls") for n in SEEDS} | {
        (f"scratch_lr{lr}_seed{n}", "scratch-cls") for lr in OTHER_LRS for n in SEEDS}
    assert stages(parts["pixels"]) == {
        (f"pixels_seed{n}", s) for n in SEEDS for s in ("pixels-lin", "pixels-pca64-lin")} | {
        ("pixels_seed1", "pixels-knn"), ("pixels_seed1", "pixels-pca64-knn")}
    rows = {"abl_depth": ("depth1", "depth8"), "abl_width": ("width32", "width256"),
            "abl_mask": ("mask0.5", "mask0.9")}
    for part, values in rows.items():
        assert stages(parts[part]) == {
            (f"abl_{v}_seed{n}", s) for v in ("default", *values) for n in SEEDS
            for s in ("mae-pretrain", "pretrain-cls", "mae-lin")}, part


def test_each_arm_pretrains_before_it_uses_its_encoder(parts):
    made = set()
    for call in (c for part in PARTS for c in parts[part]):
        path = getattr(call.ns, "pretrained_model_path", None)  # mae_pretrain.py has none
        assert path is None or path in made, f"{call.exp} {call.stage()} before its MAE"
        if call.script == "mae_pretrain.py":
            made.add(f"{OUT}/{call.exp}/mae-pretrain/vit-t-mae.pt")
        elif path:  # its own arm's (a fine-tune at another lr: the arm's without _lr<lr>)
            arm_exp = re.sub(r"_lr[^_]+(_seed\d+)$", r"\1", call.exp)
            assert path == f"{OUT}/{arm_exp}/mae-pretrain/vit-t-mae.pt"


def test_every_pretraining_holds_out_the_validation_images(parts):
    pretrains = [c for part in PARTS for c in parts[part] if c.script == "mae_pretrain.py"]
    for c in pretrains:
        assert (c.ns.val_split, c.ns.batch_size, c.ns.knn_train_images) == (2000, 256, 5000)
        assert {k: getattr(c.ns, k) for k in ENCODER if k != "pos_embed"} == {
            k: v for k, v in ENCODER.items() if k != "pos_embed"}
        budget = (c.ns.max_train_images, c.ns.total_epoch, c.ns.warmup_epoch, c.ns.knn_freq)
        head = c.exp.startswith("head_")
        assert budget == ((58000, 30, 3, 5) if head else (15000, 10, 1, 0)), c.exp
    assert {c.ns.pos_embed for c in pretrains if "learnedpos" not in c.exp} == {"sincos"}


def test_every_classifier_and_baseline_sees_the_same_labelled_split(parts):
    runs = [c for part in PARTS for c in parts[part] if c.script != "mae_pretrain.py"]
    assert {tuple(getattr(c.ns, k) for k in SPLIT_KEYS) for c in runs} == {STUDY_SPLIT}
    assert {c.ns.seed for c in runs} == set(SEEDS)
    assert all(c.ns.seed == int(c.exp.rsplit("seed", 1)[1]) for c in runs)


def test_scratch_and_the_head_fine_tune_differ_only_in_the_encoder_path(parts):
    scratch = {(c.ns.seed, c.ns.base_learning_rate): c for c in parts["scratch"]}
    fine_tunes = [c for c in parts["head"] if c.script == "train_classifier.py"]
    assert len(fine_tunes) == len(scratch) == len(SEEDS) * (1 + len(OTHER_LRS))
    assert {lr for _, lr in scratch} == {5e-4, 1e-3, 2e-3}
    for ft in fine_tunes:
        assert ft.without("--exp_name", "--pretrained_model_path") == (
            scratch[ft.ns.seed, ft.ns.base_learning_rate].without("--exp_name"))
        ns = ft.ns
        assert (ns.lr_schedule, ns.early_stop_patience, ns.total_epoch, ns.warmup_epoch,
                ns.augment, ns.recipe) == ("constant", 10, 200, 5, "flip", "seed")
        assert {k: getattr(ns, k) for k in ENCODER} == ENCODER  # the checkpoint must match


def test_random_encoder_and_pixel_baselines(parts):
    random = [c for c in parts["head"] if c.script == "baselines.py" and c.ns.features == "random"]
    assert len(random) == 2 * len(READOUTS) * len(SEEDS)
    assert {(c.ns.pool, c.ns.block) for c in random} == set(READOUTS)
    for c in random:
        assert {k: getattr(c.ns, k) for k in ENCODER} == ENCODER
        assert c.ns.pretrained_model_path is None
    pca = {c.ns.pca_dim for c in parts["pixels"]}
    assert pca == {0, ENCODER["emb_dim"]}


def test_pilot_and_ablation_rows_change_one_setting(parts):
    def pretraining(part, exp):
        (call,) = [c for c in parts[part] if c.exp == exp and c.script == "mae_pretrain.py"]
        return call

    def changed(part, exp, base):
        a, b = pretraining(part, exp), pretraining(part, base)
        return {k: getattr(a.ns, k) for k in vars(a.ns)
                if getattr(a.ns, k) != getattr(b.ns, k) and k != "exp_name"}

    base = "pilot_base_seed1"
    ns = pretraining("pilot", base).ns
    assert (ns.norm_pix_loss, ns.decoder_layer, ns.decoder_dim, ns.mask_ratio) == (
        True, 2, 64, 0.75)
    assert changed("pilot", "pilot_nonormpix_seed1", base) == {"norm_pix_loss": False}
    assert changed("pilot", "pilot_learnedpos_seed1", base) == {"pos_embed": "learned"}
    assert changed("pilot", "pilot_dec4x128_seed1", base) == {"decoder_layer": 4,
                                                              "decoder_dim": 128}
    rows = {"abl_depth": ("depth", "decoder_layer", (1, 8)),
            "abl_width": ("width", "decoder_dim", (32, 256)),
            "abl_mask": ("mask", "mask_ratio", (0.5, 0.9))}
    for part, (prefix, key, values) in rows.items():
        for seed in SEEDS:
            for value in values:  # paired by seed with the default row
                assert changed(part, f"abl_{prefix}{value}_seed{seed}",
                               f"abl_default_seed{seed}") == {key: value}, part
    short = {(c.ns.total_epoch, c.ns.warmup_epoch) for part in rows for c in parts[part]
             if c.script == "train_classifier.py"}
    assert short == {(8, 1)}


def test_default_row_in_the_results_is_not_trained_again(dry_run, tmp_path):
    for stage in ("mae-pretrain", "pretrain-cls", "mae-lin"):
        folder = tmp_path / "runs" / "abl_default_seed2" / stage
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text("{}")
    exps = {c.exp for c in dry_run(PART="abl_width", RESULTS=str(tmp_path))}
    assert {e for e in exps if e.startswith("abl_default")} == {"abl_default_seed1",
                                                                "abl_default_seed3"}


@pytest.mark.parametrize("part", ["head", "abl_mask"])
def test_two_jobs_give_the_same_runs(dry_run, part):
    one = sorted(c.args for c in dry_run(PART=part))
    assert sorted(c.args for c in dry_run(PART=part, JOBS="2")) == one


def test_one_seed_and_report(dry_run):
    assert {c.exp for c in dry_run(PART="head", SEEDS="2")} == {
        "head_seed2", "head_lr5e-4_seed2", "head_lr2e-3_seed2"}
    (report,) = dry_run(PART="report")
    assert report.script == "report.py" and report.ns.environment.endswith("/environment")


@pytest.mark.parametrize("env,name", [
    ({"PART": "main"}, "PART"), ({"PART": "head", "JOBS": "0"}, "JOBS"),
    # issue 35: each passed the check, then failed or ran the wrong thing
    ({"PART": "head scratch"}, "PART"),  # bash's "command not found" (exit 127)
    ({"PART": "head", "SEEDS": "*"}, "SEEDS"),  # the glob became file names: arms of them
    ({"PART": "head", "SEEDS": " "}, "SEEDS"),  # ran nothing, said the results held the runs
    ({"PART": "head", "SMOKE": "yes"}, "SMOKE"),
    ({"PART": "head", "JOBS": "99999999999999999999"}, "JOBS"),  # wrapped negative: a hang
    ({"PART": "head", "HEAD_EPOCHS": "abc"}, "HEAD_EPOCHS"),  # before the arithmetic on it
    ({"PART": "head", "ABL_DEPTHS": "1 x"}, "ABL_DEPTHS"),
    ({"PART": "head", "MAIN_NORM_PIX": "2"}, "MAIN_NORM_PIX"),
])
def test_bad_settings_are_one_line_and_exit_2(env, name):
    proc = subprocess.run(["bash", "commands/study.sh"], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "PYTHON": "false", **env}, timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: {name} must be "), \
        proc.stderr
    assert len(proc.stderr.splitlines()) == 1


def test_smoke_0_is_the_study(dry_run):
    """Issue 35: any non-empty SMOKE turned smoke mode on, SMOKE=0 too."""
    assert sorted(c.args for c in dry_run(PART="pixels", SMOKE="0")) == sorted(
        c.args for c in dry_run(PART="pixels"))


# ----------------------------------------------------------------------------- SMOKE=1
def run_smoke(tmp_path, **settings):
    env = {**{k: v for k, v in os.environ.items() if k not in ("DATASET", "DATA_DIR")},
           **THREAD_ENV, "SMOKE": "1", "OUTPUT_ROOT": str(tmp_path / "outputs"),
           "RESULTS": str(tmp_path / "results"), **settings}
    proc = subprocess.run(["bash", "commands/study.sh"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=SCRIPT_TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_smoke_two_arms_at_once_collect_and_skip_on_rerun(tmp_path):
    run_smoke(tmp_path, PART="scratch", SEEDS="1 2", JOBS="2", CLS_LRS="1e-3")
    results = tmp_path / "results"
    files = {p.relative_to(results / "runs").as_posix() for p in (results / "runs").rglob("*")
             if p.is_file()}
    assert files == {f"scratch_seed{s}/scratch-cls/{f}" for s in (1, 2)
                     for f in ("args.json", "metrics.csv", "summary.json")}
    logs = sorted(p.name for p in (tmp_path / "outputs" / "logs").iterdir())
    assert logs == ["scratch_seed1.log", "scratch_seed2.log"]
    (env,) = (results / "environment").glob("scratch_*.md")
    proc = run_smoke(tmp_path, PART="scratch", SEEDS="1 2", JOBS="2", CLS_LRS="1e-3")
    assert "already holds its runs and environment" in proc.stdout
    assert list((results / "environment").iterdir()) == [env]
    assert all("nothing to do" in (tmp_path / "outputs" / "logs" / log).read_text()
               for log in logs)
