"""The command line explains itself: every default in --help, one flag name per concept (old
names as aliases), --config replays a run, a too-long warmup is cut with a note, and the seed's
--visualize_freq 0 means off."""
import argparse
import json
import re

import pytest
from conftest import REPO, TINY_DATA, TINY_MAE, run_scripts

import baselines
import bench
import export
import mae_pretrain
import train_classifier
import visualize_pred
from mae_cifar.cli import HelpFormatter, UsageError, parse_args, run_cli
from mae_cifar.training import classifier, recipes

pytestmark = pytest.mark.usefixtures("one_thread")
PARSERS = {"mae_pretrain": mae_pretrain, "train_classifier": train_classifier,
           "visualize_pred": visualize_pred, "export": export, "bench": bench}
# canonical flag -> old names that must still work, per script
ALIASES = {
    "mae_pretrain": {"--model_fn": ["--output_model_path"], "--csv_fn": ["--csv_log"],
                     "--pool": ["--knn_feature"]},
    "train_classifier": {"--model_fn": ["--output_model_path"], "--csv_fn": ["--csv_log"],
                         "--pretrained_model_path": ["--mae_ckpt", "--pretrained_ckpt"]},
    "visualize_pred": {"--pretrained_model_path": ["--mae_ckpt"],
                       "--finetuned_model_path": ["--pretrained_ckpt"],
                       "--scratch_model_path": ["--scratch_ckpt"]},
}


def flags(parser):
    return [a for a in parser._actions if a.option_strings and a.help != argparse.SUPPRESS
            and not isinstance(a, argparse._HelpAction)]


@pytest.mark.parametrize("name", PARSERS)
def test_help_shows_every_default(name):
    parser = PARSERS[name].get_args_parser()
    text = "".join(parser.format_help().split())  # argparse wraps lines at spaces and hyphens
    missing = [a.option_strings[0] for a in flags(parser)
               if "%(default)" not in HelpFormatter("x")._get_help_string(a)]
    assert not missing, f"{name}: no default shown for {missing}"
    for a in flags(parser):
        assert f"(default:{a.default})".replace(" ", "") in text, (name, a.option_strings[0])


def test_help_shows_the_numbers_users_look_for():
    text = " ".join(mae_pretrain.get_args_parser().format_help().split())
    for value in ("(default: 4096)", "(default: 600)", "(default: 0.00015)", "(default: 40)"):
        assert value in text


@pytest.mark.parametrize("name", ALIASES)
def test_old_flag_names_are_aliases(name):
    parser = PARSERS[name].get_args_parser()
    for canonical, old in ALIASES[name].items():
        want = vars(parser.parse_args([canonical, "v.pt" if "pool" not in canonical else "mean"]))
        for alias in old:
            value = "v.pt" if "pool" not in canonical else "mean"
            assert vars(parser.parse_args([alias, value])) == want, (name, alias)


OLD_MODEL_FLAGS = ("--pretrained_ckpt", "--mae_ckpt", "--scratch_ckpt")


def test_a_model_flag_names_one_model_in_every_script(capsys):
    """--pretrained_model_path and --mae_ckpt are the MAE file in every script that takes
    one, and so is train_classifier.py's --pretrained_ckpt; visualize_pred.py's old
    --pretrained_ckpt, its fine-tuned classifier, still works with one note naming the flag
    it is."""
    for module in (train_classifier, baselines, visualize_pred):
        for flag in ("--pretrained_model_path", "--mae_ckpt"):
            args = module.get_args_parser().parse_args([flag, "mae.pt"])
            assert args.pretrained_model_path == "mae.pt", (module.__name__, flag)
    args = train_classifier.get_args_parser().parse_args(["--pretrained_ckpt", "mae.pt"])
    assert args.pretrained_model_path == "mae.pt"
    capsys.readouterr()
    old = visualize_pred.get_args_parser().parse_args(["--pretrained_ckpt", "clf.pt"])
    assert (old.finetuned_model_path, old.pretrained_model_path) == ("clf.pt", None)
    assert capsys.readouterr().out.splitlines() == [
        "note: --pretrained_ckpt is deprecated in visualize_pred.py: here it is "
        "--finetuned_model_path (the fine-tuned classifier), not the MAE file "
        "(--pretrained_model_path) it names in train_classifier.py"]


