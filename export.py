"""Export a model file of this project to timm's Hugging Face folder format.

    python export.py outputs/main_exp/mae-pretrain/vit-t-mae.pt
    python export.py outputs/main_exp/pretrain-cls/vit-t-clf-from_pretrained.pt --out_dir exported

Writes the folder OUT_DIR (default: <model file without .pt>-timm beside it) as timm's
save_for_hf does: model.safetensors (timm's keys) and config.json ("architecture",
"model_args", "num_classes", "num_features", and a "pretrained_cfg" holding this model's
input_size, mean, std, interpolation, crop_pct, num_classes and label_names). timm loads it with

    model = timm.create_model("local-dir:OUT_DIR", pretrained=True)
    data_config = timm.data.resolve_data_config({}, model=model)  # (C, H, W), mean, std

The architecture is timm's test_vit, its one registered plain ViT whose name claims no patch
or image size; model_args set every size. --push_to_hub REPO uploads the same folder through
timm's push_to_hf_hub (huggingface_hub's login or HF_TOKEN).

An MAE file exports its encoder (num_classes=0: the model returns pooled features); a
classifier exports whole, its head as timm's head.weight / head.bias. A linear probe's
BatchNorm(affine=False) + linear head has no timm equivalent: it is folded into one linear
layer (exact in eval mode, up to float rounding). A classifier run with --val_split also
wrote its best epoch's model file (<name>-best.pt): export either.

Nothing is written unless the folder is right: it is written beside OUT_DIR, loaded back with
timm.create_model("local-dir:...") (strictly, finite tensors, the right input config), then
moved into place. OUT_DIR may not be a run folder, a file, or a folder with files that no
earlier export of this model wrote.
"""
import argparse
import json
import os
import shutil
import tempfile
from dataclasses import asdict

import torch

from mae_cifar import fileio, weights
from mae_cifar.checkpoint import load_checkpoint
from mae_cifar.cli import HelpFormatter, UsageError, run_cli
from mae_cifar.fileio import TEMP_PREFIX
from mae_cifar.training import classifier, run_folder
from model import ClassifierConfig, MAEConfig, config_from_dict

NORM_KEYS = ("norm_mean", "norm_std")
RESUME_KEY = "optimizer"  # only a resume checkpoint (checkpoint.pt) holds the training state
OUT_SUFFIX = "-timm"  # the default folder: the model file's name without .pt, plus this
CONFIG_FN = "config.json"  # timm's file names in a Hugging Face folder (save_for_hf)
WEIGHTS_FN = "model.safetensors"
SOURCE_HASH_KEY = "source_sha256"  # the note's record of the exported model file's bytes
PROJECT_KEY = "mae_cifar"  # config.json's entry of what timm does not read: source, config
INTERPOLATION = "bilinear"  # how the datasets resize images (mae_cifar/data/datasets.py)
CROP_PCT = 1.0  # evaluation sees the whole image, uncropped


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("model_path",
                   help="a model file of mae_pretrain.py (vit-t-mae.pt) or train_classifier.py "
                        "(its last or its -best.pt epoch)")
    p.add_argument("--out_dir", default=None,
                   help="the folder to write (created); default: <model file without .pt>"
                        f"{OUT_SUFFIX} beside the model file")
    p.add_argument("--push_to_hub", default=None, metavar="REPO",
                   help="also upload the folder to this Hugging Face Hub repository "
                        "(user/name) with timm's push_to_hf_hub")
    return p


# --------------------------------------------------------------------------- the input
def check_checkpoint(ckpt, path):
    """UsageError unless ckpt is a final model file of this project with tensors only."""
    if ckpt.get("kind") not in ("mae", "classifier"):
        raise UsageError(f"{path} is a {ckpt.get('kind')} checkpoint; expected a "
                         "model file of mae_pretrain.py or train_classifier.py")
    if RESUME_KEY in ckpt:
        model = final_model_file(ckpt, path)
        raise UsageError(f"{path} is a resume checkpoint (the training state of its run), "
                         f"not a model file; export the model file {model or 'its stage wrote'}"
                         " instead")
    model = ckpt.get("model")
    if not isinstance(model, dict) or not model:
        raise UsageError(f"{path} has no 'model' tensors")
    for k, v in model.items():
        if not torch.is_tensor(v):
            raise UsageError(f"{path} is damaged: its model entry {k!r} is a "
                             f"{type(v).__name__}, not a tensor")
    missing = [k for k in NORM_KEYS if k not in ckpt]
    if missing:
        raise UsageError(f"{path} lacks {', '.join(missing)} (written by an older version); "
                         "rerun its stage with --overwrite to get a file that carries them")
    for k in NORM_KEYS:
        v = ckpt[k]
        if not (torch.is_tensor(v) and v.is_floating_point() and v.ndim == 1
                and torch.isfinite(v).all()):
            raise UsageError(f"{path} is damaged: {k} is {describe(v)}, not one finite "
                             "float per channel")


