"""Export a model file of this project for timm: safetensors under timm's keys plus a JSON.

    python export.py outputs/main_exp/mae-pretrain/vit-t-mae.pt
    python export.py outputs/main_exp/pretrain-cls/vit-t-clf-from_pretrained.pt --out_dir exported

Writes OUT_DIR/<name>.safetensors and OUT_DIR/<name>.json (OUT_DIR: the model file's folder):
the JSON holds the timm.create_model arguments ("architecture", "model_args") and the
normalisation the inputs need ("mean", "std" per channel, on pixels in [0, 1]). Load it with

    cfg = json.load(open("vit-t-mae.json"))
    model = timm.create_model(cfg["architecture"], checkpoint_path="vit-t-mae.safetensors",
                              **cfg["model_args"])

An MAE file exports its encoder (num_classes=0: the model returns pooled features); a
classifier exports whole, its head as timm's head.weight / head.bias. A linear probe's
BatchNorm(affine=False) + linear head has no timm equivalent: it is folded into one linear
layer (exact in eval mode, up to float rounding).

Nothing is written unless the two files are right: the tensors must load strictly into the
timm model the JSON describes, and be finite. The outputs may not be the run's own files
(args.json, summary.json, ... are refused in any folder), the model file itself, files an
earlier export of this model did not write, or files in another run's folder.
"""
import argparse
import json
import os
from dataclasses import asdict

import torch

from mae_cifar import fileio, weights
from mae_cifar.checkpoint import load_checkpoint
from mae_cifar.cli import HelpFormatter, UsageError, run_cli
from mae_cifar.fileio import atomic_write_bytes
from mae_cifar.training import classifier, run_folder
from model import ClassifierConfig, MAEConfig, config_from_dict

NORM_KEYS = ("norm_mean", "norm_std")
RESUME_KEY = "optimizer"  # only a resume checkpoint (checkpoint.pt) holds the training state
OUTPUT_EXTS = (".safetensors", ".json")  # the weights, then the JSON that describes them
SOURCE_HASH_KEY = "source_sha256"  # the JSON's record of the exported model file's bytes


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("model_path",
                   help="a model file of mae_pretrain.py (vit-t-mae.pt) or train_classifier.py")
    p.add_argument("--out_dir", default=None,
                   help="folder of the two files (created); default: the model file's folder")
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
    """(timm state dict, JSON dict) of a project checkpoint."""
    try:
        if ckpt["kind"] == "mae":
            cfg = config_from_dict(MAEConfig, ckpt["config"])
            state = {k[len(weights.PROJECT_PREFIX):]: v for k, v in ckpt["model"].items()
                     if k.startswith(weights.PROJECT_PREFIX)}
            args = weights.timm_model_args(cfg)
            meta = {}
        else:
            cfg = config_from_dict(ClassifierConfig, ckpt["config"])
            state = dict(ckpt["model"])
            meta = {"classes": list(ckpt["classes"])}
            if cfg.head == "bn_linear":
                head = {k[len("head."):]: state.pop(k) for k in list(state)
                        if k.startswith("head.")}
                state.update(weights.fold_bn_linear(head))
                meta["head"] = "BatchNorm(affine=False) + linear, folded into one linear layer"
            args = weights.timm_model_args(cfg, cfg.num_classes, cfg.pool)
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
        raise UsageError(f"{path} does not hold a valid {ckpt['kind']} model: "
                         f"{type(e).__name__}: {e}") from None
    for k in NORM_KEYS:
        if len(ckpt[k]) != cfg.in_chans:
            raise UsageError(f"{path} is damaged: {k} has {len(ckpt[k])} values for "
                             f"{cfg.in_chans} channels")
    meta.update({"mean": ckpt["norm_mean"].tolist(), "std": ckpt["norm_std"].tolist(),
                 "architecture": weights.TIMM_ARCH, "model_args": args,
                 "source": os.path.basename(path),
                 SOURCE_HASH_KEY: fileio.file_sha256(path), "config": asdict(cfg)})
    return {k: v.contiguous() for k, v in state.items()}, meta


