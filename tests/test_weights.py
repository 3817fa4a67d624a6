"""Weights out (export.py -> timm's Hugging Face folder: strict, identical outputs, the true
input config) and in (--pretrained_model_path from such a folder, a timm state dict or an
official MAE checkpoint); bad files give one error line."""
import json
import re
import shutil
import types
from dataclasses import asdict
from pathlib import Path

import pytest
import timm
import torch
from conftest import TINY_DATA, TINY_MAE, one_error_line, run_scripts
from safetensors.torch import save_file

import export
import train_classifier
from mae_cifar import weights
from mae_cifar.checkpoint import load_checkpoint, save_checkpoint
from mae_cifar.cli import UsageError
from mae_cifar.training import classifier
from mae_cifar.weights import load_pretrained
from model import BN_EPS, ClassifierConfig, MAE_ViT, MAEConfig, ViT_Classifier
from utils import seed_everything

pytestmark = pytest.mark.usefixtures("one_thread")
EPOCH = ["--total_epoch", "1", "--warmup_epoch", "0"]
FT = "pretrain-cls/vit-t-clf-from_pretrained.pt"
LIN = "pretrain-cls-lin/vit-t-clf-lin-from_pretrained.pt"
MAE_EXPORT = "mae-pretrain/vit-t-mae-timm"  # export.py's default folder beside the model file


def cls_cmd(root, model_path, *extra):
    return ["train_classifier.py", *TINY_DATA, *EPOCH, "--output_root", root, "--exp_name", "e",
            "--pretrained_model_path", model_path, *extra]


def foreign_files(tmp, mae_path):
    """A timm classifier's state dict (.pth, .safetensors) and an official MAE checkpoint,
    built from the trained MAE: the same encoder tensors under their own layouts."""
    mae = load_checkpoint(mae_path, kind="mae")["model"]
    encoder = {k.removeprefix("encoder."): v for k, v in mae.items() if k.startswith("encoder.")}
    timm_model = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=2,
                                   embed_dim=32, depth=2, num_heads=2, num_classes=7)
    timm_model.load_state_dict(encoder, strict=False)  # head stays timm's own
    files = {"timm_pth": tmp / "timm.pth", "timm_st": tmp / "timm.safetensors",
             "official": tmp / "official.pth"}
    torch.save(timm_model.state_dict(), files["timm_pth"])
    save_file(timm_model.state_dict(), files["timm_st"])
    # official MAE names: the encoder at the top level, decoder_* and mask_token beside it
    torch.save({"model": {k.removeprefix("encoder."): v for k, v in mae.items()}},
               files["official"])
    bad = dict(timm_model.state_dict())
    bad["blocks.1.mlp.fc1.weight"] = bad["blocks.1.mlp.fc1.weight"][:, :16].clone()
    files["bad_shape"] = tmp / "bad.pth"
    torch.save(bad, files["bad_shape"])
    return encoder, files


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("weights")
    mae_path = tmp / "e" / "mae-pretrain" / "vit-t-mae.pt"
    first = run_scripts([
        ["mae_pretrain.py", *TINY_DATA, *TINY_MAE, *EPOCH, "--output_root", tmp, "--exp_name",
         "e"],
        cls_cmd(tmp, mae_path),
        cls_cmd(tmp, mae_path, "--linear_probe"),
        ["export.py", mae_path],
        ["export.py", tmp / "e" / FT],
        ["export.py", tmp / "e" / LIN, "--out_dir", tmp / "lin_export"]])
    for r in first:
        assert r.returncode == 0, r.stdout[-1000:] + r.stderr[-2000:]
    encoder, files = foreign_files(tmp, mae_path)
    files["timm_folder"] = tmp / "e" / MAE_EXPORT
    # item 8 of issue 17: checkpoints that lie about themselves
    ckpt = load_checkpoint(mae_path, kind="mae")
    lies = {"contradicting": {**ckpt, "config": {**ckpt["config"], "emb_dim": 64,
                                                  "encoder_head": 2}},
            "no_model": {k: v for k, v in ckpt.items() if k != "model"},
            "list_model": {**ckpt, "model": [1, 2]}}
    # issue 25.17: a diverged MAE; 25.10: an integer cls_token in a timm file
    model = dict(ckpt["model"])
    model["encoder.blocks.0.attn.proj.weight"] = model["encoder.blocks.0.attn.proj.weight"].clone()
    model["encoder.blocks.0.attn.proj.weight"][0, 0] = float("nan")
    lies["nan_weights"] = {**ckpt, "model": model}
    for name, obj in lies.items():
        files[name] = tmp / f"{name}.pt"
        torch.save(obj, files[name])
    files["int_cls_token"] = tmp / "int_cls_token.pth"
    torch.save({**torch.load(files["timm_pth"]), "cls_token": torch.ones(1, 1, 32).long()},
               files["int_cls_token"])
    copied = tmp / "copied"
    (copied / "e" / "pretrain-cls").mkdir(parents=True)
    shutil.copy(tmp / "e" / FT, copied / "e" / "pretrain-cls" / "checkpoint.pt")
    shutil.copy(tmp / "e" / "pretrain-cls" / "args.json", copied / "e" / "pretrain-cls")
    cmds = {"official": cls_cmd(tmp / "official", files["official"]),
            "timm_pth": cls_cmd(tmp / "timm", files["timm_pth"], "--encoder_head", "2",
                                "--linear_probe"),
            "copied_final": cls_cmd(copied, mae_path),
            "timm_folder": cls_cmd(tmp / "from_folder", files["timm_folder"])}
    for name in ("bad_shape", "contradicting", "no_model", "list_model", "nan_weights",
                 "int_cls_token"):
        cmds[name] = cls_cmd(tmp / name, files[name], "--encoder_head", "2")
    results = dict(zip(cmds, run_scripts(list(cmds.values()))))
    return dict(tmp=tmp, mae_path=mae_path, encoder=encoder, files=files, results=results)