def test_drivers_use_the_canonical_model_flags():
    drivers = [*(REPO / "commands").glob("*.sh"), *(REPO / "scripts").glob("*.sh")]
    for path in drivers:
        text = path.read_text()
        assert not [flag for flag in OLD_MODEL_FLAGS if flag in text], path.name


def test_stages_share_flag_names():
    shared = {"--model_fn", "--csv_fn", "--pool", "--config", "--exp_name", "--seed"}
    for module in (mae_pretrain, train_classifier):
        names = {s for a in flags(module.get_args_parser()) for s in a.option_strings}
        assert shared <= names, module.__name__


def test_config_errors_are_one_usage_error(tmp_path):
    parser = mae_pretrain.get_args_parser()
    bad = tmp_path / "args.json"
    for content, words in (('{"emb_dim": 32, "nonsense": 1}', "unknown keys nonsense"),
                           ("[]", "expected a JSON object"), ("{", "cannot read it as JSON")):
        bad.write_text(content)
        with pytest.raises(UsageError, match=words):
            parse_args(parser, ["--config", str(bad)])


def test_config_values_are_defaults_and_flags_override(tmp_path):
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"emb_dim": 48, "mask_ratio": 0.5, "config": "old.json"}))
    for argv in (["--config", str(path), "--emb_dim", "64"],
                 ["--emb_dim", "64", "--config", str(path)]):
        args = parse_args(mae_pretrain.get_args_parser(), argv)
        assert (args.emb_dim, args.mask_ratio, args.config) == (64, 0.5, str(path))


def test_replay_warmup_note_and_visualize_off(tmp_path):
    """A short run with the default warmup (40 > 2 epochs) runs with a note; --config of its
    args.json finds it finished (a replay into a new folder runs in test_docs.py)."""
    tiny = [*TINY_DATA, *TINY_MAE, "--output_root", tmp_path]
    args_json = tmp_path / "a" / "mae-pretrain" / "args.json"
    first, replay = run_scripts([
        ["mae_pretrain.py", *tiny, "--total_epoch", "2", "--visualize_freq", "0",
         "--exp_name", "a"],
        ["mae_pretrain.py", "--config", args_json]])
    assert first.returncode == 0, first.stderr[-2000:]
    note = [line for line in first.stdout.splitlines() if "--warmup_epoch 40" in line]
    assert note == ["note: --warmup_epoch 40 exceeds --total_epoch 2; warming up for 1 "
                    "epoch(s), half the run"]
    saved = json.loads(args_json.read_text())
    assert saved["warmup_epoch"] == 1 and saved["visualize_freq"] == 0
    assert not (tmp_path / "a" / "mae-pretrain" / "images").exists()  # 0 = off
    assert replay.returncode == 0 and "nothing to do" in replay.stdout, replay.stderr

BASH4_ONLY = ("declare -A", "local -A", "mapfile", "readarray", ",,}", "^^}", "&>>", "|&",
              "coproc", "declare -n", "shopt -s globstar")


def test_drivers_use_no_bash4_only_syntax():
    """macOS ships bash 3.2: the drivers avoid what it lacks (a static check: no bash 3.2
    here to run them under)."""
    from conftest import REPO

    for path in sorted((REPO / "commands").glob("*.sh")):
        code = "\n".join(line.split("#")[0] for line in path.read_text().splitlines())
        found = [c for c in BASH4_ONLY if c in code]
        assert not found, f"{path.name} uses {found}"


