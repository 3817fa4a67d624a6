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
"""
import argparse
import os
from dataclasses import asdict

import fileio
import weights
from cli import HelpFormatter, UsageError, run_cli
from fileio import atomic_write_bytes
from model import ClassifierConfig, MAEConfig, config_from_dict
from utils import load_checkpoint

NORM_KEYS = ("norm_mean", "norm_std")


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("model_path",
                   help="a model file of mae_pretrain.py (vit-t-mae.pt) or train_classifier.py")
    p.add_argument("--out_dir", default=None,
                   help="folder of the two files (created); default: the model file's folder")
    return p


def exported(ckpt, path):
    """(timm state dict, JSON dict) of a project checkpoint."""
    missing = [k for k in NORM_KEYS if k not in ckpt]
    if missing:
        raise UsageError(f"{path} lacks {', '.join(missing)} (written by an older version); "
                         "rerun its stage with --overwrite to get a file that carries them")
    meta = {"mean": ckpt["norm_mean"].tolist(), "std": ckpt["norm_std"].tolist()}
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
                meta["head"] = "BatchNorm(affine=False) + linear, folded into one linear layer"
            args = weights.timm_model_args(cfg, cfg.num_classes, cfg.pool)
            meta["classes"] = list(ckpt["classes"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise UsageError(f"{path} does not hold a valid {ckpt['kind']} model: "
                         f"{type(e).__name__}: {e}") from None
    meta.update({"architecture": weights.TIMM_ARCH, "model_args": args,
                 "source": os.path.basename(path), "config": asdict(cfg)})
    return {k: v.contiguous() for k, v in state.items()}, meta


def main(args):
    ckpt = load_checkpoint(args.model_path)
    if ckpt.get("kind") not in ("mae", "classifier"):
        raise UsageError(f"{args.model_path} is a {ckpt.get('kind')} checkpoint; expected a "
                         "model file of mae_pretrain.py or train_classifier.py")
    if not isinstance(ckpt.get("model"), dict):
        raise UsageError(f"{args.model_path} has no 'model' tensors")
    state, meta = exported(ckpt, args.model_path)
    out_dir = args.out_dir or os.path.dirname(args.model_path) or "."
    name = os.path.splitext(os.path.basename(args.model_path))[0]
    from safetensors.torch import save

    try:
        os.makedirs(out_dir, exist_ok=True)
        atomic_write_bytes(os.path.join(out_dir, name + ".safetensors"), save(state))
        fileio.write_json(os.path.join(out_dir, name + ".json"), meta)
    except OSError as e:
        raise UsageError(f"cannot write to {out_dir}: {e.strerror or e}") from None
    print(f"wrote {os.path.join(out_dir, name)}.safetensors and .json: timm "
          f"{meta['architecture']} with {len(state)} tensors")


if __name__ == "__main__":
    run_cli(main, get_args_parser())