def timm_from_export(folder):
    """The model timm itself builds from an export folder, and its config.json."""
    model = timm.create_model(f"local-dir:{folder}", pretrained=True)  # loads strictly
    return model.eval(), json.loads((folder / "config.json").read_text())


def assert_true_input_config(model, ckpt):
    data = timm.data.resolve_data_config({}, model=model)
    assert data["input_size"] == (3, 16, 16)
    assert list(data["mean"]) == ckpt["norm_mean"].tolist()
    assert list(data["std"]) == ckpt["norm_std"].tolist()


def test_mae_export_loads_into_timm_with_identical_features_and_input_config(runs):
    model, meta = timm_from_export(runs["tmp"] / "e" / MAE_EXPORT)
    ckpt = load_checkpoint(runs["mae_path"], kind="mae")
    mae = MAE_ViT.from_config(MAEConfig(**ckpt["config"]))
    mae.load_state_dict(ckpt["model"])
    mae.eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model.forward_features(x), mae.encoder.forward_features(x))
        assert torch.equal(model(x), mae.encoder(x))  # pooled features (num_classes 0)
    assert_true_input_config(model, ckpt)
    assert meta["num_classes"] == meta["pretrained_cfg"]["num_classes"] == 0
    assert meta["num_features"] == 32
    # the name claims no size that is not this model's (patch 2, 16 pixels)
    assert "patch16" not in meta["architecture"] and "224" not in meta["architecture"]
    assert meta["model_args"]["patch_size"] == 2