# The seed's interface: flags and values its README names (and the names its scripts used).
SEED_FLAGS = {
    "mae_pretrain": [["--seed", "42"], ["--exp_name", "main_exp_150_50"],
                     *[["--decoder_layer", d] for d in ("2", "4", "6", "8")],
                     *[["--decoder_dim", w] for w in ("64", "128", "192", "256", "512")],
                     ["--visualize_freq", "0"], ["--model_fn", "vit-t-mae.pt"],
                     ["--csv_fn", "metrics.csv"]],
    "train_classifier": [["--linear_probe"], ["--seed", "42"],
                         ["--pretrained_model_path", "outputs/main_exp/mae-pretrain/vit-t-mae.pt"],
                         ["--output_model_path", "x.pt"], ["--csv_log", "m.csv"]],
}


@pytest.mark.parametrize("name", SEED_FLAGS)
def test_seed_flags_and_values_parse(name):
    parser = PARSERS[name].get_args_parser()
    for argv in SEED_FLAGS[name]:
        args = parser.parse_args(argv)
        dest = next(a.dest for a in parser._actions if argv[0] in a.option_strings)
        assert getattr(args, dest) == (True if len(argv) == 1 else
                                       type(getattr(args, dest))(argv[1])), argv
    defaults = parser.parse_args([])
    assert defaults.seed == 42 and defaults.exp_name == "main_exp"
    if name == "mae_pretrain":
        assert (defaults.model_fn, defaults.csv_fn, defaults.save_images_dir) == \
            ("vit-t-mae.pt", "metrics.csv", "images")


# --------------------------------------------------------------------------- config replay
def test_replayed_config_never_overwrites(tmp_path):
    """25.1: X's args.json says overwrite; replayed into Y it leaves Y's run (seed 7) alone,
    and replayed as is it finds X finished."""
    tiny = [MAE_SCRIPT, *TINY_DATA, *TINY_MAE, "--output_root", tmp_path, "--total_epoch", "1",
            "--visualize_freq", "0"]
    x_args = tmp_path / "X" / "mae-pretrain" / "args.json"
    y_model = tmp_path / "Y" / "mae-pretrain" / "vit-t-mae.pt"
    y, x = run_scripts([[*tiny, "--exp_name", "Y", "--seed", "7"],
                        [*tiny, "--exp_name", "X", "--overwrite"]])
    assert y.returncode == 0 and x.returncode == 0, (y.stderr[-2000:], x.stderr[-2000:])
    before = y_model.read_bytes()
    into_y, itself = run_scripts([[MAE_SCRIPT, "--config", x_args, "--exp_name", "Y"],
                                  [MAE_SCRIPT, "--config", x_args]])
    # Y holds seed 7: the replay (seed 42) is refused as other flags, and nothing is deleted
    assert into_y.returncode == 2 and "--seed: 7 (saved) vs 42 (now)" in into_y.stderr
    assert y_model.read_bytes() == before
    assert json.loads((y_model.parent / "args.json").read_text())["seed"] == 7
    assert itself.returncode == 0 and "nothing to do" in itself.stdout, itself.stderr[-2000:]
    assert "it is not replayed" in itself.stdout


MAE_SCRIPT = "mae_pretrain.py"
BAD_CONFIG_VALUES = {"batch_size": [0, -5, 64.5, True, None], "dataset": ["bogus"],
                     "base_learning_rate": [float("nan"), "x"], "total_epoch": [0],
                     "betas": [[0.9], 0.9, [0.9, "a"]], "norm_pix_loss": [1],
                     "emb_dim": [[32]], "exp_name": [3]}


@pytest.mark.parametrize("key", BAD_CONFIG_VALUES)
def test_config_values_are_checked_as_flags_are(key, tmp_path, monkeypatch, capsys):
    """25.11: a value its flag would refuse on the command line is one error line, exit 2."""
    path = tmp_path / "args.json"
    for value in BAD_CONFIG_VALUES[key]:
        path.write_text(json.dumps({key: value}))
        monkeypatch.setattr("sys.argv", [MAE_SCRIPT, "--config", str(path)])
        with pytest.raises(SystemExit) as e:
            run_cli(lambda args: pytest.fail("ran"),
                    mae_pretrain.get_args_parser())
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1, (value, err)
        assert err.startswith(f"error: --config {path}: {key} ") and "expected" in err, err