def verified_bytes(state, meta, path):
    """The safetensors bytes of state, once read back and loaded strictly (finite, right
    shapes and kinds) into the timm model meta describes; UsageError otherwise."""
    import timm
    from safetensors.torch import load, save

    data = save(state)
    model = timm.create_model(meta["architecture"], **meta["model_args"])
    written = load(data)
    weights.check_tensors(model.state_dict(), written, path, model="the timm model")
    try:
        model.load_state_dict(written, strict=True)
    except RuntimeError as e:
        raise UsageError(f"{path}: the exported tensors do not load into timm: "
                         f"{str(e).splitlines()[0]}") from None
    return data


# --------------------------------------------------------------------------- the output
def output_paths(args):
    out_dir = args.out_dir or os.path.dirname(args.model_path) or "."
    name = os.path.splitext(os.path.basename(args.model_path))[0]
    return out_dir, [os.path.join(out_dir, name + ext) for ext in OUTPUT_EXTS]


def check_outputs(out_dir, paths, model_path):
    """Refuse, before anything is written, an --out_dir inside another run's folder, outputs
    that are the model file itself, named as a run folder's own files (report.py would take
    them for a run's), or existing files that no earlier export of this model wrote."""
    model_dir = os.path.dirname(os.path.abspath(model_path))
    owner = run_folder.run_folder_of(out_dir)
    if owner is not None and owner != run_folder.run_folder_of(model_dir):
        raise UsageError(f"--out_dir {out_dir} is in {owner}, another run's folder; choose a "
                         "folder outside run folders")
    source = os.path.basename(model_path)
    earlier = earlier_export(paths[-1], model_path)
    for out in paths:
        name = os.path.basename(out)
        if os.path.exists(out) and os.path.samefile(out, model_path):
            raise UsageError(f"{out} is the model file itself; pass --out_dir to export "
                             "elsewhere")
        if name in run_folder.RESERVED_NAMES:
            raise UsageError(f"{out} would overwrite the run's own {name} (its name is "
                             "taken in any folder); copy the model file under another name "
                             "and export the copy")
        if os.path.lexists(out) and not earlier:
            raise UsageError(f"{out} exists, and no earlier export of {source} wrote it; "
                             "pass --out_dir to export elsewhere, or move that file")


def earlier_export(json_path, model_path):
    """Whether json_path is the JSON an earlier export of this model file wrote: beside the
    model file, the export of its name (an earlier version of the file); elsewhere, of the
    same bytes (another model of the same name is another model)."""
    try:
        with open(json_path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError, RecursionError):
        return False
    if not (isinstance(meta, dict) and meta.get("source") == os.path.basename(model_path)
            and "model_args" in meta):
        return False
    beside = os.path.samefile(os.path.dirname(json_path) or ".",
                              os.path.dirname(model_path) or ".")
    return beside or meta.get(SOURCE_HASH_KEY) == fileio.file_sha256(model_path)


def main(args):
    ckpt = load_checkpoint(args.model_path)
    check_checkpoint(ckpt, args.model_path)
    out_dir, paths = output_paths(args)
    check_outputs(out_dir, paths, args.model_path)
    state, meta = exported(ckpt, args.model_path)
    data = verified_bytes(state, meta, args.model_path)
    try:
        os.makedirs(out_dir, exist_ok=True)
        atomic_write_bytes(paths[0], data)
        fileio.write_json(paths[1], meta)
    except OSError as e:
        raise UsageError(f"cannot write to {out_dir}: {e.strerror or e}") from None
    print(f"wrote {os.path.splitext(paths[0])[0]}.safetensors and .json: timm "
          f"{meta['architecture']} with {len(state)} tensors")


if __name__ == "__main__":
    run_cli(main, get_args_parser())