def test_classifier_exports_load_into_timm_with_identical_logits(runs):
    folder = runs["mae_path"].parents[1]
    for path, out in ((folder / FT, folder / "pretrain-cls" / "vit-t-clf-from_pretrained-timm"),
                      (folder / LIN, runs["tmp"] / "lin_export")):
        ckpt = load_checkpoint(path, kind="classifier")
        ours = ViT_Classifier(ClassifierConfig(**ckpt["config"]))
        ours.load_state_dict(ckpt["model"])
        ours.eval()
        model, meta = timm_from_export(out)
        assert {"head.weight", "head.bias"} <= set(model.state_dict())
        x = torch.randn(5, 3, 16, 16)
        with torch.no_grad():
            if "head" in meta["mae_cifar"]:  # the probe's BatchNorm folded into the linear layer
                torch.testing.assert_close(model(x), ours(x), rtol=1e-5, atol=1e-5)
            else:
                assert torch.equal(model(x), ours(x))
        assert_true_input_config(model, ckpt)
        assert model.pretrained_cfg["label_names"] == ckpt["classes"]
        assert meta["pretrained_cfg"]["num_classes"] == len(ckpt["classes"])
        assert meta["pretrained_cfg"]["label_names"] == ckpt["classes"]
        assert (meta["pretrained_cfg"]["interpolation"], meta["pretrained_cfg"]["crop_pct"]) \
            == ("bilinear", 1.0)


def test_push_to_hub_uploads_the_exported_folder(runs, tmp_path, monkeypatch):
    """The upload goes through timm's push_to_hf_hub; the Hub API is mocked (no network)."""
    uploaded = {}

    class FakeApi:
        def __init__(self, **kwargs):
            pass

        def create_repo(self, repo_id, **kwargs):
            return types.SimpleNamespace(repo_id=repo_id)

        def file_exists(self, **kwargs):
            return False

        def upload_folder(self, repo_id, folder_path, **kwargs):
            uploaded.update({p.name: p.read_bytes() for p in Path(folder_path).iterdir()})
            uploaded["repo"] = repo_id

    monkeypatch.setattr("timm.models._hub.HfApi", FakeApi)
    out = tmp_path / "folder"
    export.main(export.get_args_parser().parse_args(
        [str(runs["mae_path"]), "--out_dir", str(out), "--push_to_hub", "someone/tiny-mae"]))
    assert uploaded["repo"] == "someone/tiny-mae"
    assert uploaded["model.safetensors"] == (out / "model.safetensors").read_bytes()
    assert json.loads(uploaded["config.json"]) == json.loads((out / "config.json").read_text())


def test_bad_hub_repository_is_refused_before_writing(runs, tmp_path):
    out = tmp_path / "folder"
    with pytest.raises(UsageError, match="not a Hub repository id"):
        export.main(export.get_args_parser().parse_args(
            [str(runs["mae_path"]), "--out_dir", str(out), "--push_to_hub", "a/b/c"]))
    assert not out.exists()


def test_exported_folder_imports_back_with_its_heads(runs):
    """--pretrained_model_path DIR: the folder's tensors, and its heads from config.json
    (width 32 / 64 would guess 1)."""
    cfg, state = load_pretrained(str(runs["files"]["timm_folder"]))
    assert cfg.encoder_head == 2 and cfg.patch_size == 2 and cfg.image_size == 16
    assert set(state) == set(runs["encoder"])
    assert all(torch.equal(state[k], v) for k, v in runs["encoder"].items())
    r = runs["results"]["timm_folder"]
    assert r.returncode == 0, r.stderr[-2000:]
    assert "final test accuracy" in r.stdout


@pytest.mark.parametrize("name", ["timm_pth", "timm_st", "official", "timm_folder"])
def test_foreign_encoders_load_exactly(runs, name):
    """build_model maps the keys and copies every encoder tensor bit for bit."""
    args = train_classifier.get_args_parser().parse_args(
        [*TINY_DATA, "--pretrained_model_path", str(runs["files"][name]), "--encoder_head", "2"])
    classifier.resolve_recipe(args)
    seed_everything(0)
    model = classifier.build_model(args, 10, torch.device("cpu"))
    got = model.encoder_state_dict()
    assert set(got) == set(runs["encoder"])
    assert all(torch.equal(got[k], v) for k, v in runs["encoder"].items())


def test_foreign_checkpoints_train(runs):
    for name in ("official", "timm_pth"):
        r = runs["results"][name]
        assert r.returncode == 0, r.stderr[-2000:]
        assert "final test accuracy" in r.stdout


