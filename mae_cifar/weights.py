"""Weights in and out of the project.

Out: an encoder (or a classifier) in timm's Hugging Face folder format, config.json +
model.safetensors under timm's own keys (export.py).
In: `--pretrained_model_path` reads this project's MAE file, such a folder (export.py's or any
timm ViT's), a timm ViT state dict (.pth or .safetensors) or an official MAE pretraining
checkpoint ({'model': ...}).

The key map is explicit: official MAE and timm name the encoder's tensors alike
(patch_embed.proj.*, cls_token, pos_embed, blocks.N.*, norm.*), and this project's encoder *is*
a timm VisionTransformer, so encoder keys map to themselves; this project's MAE file prefixes
them with 'encoder.'; the MAE decoder (decoder_*, mask_token) and a timm classifier's head
(head.*, fc_norm.*) are dropped. Everything is loaded without unpickling code.
"""
import json
import math
import os
import re

import torch

from mae_cifar.checkpoint import check_model_file, load_checkpoint, read_torch_file
from mae_cifar.cli import UsageError
from model import MAEConfig, config_from_dict, vit_kwargs

# timm registers each ViT under a name fixing its sizes (vit_tiny_patch16_224, ...) except its
# test model, test_vit: the one registered plain ViT whose name claims no patch or image size.
# Exports name it, and their model_args set every size (dynamic_img_size included).
TIMM_ARCH = "test_vit"
HF_CONFIG_FN, HF_WEIGHTS_FN = "config.json", "model.safetensors"  # timm's folder format
PROJECT_PREFIX = "encoder."  # this project's MAE file: encoder keys under this prefix
DROPPED_PREFIXES = ("decoder_", "mask_token", "head.", "fc_norm.")  # decoder, timm heads
HEAD_DIM = 64  # width per attention head of the ViT family (ViT-T/S/B/L), when not recorded
TIMM_ONLY_ARGS = ("norm_layer", "drop_path_rate")  # timm's defaults already match


# --------------------------------------------------------------------------- out
def timm_model_args(cfg, num_classes=0, pool="cls"):
    """JSON-able timm.create_model keyword arguments of an encoder config (MAEConfig or
    ClassifierConfig)."""
    kwargs = vit_kwargs(cfg.image_size, cfg.patch_size, cfg.in_chans, cfg.emb_dim,
                        cfg.encoder_layer, cfg.encoder_head, num_classes=num_classes, pool=pool)
    return {**{k: v for k, v in kwargs.items() if k not in TIMM_ONLY_ARGS},
            "dynamic_img_size": False}


def fold_bn_linear(head_state):
    """A BatchNorm1d(affine=False) + Linear head (eval mode) as one timm Linear head:
    W' = W / sqrt(var + eps), b' = b - W' @ mean. Equal up to float rounding."""
    from model import BN_EPS

    scale = (head_state["0.running_var"].double() + BN_EPS).rsqrt()  # (D,)
    w = head_state["1.weight"].double() * scale  # (K, D)
    b = head_state["1.bias"].double() - w @ head_state["0.running_mean"].double()
    return {"head.weight": w.float(), "head.bias": b.float()}


# --------------------------------------------------------------------------- in
def load_pretrained(path, encoder_head=None):
    """(MAEConfig of the encoder, encoder state dict under timm keys) of any supported file.

    encoder_head: heads of a foreign file (its tensors do not tell); default: the config.json
    of a timm folder (or the JSON an older export.py wrote beside it), else width / 64."""
    path = weights_file(path)
    obj = _read(path)
    if isinstance(obj, dict) and "format" in obj:  # this project's file
        return _load_project(path)
    state, source = _foreign_state(path, obj)
    encoder = {k: v for k, v in state.items() if not k.startswith(DROPPED_PREFIXES)}
    cfg = _infer_config(path, encoder, encoder_head, source)
    return cfg, encoder


def weights_file(path):
    """The weights file of path: the file itself, or the model.safetensors of a timm Hugging
    Face folder (export.py's), or UsageError for another folder."""
    if not os.path.isdir(path):
        return path
    for name in (HF_CONFIG_FN, HF_WEIGHTS_FN):
        if not os.path.isfile(os.path.join(path, name)):
            raise UsageError(f"{path} is a folder without {name}; pass a model file or a "
                             f"timm folder ({HF_CONFIG_FN} + {HF_WEIGHTS_FN}, export.py's)")
    return os.path.join(path, HF_WEIGHTS_FN)


def _read(path):
    check_model_file(path)
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except (SafetensorError, OSError, ValueError) as e:
            raise UsageError(f"{path} is not a readable safetensors file: {e}") from None
    return read_torch_file(path)