def describe(v):
    return f"a {v.dtype} tensor of shape {tuple(v.shape)}" if torch.is_tensor(v) else \
        f"a {type(v).__name__}"


def final_model_file(ckpt, path):
    """The model file the run of a resume checkpoint writes (None if its flags are lost)."""
    args, folder = ckpt.get("args"), os.path.dirname(path)
    try:
        if ckpt["kind"] == "mae":
            return os.path.join(folder, args["model_fn"])
        return classifier.model_file(args, folder)
    except (KeyError, TypeError):
        return None


def exported(ckpt, path):
    """(timm state dict, timm model_args, data config, project entry) of a checkpoint."""
    note = {}
    try:
        if ckpt["kind"] == "mae":
            cfg = config_from_dict(MAEConfig, ckpt["config"])
            state = {k[len(weights.PROJECT_PREFIX):]: v for k, v in ckpt["model"].items()
                     if k.startswith(weights.PROJECT_PREFIX)}
            args = weights.timm_model_args(cfg)
        else:
            cfg = config_from_dict(ClassifierConfig, ckpt["config"])
            state = dict(ckpt["model"])
            if cfg.head == "bn_linear":
                head = {k[len("head."):]: state.pop(k) for k in list(state)
                        if k.startswith("head.")}
                state.update(weights.fold_bn_linear(head))
                note["head"] = "BatchNorm(affine=False) + linear, folded into one linear layer"
            args = weights.timm_model_args(cfg, cfg.num_classes, cfg.pool)
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
        raise UsageError(f"{path} does not hold a valid {ckpt['kind']} model: "
                         f"{type(e).__name__}: {e}") from None
    for k in NORM_KEYS:
        if len(ckpt[k]) != cfg.in_chans:
            raise UsageError(f"{path} is damaged: {k} has {len(ckpt[k])} values for "
                             f"{cfg.in_chans} channels")
    data = {"input_size": (cfg.in_chans, cfg.image_size, cfg.image_size),
            "mean": tuple(ckpt["norm_mean"].tolist()), "std": tuple(ckpt["norm_std"].tolist()),
            "interpolation": INTERPOLATION, "crop_pct": CROP_PCT,
            "num_classes": args["num_classes"]}
    if args["num_classes"]:
        data["label_names"] = [str(c) for c in ckpt["classes"]]
    note.update({"source": os.path.basename(path), SOURCE_HASH_KEY: fileio.file_sha256(path),
                 "kind": ckpt["kind"], "config": asdict(cfg)})
    return {k: v.contiguous() for k, v in state.items()}, args, data, note


def timm_model(state, args, data, path):
    """The timm model of model_args `args` holding `state` (loaded strictly, every tensor
    finite, of the right shape and kind), its pretrained_cfg this model's data config."""
    import timm

    model = timm.create_model(weights.TIMM_ARCH, pretrained_cfg={
        **data, "first_conv": "patch_embed.proj", "classifier": "head"}, **args)
    weights.check_tensors(model.state_dict(), state, path, model="the timm model")
    model.load_state_dict(state, strict=True)
    return model.eval()


def hf_config(args, data, note):
    """The model_config and model_args of timm's save_for_hf / push_to_hf_hub."""
    labels = {"label_names": data["label_names"]} if "label_names" in data else {}
    return {"model_config": {**labels, PROJECT_KEY: note}, "model_args": args}


def write_verified(model, config, data, folder):
    """save_for_hf into `folder`, then UsageError unless timm loads it back ("local-dir:")
    into the same tensors and resolves this model's input size and normalisation."""
    import timm
    from timm.models import save_for_hf

    save_for_hf(model, folder, safe_serialization=True, **config)
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True)
    expected = model.state_dict()
    for k, v in loaded.state_dict().items():
        if not torch.equal(v, expected[k]):
            raise UsageError(f"timm read the exported tensor {k} back differently")
    resolved = timm.data.resolve_data_config({}, model=loaded)
    for k in ("input_size", "mean", "std"):
        if tuple(resolved[k]) != tuple(data[k]):
            raise UsageError(f"timm resolves the exported {k} as {resolved[k]}, not {data[k]}")