@pytest.mark.parametrize("name,words", [
    ("bad_shape", ["blocks.1.mlp.fc1.weight", "(128, 16)", "(128, 32)"]),
    ("contradicting", ["tensor cls_token", "(1, 1, 32)", "(1, 1, 64)"]),
    ("no_model", ["no 'model' tensors", "NoneType"]),
    ("list_model", ["no 'model' tensors", "list"]),
    ("copied_final", ["not a resumable checkpoint", "optimizer", "--overwrite"]),
    ("nan_weights", ["nan_weights.pt: tensor blocks.0.attn.proj.weight holds NaN or infinite"]),
    ("int_cls_token", ["int_cls_token.pth: tensor cls_token is torch.int64", "float32"]),
])
def test_bad_pretrained_files_give_one_error_line(runs, name, words):
    one_error_line(runs["results"][name], words)


def test_unreadable_foreign_file_is_one_usage_error(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"not safetensors")
    with pytest.raises(UsageError, match="not a readable safetensors"):
        load_pretrained(str(path))
    torch.save({"a": 1}, tmp_path / "y.pth")
    with pytest.raises(UsageError, match="neither a checkpoint of this project"):
        load_pretrained(str(tmp_path / "y.pth"))


# --------------------------------------------------------------------------- in, file by file
# Files written here, not by the stages: the sizes a file's tensors imply, its key layout
# and where its attention heads come from. 16x16 grey images, 4x4 patches, 3 blocks.
FOREIGN = dict(image_size=16, patch_size=4, in_chans=1, encoder_layer=3)


def timm_state(emb_dim=32, heads=2):
    """A timm ViT classifier's state dict (7-class head) of FOREIGN's sizes."""
    model = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, in_chans=1,
                              embed_dim=emb_dim, depth=FOREIGN["encoder_layer"],
                              num_heads=heads, num_classes=7)
    return model.state_dict()


def encoder_part(state):
    return {k: v for k, v in state.items() if not k.startswith("head.")}


def official_mae(state):
    """Official MAE's layout: the encoder at the top level, the decoder beside it."""
    return {"model": {**encoder_part(state), "mask_token": torch.zeros(1, 1, 16),
                      "decoder_embed.weight": torch.zeros(16, 32)}}


@pytest.mark.parametrize("layout", [lambda s: s, official_mae])
def test_foreign_files_load_their_encoder_with_the_sizes_its_tensors_imply(tmp_path, layout):
    state = timm_state()
    torch.save(layout(state), tmp_path / "w.pth")
    cfg, encoder = load_pretrained(str(tmp_path / "w.pth"), encoder_head=2)
    assert cfg == MAEConfig(**FOREIGN, emb_dim=32, encoder_head=2)
    want = encoder_part(state)
    assert encoder.keys() == want.keys()
    assert all(torch.equal(encoder[k], v) for k, v in want.items())


def test_heads_come_from_the_export_s_config_json_or_else_the_width(tmp_path, capsys):
    """Width 32 would guess 1 head: a timm folder's config.json, or the JSON an older
    export.py wrote beside its .pth, says 2. Without either: width // 64, at least 1."""
    state = timm_state(heads=2)
    folder = tmp_path / "export"
    folder.mkdir()
    save_file(state, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"model_args": {"num_heads": 2}}))
    assert load_pretrained(str(folder))[0].encoder_head == 2
    torch.save(state, tmp_path / "old.pth")
    (tmp_path / "old.json").write_text(json.dumps({"model_args": {"num_heads": 2}}))
    assert load_pretrained(str(tmp_path / "old.pth"))[0].encoder_head == 2
    capsys.readouterr()
    for emb_dim in (32, 96):
        torch.save(timm_state(emb_dim, heads=1), tmp_path / "bare.pth")
        assert load_pretrained(str(tmp_path / "bare.pth"))[0].encoder_head == 1
    assert "assuming 1 (width 32 / 64); pass --encoder_head" in capsys.readouterr().out