def test_config_values_convert_as_flags_do(tmp_path):
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"batch_size": 64, "base_learning_rate": 1e-3, "betas": [0.9, 1],
                                "image_size": None, "drop_last": True, "norm_pix_loss": True}))
    args = parse_args(mae_pretrain.get_args_parser(), ["--config", str(path)])
    assert (args.batch_size, args.base_learning_rate, args.betas, args.image_size) == \
        (64, 1e-3, [0.9, 1.0], None)
    assert args.drop_last is True and args.norm_pix_loss is True


def test_deeply_nested_config_is_one_error(tmp_path, monkeypatch, capsys):
    """25.12: no RecursionError."""
    path = tmp_path / "args.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    monkeypatch.setattr("sys.argv", [MAE_SCRIPT, "--config", str(path)])
    with pytest.raises(SystemExit) as e:
        run_cli(lambda args: pytest.fail("ran"), mae_pretrain.get_args_parser())
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "cannot read it as JSON" in err


def test_config_with_recipe_re_resolves_the_recipe(tmp_path):
    """25.4: --config A --recipe paper: the paper table replaces A's recipe values (flags on
    the command line still win); A's other settings stay."""
    a = tmp_path / "args.json"
    parser = train_classifier.get_args_parser()
    ran = parse_args(parser, ["--emb_dim", "48", "--seed", "3", "--total_epoch", "7"])
    classifier.resolve_recipe(ran)
    a.write_text(json.dumps(vars(ran)))
    replay = parse_args(train_classifier.get_args_parser(), ["--config", str(a)])
    classifier.resolve_recipe(replay)
    assert vars(replay) == {**vars(ran), "config": str(a)}  # without --recipe: exactly A
    args = parse_args(train_classifier.get_args_parser(),
                      ["--config", str(a), "--recipe", "paper", "--mixup", "0.5"])
    classifier.resolve_recipe(args)
    paper = recipes.RECIPES["finetune"]["paper"]
    assert (args.recipe, args.emb_dim, args.seed) == ("paper", 48, 3)
    assert args.mixup == 0.5  # given with it
    for k, v in paper.items():
        if k != "mixup":
            assert getattr(args, k) == (list(v) if isinstance(v, tuple) else v), k
    assert "re-resolves" in " ".join(parser.format_help().split())


def test_replayed_recipe_saves_what_ran(tmp_path):
    """25.4 through the CLI: args.json of `--config A --recipe paper` holds the paper
    table's values (what trained), A's model and seed."""
    tiny = [MAE_SCRIPT, *TINY_DATA, *TINY_MAE, "--output_root", tmp_path, "--total_epoch", "1",
            "--visualize_freq", "0"]
    a_args = tmp_path / "A" / "mae-pretrain" / "args.json"
    a, b = run_scripts([[*tiny, "--exp_name", "A", "--seed", "5"],
                        [MAE_SCRIPT, "--config", a_args, "--exp_name", "B", "--recipe", "paper",
                         "--batch_size", "32"]])
    assert a.returncode == 0 and b.returncode == 0, b.stderr[-2000:]
    saved = json.loads((tmp_path / "B" / "mae-pretrain" / "args.json").read_text())
    assert (saved["recipe"], saved["augment"], saved["pos_embed"], saved["drop_last"]) == \
        ("paper", "rrc_flip", "sincos", True)
    assert (saved["batch_size"], saved["seed"], saved["emb_dim"]) == (32, 5, 32)
    assert "augment: rrc_flip" in b.stdout  # the printed recipe is the saved one