# --------------------------------------------------------------------------- the output
def output_dir(args):
    return args.out_dir or os.path.splitext(args.model_path)[0] + OUT_SUFFIX


def check_output(out_dir, model_path):
    """Refuse, before anything is written, a folder inside another run's folder, a folder
    that is a file, a run folder, or holds files that no earlier export of this model wrote."""
    owner = run_folder.run_folder_of(out_dir)
    if owner is not None and owner != run_folder.run_folder_of(os.path.dirname(
            os.path.abspath(model_path))):
        raise UsageError(f"--out_dir {out_dir} is in {owner}, another run's folder; choose a "
                         "folder outside run folders")
    if not os.path.lexists(out_dir):
        return
    if not os.path.isdir(out_dir):
        raise UsageError(f"--out_dir {out_dir} exists and is not a folder")
    names = set(os.listdir(out_dir))
    own = names & set(run_folder.RUN_FILES)
    if own:
        raise UsageError(f"--out_dir {out_dir} is a run folder (it holds {sorted(own)[0]}); "
                         "export to a folder of its own")
    if names and not (names <= {CONFIG_FN, WEIGHTS_FN} and earlier_export(out_dir, model_path)):
        raise UsageError(f"--out_dir {out_dir} holds files that no earlier export of "
                         f"{os.path.basename(model_path)} wrote; pass another --out_dir, or "
                         "empty that folder")


def earlier_export(folder, model_path):
    """Whether folder's config.json is one an earlier export of this model file wrote: beside
    the model file, the export of its name (an earlier version of the file); elsewhere, of the
    same bytes (another model of the same name is another model)."""
    try:
        with open(os.path.join(folder, CONFIG_FN), encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError, RecursionError):
        return False
    note = meta.get(PROJECT_KEY) if isinstance(meta, dict) else None
    if not isinstance(note, dict) or note.get("source") != os.path.basename(model_path):
        return False
    beside = os.path.dirname(os.path.abspath(folder)) == \
        os.path.dirname(os.path.abspath(model_path))
    return beside or note.get(SOURCE_HASH_KEY) == fileio.file_sha256(model_path)


def check_repo_id(repo):
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError as e:
        raise UsageError(f"--push_to_hub {repo} is not a Hub repository id: {e}") from None


def move_into_place(staged, out_dir):
    """The staged folder becomes out_dir: renamed if out_dir is new, else file by file
    (each an atomic replace, config.json last: a folder with it is complete)."""
    if not os.path.exists(out_dir):
        os.replace(staged, out_dir)
        return
    for name in (WEIGHTS_FN, CONFIG_FN):
        os.replace(os.path.join(staged, name), os.path.join(out_dir, name))
    shutil.rmtree(staged)


def push(model, config, repo):
    from timm.models import push_to_hf_hub

    try:
        push_to_hf_hub(model, repo, safe_serialization=True, **config)
    except (OSError, ValueError) as e:  # huggingface_hub's HTTP and auth errors among them
        raise UsageError(f"the upload to {repo} failed ({type(e).__name__}: {e}); the "
                         "folder is written, run again to retry the upload") from None


def main(args):
    ckpt = load_checkpoint(args.model_path)
    check_checkpoint(ckpt, args.model_path)
    out_dir = output_dir(args)
    check_output(out_dir, args.model_path)
    if args.push_to_hub:
        check_repo_id(args.push_to_hub)
    state, model_args, data, note = exported(ckpt, args.model_path)
    model = timm_model(state, model_args, data, args.model_path)
    config = hf_config(model_args, data, note)
    parent = os.path.dirname(os.path.abspath(out_dir))
    try:
        os.makedirs(parent, exist_ok=True)
        staged = tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=parent)
    except OSError as e:
        raise UsageError(f"cannot write to {parent}: {e.strerror or e}") from None
    try:
        write_verified(model, config, data, staged)
        move_into_place(staged, out_dir)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    print(f"wrote {out_dir}: timm {weights.TIMM_ARCH} ({len(state)} tensors, input "
          f"{data['input_size']}); load it with timm.create_model(\"local-dir:{out_dir}\", "
          "pretrained=True)")
    if args.push_to_hub:
        push(model, config, args.push_to_hub)
        print(f"uploaded to https://huggingface.co/{args.push_to_hub}")


if __name__ == "__main__":
    run_cli(main, get_args_parser())