def test_this_project_s_mae_file_gives_its_encoder_under_timm_keys(tmp_path):
    path = tiny_mae_file(tmp_path / "m.pt", seed=0)
    ckpt = load_checkpoint(path, kind="mae")
    cfg, encoder = load_pretrained(str(path))
    assert asdict(cfg) == ckpt["config"]
    want = {k.removeprefix("encoder."): v for k, v in ckpt["model"].items()
            if k.startswith("encoder.")}
    assert encoder.keys() == want.keys()
    assert all(torch.equal(encoder[k], v) for k, v in want.items())
    for lie, words in (({"model": {}}, "no 'model' tensors"),
                       ({"config": {**ckpt["config"], "depth": 2}}, "invalid MAE configuration")):
        save_checkpoint({**ckpt, **lie}, tmp_path / "lie.pt")
        with pytest.raises(UsageError, match=words):
            load_pretrained(str(tmp_path / "lie.pt"))


def without_cls_token(state):
    return {k: v for k, v in state.items() if k != "cls_token"}


def six_patch_positions(state):
    return {**state, "pos_embed": state["pos_embed"][:, :7]}


def without_blocks(state):
    return {k: v for k, v in state.items() if not k.startswith("blocks.")}


@pytest.mark.parametrize("edit,words", [
    (without_cls_token, "lacks the tensor cls_token"),
    (six_patch_positions, "6 patch positions, not a square grid"),
    (without_blocks, "not a ViT this project builds")])
def test_files_that_hold_no_vit_encoder_are_refused(tmp_path, edit, words):
    torch.save(edit(timm_state()), tmp_path / "w.pth")
    with pytest.raises(UsageError, match=words):
        load_pretrained(str(tmp_path / "w.pth"), encoder_head=2)


def test_a_folder_without_config_json_is_refused(tmp_path):
    save_file(timm_state(), tmp_path / "model.safetensors")
    with pytest.raises(UsageError, match="folder without config.json"):
        load_pretrained(str(tmp_path))


@pytest.mark.parametrize("edit,words", [
    (lambda g: {**g, "extra": torch.zeros(1)}, "unexpected tensor extra"),
    (lambda g: {**g, "w": torch.zeros(3)}, "tensor w has shape (3,)"),
    (lambda g: {**g, "w": torch.zeros(2, dtype=torch.long)}, "tensor w is torch.int64"),
    (lambda g: {**g, "w": torch.tensor([0.0, float("inf")])}, "tensor w holds NaN or inf"),
    (lambda g: {"w": g["w"]}, "tensor n is missing")])
def test_check_tensors_names_the_first_tensor_that_does_not_fit(edit, words):
    expected = {"w": torch.zeros(2), "n": torch.zeros((), dtype=torch.long)}
    weights.check_tensors(expected, {"w": torch.ones(2), "n": torch.ones((), dtype=torch.long)},
                          "f.pt")
    with pytest.raises(UsageError, match=re.escape(words)):
        weights.check_tensors(expected, edit({"w": torch.ones(2), "n": expected["n"]}), "f.pt")


# --------------------------------------------------------------------------- out, unit by unit
def test_a_folded_bn_linear_head_gives_the_logits_of_the_head():
    """The probe's BatchNorm1d(affine=False) + Linear, in eval mode, as one Linear; one
    feature's variance is BN_EPS itself, where adding eps (not subtracting) matters."""
    g = torch.Generator().manual_seed(0)
    head = torch.nn.Sequential(torch.nn.BatchNorm1d(8, affine=False, eps=BN_EPS),
                               torch.nn.Linear(8, 3)).eval()
    head[0].running_mean.copy_(torch.randn(8, generator=g) * 1e-2)
    head[0].running_var.copy_(torch.rand(8, generator=g) + 0.5)
    head[0].running_var[0] = BN_EPS
    folded = weights.fold_bn_linear(head.state_dict())
    x = torch.randn(5, 8, generator=g) * 1e-3 + head[0].running_mean
    torch.testing.assert_close(x @ folded["head.weight"].T + folded["head.bias"], head(x))