def test_classifier_and_baseline_configs_replay_bit_exact(tmp_path):
    """25.15: a classifier's and a baseline's args.json (which record pretrained_sha256 beside
    the flags) replay into another folder, to the same numbers and weights."""
    import torch

    root = ["--output_root", tmp_path]
    mae = tmp_path / "m" / "mae-pretrain" / "vit-t-mae.pt"
    clf = ["train_classifier.py", *TINY_DATA, *root, "--pretrained_model_path", mae,
           "--total_epoch", "2", "--warmup_epoch", "0"]
    base = ["baselines.py", *TINY_DATA, *root, "--pretrained_model_path", mae, "--val_split",
            "16", "--total_epoch", "2", "--warmup_epoch", "0", "--probe_lrs", "0.01",
            "--probe_weight_decays", "0"]
    procs = run_scripts([
        [MAE_SCRIPT, *TINY_DATA, *TINY_MAE, *root, "--total_epoch", "1", "--exp_name", "m",
         "--visualize_freq", "0"],
        [*clf, "--exp_name", "X"],
        ["train_classifier.py", "--config", tmp_path / "X" / "pretrain-cls" / "args.json",
         "--exp_name", "Y"],
        [*base, "--exp_name", "X"]])
    for p in procs:
        assert p.returncode == 0, p.stderr[-2000:]
    (stage,) = [d.name for d in (tmp_path / "X").iterdir() if d.name != "pretrain-cls"]
    replay = run_scripts([["baselines.py", "--config", tmp_path / "X" / stage / "args.json",
                           "--exp_name", "Y"]])[0]
    assert replay.returncode == 0, replay.stderr[-2000:]
    x, y = (torch.load(tmp_path / e / "pretrain-cls" / "vit-t-clf-from_pretrained.pt",
                       weights_only=True)["model"] for e in ("X", "Y"))
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)

    def numbers(exp, folder, keys):
        s = json.loads((tmp_path / exp / folder / "summary.json").read_text())
        return [s[k] for k in keys]

    assert numbers("X", "pretrain-cls", ("final_test_acc", "best_val_acc")) == \
        numbers("Y", "pretrain-cls", ("final_test_acc", "best_val_acc"))
    assert numbers("X", stage, ("final_test_acc", "grid")) == \
        numbers("Y", stage, ("final_test_acc", "grid"))


# --------------------------------------------------------------------------- overflowing numbers
@pytest.mark.parametrize("module", [bench, visualize_pred])
def test_seed_beyond_64_bits_is_a_flag_error(module, capsys):
    """Issue 35: a --seed beyond 64 bits was a traceback deep in NumPy; now argparse names
    the flag (exit 2)."""
    with pytest.raises(SystemExit) as e:
        module.get_args_parser().parse_args(["--seed", str(2 ** 70)])
    assert e.value.code == 2 and "argument --seed" in capsys.readouterr().err


@pytest.mark.parametrize("module,argv,words", [
    (mae_pretrain, ["--base_learning_rate", "1e38", "--batch_size", "4096"],
     "gives lr 1.6e+39 (x --batch_size 4096 / 256), beyond 3.403e+37, the largest lr"),
    (train_classifier, ["--base_learning_rate", "1e38", "--batch_size", "4096"],
     "the largest lr whose optimizer steps float32 can hold"),
    (mae_pretrain, ["--weight_decay", "1e39"], "--weight_decay 1e+39 is beyond float32's"),
    ("baselines", ["--val_split", "8", "--probe_lrs", "1e300"],
     "--probe_lrs 1e+300 is beyond 3.403e+37"),
    ("baselines", ["--val_split", "8", "--probe_weight_decays", "0", "1e300"],
     "--probe_weight_decays 1e+300 is beyond"),
])
def test_numbers_beyond_float32_are_one_error_before_the_disk(module, argv, words, tmp_path):
    """Issue 35: a learning rate or weight decay beyond float32's range was a traceback in
    the optimizer ("value cannot be converted to type float without overflow")."""
    if module == "baselines":
        import baselines as module
    args = module.get_args_parser().parse_args([*argv, "--output_root", str(tmp_path)])
    with pytest.raises(UsageError, match=re.escape(words)):
        module.main(args)
    assert list(tmp_path.iterdir()) == []