def _load_project(path):
    ckpt = load_checkpoint(path, kind="mae")
    model = ckpt.get("model")
    if not isinstance(model, dict) or not model:
        raise UsageError(f"{path} has no 'model' tensors (found {type(model).__name__}); "
                         "pass the model file mae_pretrain.py wrote")
    try:
        cfg = config_from_dict(MAEConfig, ckpt["config"])
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise UsageError(f"{path} holds an invalid MAE configuration: {e}") from None
    encoder = {k[len(PROJECT_PREFIX):]: v for k, v in model.items()
               if k.startswith(PROJECT_PREFIX)}
    return cfg, encoder


def _foreign_state(path, obj):
    """(state dict, 'official MAE' or 'timm') of a file not written by this project."""
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj, source = obj["model"], "official MAE"
    else:
        source = "timm"
    if not isinstance(obj, dict) or not obj or \
            not all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        raise UsageError(f"{path} is neither a checkpoint of this project, a timm ViT state "
                         "dict nor an official MAE checkpoint ({'model': state dict})")
    return obj, source


def _infer_config(path, state, encoder_head, source):
    """The encoder's sizes from its tensors; heads from the flag, the export JSON or D/64."""
    for key in ("patch_embed.proj.weight", "pos_embed", "cls_token"):
        if key not in state:
            raise UsageError(f"{path} ({source}) lacks the tensor {key}: not a ViT encoder "
                             "with a cls token")
    emb_dim, in_chans, patch, _ = state["patch_embed.proj.weight"].shape  # (D, C, p, p)
    num_patches = state["pos_embed"].shape[1] - 1  # (1, 1+L, D)
    grid = math.isqrt(num_patches)
    if grid * grid != num_patches:
        raise UsageError(f"{path}: pos_embed holds {num_patches} patch positions, not a "
                         "square grid")
    depth = 1 + max((int(m.group(1)) for k in state
                     if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    heads = encoder_head or _exported_heads(path)
    if heads is None:
        heads = max(1, emb_dim // HEAD_DIM)
        print(f"note: {path} does not record its attention heads; assuming {heads} (width "
              f"{emb_dim} / {HEAD_DIM}); pass --encoder_head if that is wrong")
    try:
        return MAEConfig(image_size=grid * patch, patch_size=patch, in_chans=in_chans,
                         emb_dim=emb_dim, encoder_layer=depth, encoder_head=heads)
    except ValueError as e:
        raise UsageError(f"{path} ({source}): not a ViT this project builds: {e}") from None


def _exported_heads(path):
    """num_heads from the config.json of a timm folder holding path, or from the JSON an
    older export.py wrote beside it; None if neither is there."""
    folder_config = os.path.join(os.path.dirname(path), HF_CONFIG_FN)
    beside = folder_config if os.path.basename(path) == HF_WEIGHTS_FN else \
        os.path.splitext(path)[0] + ".json"
    try:
        with open(beside) as f:
            return int(json.load(f)["model_args"]["num_heads"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_tensors(expected, given, path, model="the encoder"):
    """UsageError naming the first tensor of `given` that `expected` (a state dict of
    `model`) lacks, holds with another shape or kind (float / integer), or that is not
    finite; or the first expected tensor missing."""
    for k, v in given.items():
        if k not in expected:
            raise UsageError(f"{path}: unexpected tensor {k} {tuple(v.shape)}; {model} "
                             "has no such key")
        if tuple(v.shape) != tuple(expected[k].shape):
            raise UsageError(f"{path}: tensor {k} has shape {tuple(v.shape)}, {model} "
                             f"its configuration describes needs {tuple(expected[k].shape)}")
        if v.is_floating_point() != expected[k].is_floating_point():
            raise UsageError(f"{path}: tensor {k} is {v.dtype}, {model} needs "
                             f"{expected[k].dtype} (casting would change its values); the "
                             "file is damaged or holds no weights")
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise UsageError(f"{path}: tensor {k} holds NaN or infinite values (a diverged "
                             "run or a damaged file); pass another model file")
    for k in expected:
        if k not in given:
            raise UsageError(f"{path}: tensor {k} is missing")


def recorded_args(path):
    """The flags this project's MAE file was trained with ({} for timm and official MAE files,
    and for a file that cannot be read: loading it says why, once)."""
    try:
        obj = _read(path)
    except UsageError:
        return {}
    if isinstance(obj, dict) and "format" in obj and isinstance(obj.get("args"), dict):
        return obj["args"]
    return {}