def test_timm_model_args_rebuild_the_encoder_in_timm():
    """JSON-able arguments from which timm builds the encoder exactly (strict load), at its
    one input size."""
    cfg = MAEConfig(image_size=8, emb_dim=16, encoder_layer=2, encoder_head=2, decoder_dim=16,
                    decoder_layer=1)
    args = json.loads(json.dumps(weights.timm_model_args(cfg)))
    model = timm.create_model(weights.TIMM_ARCH, **args)
    model.load_state_dict(MAE_ViT.from_config(cfg).encoder.state_dict())
    assert args["dynamic_img_size"] is False


# --------------------------------------------------------------------------- export, refused
def damaged_exports(tmp, mae_path, clf_path):
    """{name: project model file damaged so that its export would fail in timm or lie}."""
    mae, clf = load_checkpoint(mae_path, kind="mae"), load_checkpoint(clf_path)
    qkv, fc1 = "encoder.blocks.0.attn.qkv.weight", "encoder.blocks.0.mlp.fc1.weight"
    cls, norm, head = "encoder.cls_token", "encoder.norm.weight", "head.weight"

    def edited(ckpt, changes):  # changes: {model key: new value, or None to drop it}
        model = {k: v for k, v in ckpt["model"].items() if k not in changes}
        model.update({k: v for k, v in changes.items() if v is not None})
        return {**ckpt, "model": model}

    nan_norm = mae["model"][norm].clone()
    nan_norm[0] = float("nan")
    files = {  # issue 25.9, 10, 14
        "wrong_shape": edited(mae, {fc1: mae["model"][fc1][:, :16]}),
        "transposed": edited(mae, {qkv: mae["model"][qkv].t()}),
        "nan_weights": edited(mae, {norm: nan_norm}),
        "int_cls_token": edited(mae, {cls: mae["model"][cls].long()}),
        "no_head": edited(clf, {head: None, "head.bias": None}),
        "transposed_head": edited(clf, {head: clf["model"][head].t()}),
        "norm_mean_string": {**mae, "norm_mean": "0.5"},
        "non_tensor_in_model": edited(mae, {cls: [1.0, 2.0]}),
    }
    paths = {}
    for name, obj in files.items():
        paths[name] = tmp / "damaged" / f"{name}.pt"
        paths[name].parent.mkdir(exist_ok=True)
        torch.save(obj, paths[name])
    return paths


def own_file_exports(tmp, mae_path):
    """A copy of the finished MAE run (its earlier export folder included), a file of the
    user's in it, and a folder of the user's."""
    run = tmp / "own" / "mae-pretrain"
    shutil.copytree(mae_path.parent, run)
    (run / "notes.json").write_text("my notes\n")
    (tmp / "own" / "mine").mkdir()
    (tmp / "own" / "mine" / "notes.txt").write_text("my notes\n")
    return run


@pytest.fixture(scope="module")
def exports(runs):
    tmp, mae_path = runs["tmp"], runs["mae_path"]
    damaged = damaged_exports(tmp, mae_path, tmp / "e" / FT)
    own = own_file_exports(tmp, mae_path)
    before = tree_hashes(own.parent)
    cmds = {name: ["export.py", path, "--out_dir", tmp / "out" / name]
            for name, path in damaged.items()}
    cmds["resume_checkpoint"] = ["export.py", mae_path.parent / "checkpoint.pt", "--out_dir",
                                 tmp / "out" / "resume_checkpoint"]
    model = own / "vit-t-mae.pt"
    for name, out in (("run_folder", own), ("a_file", own / "notes.json"),
                      ("user_folder", own.parent / "mine")):
        cmds[name] = ["export.py", model, "--out_dir", out]
    cmds["again"] = ["export.py", model]  # an earlier export: replaced
    results = dict(zip(cmds, run_scripts(list(cmds.values()))))
    return dict(results=results, tmp=tmp, own=own.parent, before=before)


def tree_hashes(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("name,words", [
    ("wrong_shape", ["blocks.0.mlp.fc1.weight has shape (128, 16)", "needs (128, 32)"]),
    ("transposed", ["blocks.0.attn.qkv.weight has shape (32, 96)", "needs (96, 32)"]),
    ("nan_weights", ["tensor norm.weight holds NaN or infinite values"]),
    ("int_cls_token", ["tensor cls_token is torch.int64", "needs torch.float32"]),
    ("no_head", ["tensor head.weight is missing"]),
    ("transposed_head", ["head.weight has shape (32, 10)", "needs (10, 32)"]),
    ("norm_mean_string", ["is damaged: norm_mean is a str"]),
    ("non_tensor_in_model", ["model entry 'encoder.cls_token' is a list, not a tensor"]),
    ("resume_checkpoint", ["checkpoint.pt is a resume checkpoint",
                           "export the model file", "mae-pretrain/vit-t-mae.pt instead"]),
])
def test_export_of_a_damaged_file_is_one_error_line_and_writes_nothing(exports, name, words):
    line = one_error_line(exports["results"][name], words)
    assert "--overwrite" not in line  # it would delete a finished run
    assert not (exports["tmp"] / "out" / name).exists()


@pytest.mark.parametrize("name,words", [
    ("run_folder", ["mae-pretrain is a run folder (it holds args.json)"]),
    ("a_file", ["notes.json exists and is not a folder"]),
    ("user_folder", ["mine holds files that no earlier export of vit-t-mae.pt wrote"]),
])
def test_export_never_writes_over_the_run_s_own_files(exports, name, words):
    """Issue 25.2, through the CLI: the run folder and the user's files are left byte for
    byte as they were (but for the re-export of the model, which replaces the earlier export
    folder's two files with the same bytes)."""
    one_error_line(exports["results"][name], words)
    assert exports["results"]["again"].returncode == 0, exports["results"]["again"].stderr
    after = tree_hashes(exports["own"])
    assert after == exports["before"]  # the re-export wrote the same bytes


# --------------------------------------------------------------------------- export, other runs
def tiny_mae_file(path, seed):
    """A model file as mae_pretrain.py writes one, of a tiny MAE initialised with `seed`."""
    from dataclasses import asdict

    from mae_cifar.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
    seed_everything(seed)
    cfg = MAEConfig(image_size=8, emb_dim=16, encoder_layer=1, encoder_head=2, decoder_dim=16,
                    decoder_layer=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint({"format": CHECKPOINT_FORMAT, "kind": "mae", "config": asdict(cfg),
                     "model": MAE_ViT(**asdict(cfg)).state_dict(), "epoch": 1,
                     "norm_mean": torch.zeros(3), "norm_std": torch.ones(3)}, path)
    return path


def export_main(*argv):
    import export
    export.main(export.get_args_parser().parse_args([str(a) for a in argv]))


def test_export_never_replaces_another_run_s_files_or_export(tmp_path):
    """--out_dir inside another run's folder is refused; a second model of the same file name
    exported to the same --out_dir is refused, the first's export kept; the same model
    exported again, and a retrained model beside its earlier export, replace it."""
    run = tmp_path / "r" / "mae-pretrain"
    first = tiny_mae_file(run / "m.pt", seed=0)
    (run / "summary.json").write_text('{"finished": true}')
    other = tiny_mae_file(tmp_path / "other" / "m.pt", seed=1)
    with pytest.raises(UsageError, match="is in .*mae-pretrain, another run's folder"):
        export_main(other, "--out_dir", run / "sub")
    out = tmp_path / "out"
    export_main(first, "--out_dir", out)
    kept = (out / "model.safetensors").read_bytes()
    with pytest.raises(UsageError, match="no earlier export of m.pt wrote"):
        export_main(other, "--out_dir", out)
    assert (out / "model.safetensors").read_bytes() == kept
    export_main(first, "--out_dir", out)  # the same model: its own export
    export_main(first)  # beside the model file, then the model is retrained
    tiny_mae_file(first, seed=2)
    export_main(first)
    assert (run / "m-timm" / "model.safetensors").read_bytes() != kept
