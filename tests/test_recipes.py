"""Recipes: `paper` is the MAE appendix A.1, the batched augmentations have the right
statistics, and the pieces the paper's recipe needs (fc_norm pooling, LARS, min_lr,
drop_last, weight-decay groups, mixup of odd batches) behave as the official code."""
import json
import math

import numpy as np
import pytest
import torch
from conftest import TINY_DATA, TINY_MAE, run_scripts
from PIL import Image
from timm.data import auto_augment as timm_aa
from timm.optim._param_groups import param_groups_layer_decay, param_groups_weight_decay

import mae_pretrain
import train_classifier
from mae_cifar.cli import UsageError, parse_args
from mae_cifar.data import augment
from mae_cifar.data.augment import rrc_boxes
from mae_cifar.data.datasets import Split
from mae_cifar.data.loader import DeviceLoader
from mae_cifar.training import classifier, engine, objectives, recipes
from mae_cifar.training.optim import cosine_lr, param_groups
from model import ClassifierConfig, MAE_ViT, ViT_Classifier, sincos_pos_embed

pytestmark = pytest.mark.usefixtures("one_thread")

# --------------------------------------------------------------------------- the appendix
# He et al., "Masked Autoencoders Are Scalable Vision Learners", appendix A.1, transcribed
# by hand; ViT-B's column where sizes differ (ViT-T has ViT-B's 12 blocks).
PAPER = {
    "pretrain": {  # Table 8: pre-training setting
        "optimizer": "adamw",
        "base_learning_rate": 1.5e-4,
        "weight_decay": 0.05,
        "betas": [0.9, 0.95],
        "batch_size": 4096,
        "warmup_epoch": 40,  # cosine decay after warmup
        "augment": "rrc_flip",  # RandomResizedCrop
        "crop_scale": [0.2, 1.0],  # (official main_pretrain.py)
        "drop_last": True,  # (official main_pretrain.py)
        "decay_tokens": True,  # (official add_weight_decay: only ndim <= 1 and biases skip)
        "min_lr": 0.0,  # (official main_pretrain.py)
        "pos_embed": "sincos",  # (official models_mae.py: fixed 2-D sin-cos, no grad)
    },
    "finetune": {  # Table 9: end-to-end fine-tuning setting
        "optimizer": "adamw",
        "base_learning_rate": 5e-4,  # ViT-B (FINETUNE.md: --blr 5e-4); 1e-3 for ViT-L/H
        "weight_decay": 0.05,
        "betas": [0.9, 0.999],
        "layer_decay": 0.65,  # ViT-B (FINETUNE.md: --layer_decay 0.65); 0.75 for ViT-L/H
        "batch_size": 1024,
        "warmup_epoch": 5,
        "total_epoch": 100,  # ViT-B
        "augment": "rrc_flip",
        "crop_scale": [0.08, 1.0],  # (timm create_transform's default scale)
        "rand_augment": "rand-m9-mstd0.5-inc1",  # RandAug (9, 0.5)
        "smoothing": 0.1,
        "mixup": 0.8,
        "cutmix": 1.0,
        "drop_path": 0.1,
        "reprob": 0.25,  # (official main_finetune.py: --reprob 0.25, pixel mode)
        "pool": "mean",  # (official main_finetune.py: global_pool with fc_norm)
        "head_init_std": 2e-5,  # (official main_finetune.py)
        "min_lr": 1e-6,  # (official main_finetune.py)
        "drop_last": True,  # (official main_finetune.py)
    },
    "linprobe": {  # Table 10: linear probing setting
        "optimizer": "lars",
        "base_learning_rate": 0.1,
        "weight_decay": 0.0,
        "momentum": 0.9,  # LARS momentum
        "batch_size": 16384,
        "warmup_epoch": 10,
        "total_epoch": 90,
        "augment": "rrc_flip",  # RandomResizedCrop + flip
        "crop_scale": [0.08, 1.0],  # (official main_linprobe.py: util/crop.py default)
        "pool": "cls",  # (official main_linprobe.py: cls token by default)
        "head_init_std": 0.01,  # (official main_linprobe.py)
        "min_lr": 0.0,
        "drop_last": True,
        "mixup": 0.0, "cutmix": 0.0, "smoothing": 0.0, "drop_path": 0.0, "reprob": 0.0,
        "rand_augment": "none", "layer_decay": 1.0,
    },
}


def resolved(stage, *flags):
    if stage == "pretrain":
        args = mae_pretrain.get_args_parser().parse_args(list(flags))
        recipes.resolve(args, stage)
    else:
        probe = ["--linear_probe"] if stage == "linprobe" else []
        args = train_classifier.get_args_parser().parse_args(probe + list(flags))
        classifier.resolve_recipe(args)
    return vars(args)


@pytest.mark.parametrize("stage", list(PAPER))
def test_paper_recipe_is_the_appendix(stage):
    args = resolved(stage, "--recipe", "paper")
    got = {k: args[k] for k in PAPER[stage]}
    assert got == PAPER[stage]


def test_a_saved_recipe_replays_through_config(tmp_path):
    """args.json holds only flags, so --config takes a resolved recipe back unchanged."""
    args = resolved("linprobe", "--recipe", "paper")
    path = tmp_path / "args.json"
    path.write_text(json.dumps(args))
    parser = train_classifier.get_args_parser()
    again = vars(parse_args(parser, ["--config", str(path)]))
    assert {k: again[k] for k in args if k != "config"} == \
        {k: v for k, v in args.items() if k != "config"}


def test_explicit_flags_override_the_recipe_and_defaults_are_documented():
    args = resolved("finetune", "--recipe", "paper", "--batch_size", "64", "--reprob", "0")
    assert args["batch_size"] == 64 and args["reprob"] == 0 and args["mixup"] == 0.8
    assert resolved("linprobe")["recipe"] == "fast"  # cached, base lr 0.1: not under-trained
    assert resolved("linprobe")["base_learning_rate"] == 0.1
    assert resolved("finetune")["recipe"] == "seed" and resolved("pretrain")["recipe"] == "seed"
    assert resolved("pretrain")["pos_embed"] == "learned"  # the default run is unchanged
    assert resolved("pretrain", "--recipe", "paper", "--pos_embed", "learned")["pos_embed"] == \
        "learned"
    assert "--linear_probe defaults to --recipe fast" in \
        train_classifier.get_args_parser().format_help()
    with pytest.raises(UsageError, match="no finetune table"):
        resolved("finetune", "--recipe", "fast")
    with pytest.raises(UsageError, match="--crop_scale"):
        resolved("finetune", "--crop_scale", "0.5", "0.1")
    with pytest.raises(UsageError, match="--rand_augment"):
        resolved("finetune", "--rand_augment", "rand-m9")


def test_pretraining_offers_only_the_optimizer_its_recipes_use(tmp_path, capsys):
    """--optimizer lars is refused by pretraining (exit 2), on the command line and in a
    replayed args.json, instead of training AdamW in silence; the classifier keeps LARS."""
    with pytest.raises(SystemExit) as exit_info:
        resolved("pretrain", "--optimizer", "lars")
    assert exit_info.value.code == 2
    assert "invalid choice: 'lars' (choose from 'adamw')" in capsys.readouterr().err
    config = tmp_path / "args.json"
    config.write_text(json.dumps({"optimizer": "lars"}))
    with pytest.raises(UsageError, match='optimizer "lars" is not a valid --optimizer'):
        parse_args(mae_pretrain.get_args_parser(), ["--config", str(config)])
    assert resolved("linprobe", "--optimizer", "lars")["optimizer"] == "lars"


# --------------------------------------------------------------------------- augmentations
def test_random_erasing_erases_a_quarter_of_the_images_with_boxes_in_range():
    torch.manual_seed(0)
    n, side = 4000, 32
    x = torch.zeros(n, 3, side, side)
    out = augment.random_erasing(x, 0.25)
    erased = (out != 0).flatten(1).any(dim=1).float()
    assert erased.mean().item() == pytest.approx(0.25, abs=0.03)
    area = (out != 0)[:, 0].flatten(1).sum(1)[erased.bool()] / side ** 2
    lo, hi = augment.ERASE_AREA
    assert area.min() >= lo / 2 and area.max() <= hi * 1.2  # rounded box sides
    boxes = (out != 0)[erased.bool(), 0]  # every erased area is one rectangle
    rows, cols = boxes.any(2).sum(1), boxes.any(1).sum(1)
    assert torch.equal(rows * cols, boxes.flatten(1).sum(1))


@pytest.mark.parametrize("scale", [(0.08, 1.0), (0.2, 1.0)])
def test_crop_scales_cover_their_range(scale):
    torch.manual_seed(0)
    w, h, cx, cy = rrc_boxes(20000, scale, (3 / 4, 4 / 3), "cpu")
    area = w * h
    assert area.min() >= scale[0] - 1e-6 and area.max() <= scale[1] + 1e-6
    assert area.min() < scale[0] + 0.01 and area.max() > 0.95
    assert (cx.abs() <= 1 - w + 1e-6).all() and (cy.abs() <= 1 - h + 1e-6).all()  # inside


def uint8_images(n=6, c=3, side=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, side, side), generator=g, dtype=torch.uint8)


def timm_op(name, img, level, sign):
    """timm's PIL op at our (level, sign), through timm's own level functions."""
    m = level * augment.LEVEL_MAX
    pil = {"auto_contrast": lambda i: timm_aa.auto_contrast(i),
           "equalize": lambda i: timm_aa.equalize(i), "invert": lambda i: timm_aa.invert(i),
           "posterize": lambda i: timm_aa.posterize(i, *timm_aa._posterize_increasing_level_to_arg(
               m, {})),
           "solarize": lambda i: timm_aa.solarize(
               i, *timm_aa._solarize_increasing_level_to_arg(m, {})),
           "solarize_add": lambda i: timm_aa.solarize_add(
               i, *timm_aa._solarize_add_level_to_arg(m, {}))}
    if name in pil:
        return pil[name](img)
    factor = max(0.1, 1.0 + sign * m / augment.LEVEL_MAX * 0.9)
    return getattr(timm_aa, name)(img, factor)


ENHANCE_OPS = ("color", "contrast", "brightness", "sharpness")


@pytest.mark.parametrize("name", list(augment.PIXEL_OPS))
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_pixel_ops_match_timms_pil_ops(name, sign):
    """Each batched op equals timm's PIL op on every image (enhance ops within rounding)."""
    x = uint8_images()
    level = torch.full((x.shape[0],), 0.9)
    out = augment.PIXEL_OPS[name](x.float() / 255, level, torch.full_like(level, sign))
    for img, got in zip(x, out):
        pil = Image.fromarray(img.permute(1, 2, 0).numpy())
        want = torch.from_numpy(np.array(timm_op(name, pil, 0.9, sign))).permute(2, 0, 1)
        tol = 2.0 if name in ENHANCE_OPS else 0.0  # PIL rounds its blends to integers
        assert (got * 255 - want.float()).abs().max() <= tol + 1e-3, name


def test_rand_augment_changes_images_keeps_shape_dtype_range_and_is_seeded():
    x = uint8_images(n=64, side=16).float() / 255
    fill = x.mean(dim=(0, 2, 3))[None, :, None, None]
    torch.manual_seed(3)
    a = augment.rand_augment(x, 2, 9.0, 0.5, fill)
    torch.manual_seed(3)
    b = augment.rand_augment(x, 2, 9.0, 0.5, fill)
    assert a.shape == x.shape and a.dtype == x.dtype and torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1
    changed = (a - x).abs().flatten(1).amax(1) > 1e-4
    # each of 2 ops is applied with p 0.5: about 3/4 of the images change
    assert 0.5 < changed.float().mean() < 0.95
    assert augment.parse_rand_augment("rand-m9-mstd0.5-inc1") == (2, 9.0, 0.5)


def test_rand_augment_bounds_the_number_of_ops():
    """-n99999 would run 99999 passes over every batch: refused, one message (issue 25.20)."""
    n_max = f"rand-m9-mstd0.5-n{augment.MAX_OPS}-inc1"
    assert augment.parse_rand_augment(n_max) == (augment.MAX_OPS, 9.0, 0.5)
    with pytest.raises(UsageError, match=rf"--rand_augment: -n99999 .* at most {augment.MAX_OPS}"):
        resolved("finetune", "--rand_augment", "rand-m9-mstd0.5-n99999-inc1")
def recorded_levels_and_signs(monkeypatch):
    """Make every pixel op record the (level, sign) it is called with -> that list."""
    calls = []

    def recording(op):
        def op_with_record(x, level, sign):
            calls.append((level.clone(), sign.clone()))
            return op(x, level, sign)
        return op_with_record
    monkeypatch.setattr(augment, "PIXEL_OPS",
                        {k: recording(v) for k, v in augment.PIXEL_OPS.items()})
    return calls


def test_rand_augment_magnitudes_are_drawn_with_mean_m_and_std_mstd(monkeypatch):
    """Every op receives per-image levels; timm draws each magnitude from N(m, mstd)."""
    calls = recorded_levels_and_signs(monkeypatch)
    x = uint8_images(n=20000, side=2).float() / 255
    torch.manual_seed(0)
    m, mstd, n_ops = 5.0, 1.5, 2  # 3.3 std from the [0, 10] clip: it barely matters
    augment.rand_augment(x, n_ops, m, mstd, fill=x.mean(dim=(0, 2, 3))[None, :, None, None])
    # the ops of one round share its levels: one distinct row of levels per round
    drawn = torch.unique(torch.stack([lv for lv, _ in calls]), dim=0) * augment.LEVEL_MAX
    assert len(drawn) == n_ops
    assert drawn.mean().item() == pytest.approx(m, abs=0.05)
    assert drawn.std().item() == pytest.approx(mstd, rel=0.05)
    assert not torch.equal(drawn[0], drawn[1])  # a fresh draw per op


@pytest.mark.parametrize("m", [0.0, 10.0])
def test_rand_augment_clips_magnitudes_to_the_level_range(monkeypatch, m):
    """timm clips N(m, mstd) to [0, 10]: at m = 0 (or 10) about half the draws sit on 0
    (10)."""
    calls = recorded_levels_and_signs(monkeypatch)
    x = uint8_images(n=4000, side=2).float() / 255
    torch.manual_seed(0)
    augment.rand_augment(x, 1, m, 2.0, fill=x.mean(dim=(0, 2, 3))[None, :, None, None])
    drawn = calls[0][0] * augment.LEVEL_MAX
    assert (drawn == m).float().mean().item() == pytest.approx(0.5, abs=0.05)
    assert ((drawn >= 0) & (drawn <= augment.LEVEL_MAX)).all()


def test_rand_augment_applies_one_whole_op_or_none_to_each_image(monkeypatch):
    """One op per image: about half the images come out unchanged (OP_PROB), every other
    one is exactly one of the 15 ops at its level and sign, every op is used, and the signs
    are +-1 with even odds."""
    calls = recorded_levels_and_signs(monkeypatch)
    pixel_ops = dict(augment.PIXEL_OPS)
    g = torch.Generator().manual_seed(0)
    b = 600
    x = 0.2 + 0.5 * torch.rand(b, 3, 8, 8, generator=g)  # no op leaves these unchanged
    fill = x.mean(dim=(0, 2, 3))[None, :, None, None]
    torch.manual_seed(0)
    out = augment.rand_augment(x, 1, 9.0, 0.5, fill)
    level, sign = calls[0]
    assert set(sign.tolist()) == {-1.0, 1.0}
    assert (sign > 0).float().mean().item() == pytest.approx(0.5, abs=0.07)
    candidates = {"none": x}
    for name in augment.OPS:
        if name in augment.GEOMETRIC:
            theta = augment.affine_theta(name, level, sign)
            candidates[name] = augment.warp(x, theta, fill).clamp(0, 1)
        else:
            candidates[name] = pixel_ops[name](x, level, sign).clamp(0, 1)
    used = []
    for i in range(b):
        match = [k for k, c in candidates.items() if torch.allclose(out[i], c[i], atol=1e-5)]
        assert match, f"image {i} is no single op of its level and sign"
        used.append(match[0])
    assert used.count("none") / b == pytest.approx(1 - augment.OP_PROB, abs=0.07)
    assert set(used) == {"none", *augment.OPS}


def test_paper_loader_crops_randaugments_and_erases_on_the_device():
    split = Split(uint8_images(n=40, side=16), torch.arange(40))
    mean, std = torch.full((3,), 0.5), torch.full((3,), 0.25)
    kw = recipes.loader_kwargs(argparse_ns(resolved("finetune", "--recipe", "paper")))
    loader = DeviceLoader(split, 8, mean, std, "rrc_flip", **kw)
    plain = DeviceLoader(split, 8, mean, std, "none")
    x, y = next(loader.epoch(0))
    x0, y0 = next(plain.epoch(0))
    assert torch.equal(y, y0) and x.shape == x0.shape and x.dtype == torch.float32
    assert not torch.allclose(x, x0)
    assert len(loader) == 5 and kw["drop_last"] and kw["reprob"] == 0.25


def argparse_ns(d):
    import argparse
    return argparse.Namespace(**d)


def test_drop_last_drops_the_partial_batch():
    split = Split(uint8_images(n=70, side=4), torch.arange(70))
    norm = torch.zeros(3), torch.ones(3)
    kept = DeviceLoader(split, 32, *norm)
    dropped = DeviceLoader(split, 32, *norm, drop_last=True)
    assert len(kept) == 3 and len(dropped) == 2
    assert [len(y) for _, y in dropped.epoch(0)] == [32, 32]
    with pytest.raises(UsageError, match="no full batch"):
        DeviceLoader(split, 128, drop_last=True)


# --------------------------------------------------------------------------- mixup
@pytest.mark.parametrize("b", [1, 5, 171])
def test_mixup_mixes_odd_batches(b):
    mix = objectives.any_size_mixup(mixup_alpha=1.0, cutmix_alpha=0.0, label_smoothing=0,
                                          num_classes=b)
    np.random.seed(0)
    x = torch.randn(b, 3, 4, 4)
    y = torch.arange(b)
    mixed, target = mix(x.clone(), y)
    lam = target[0, 0].item()
    assert target.shape == (b, b) and torch.allclose(target.sum(1), torch.ones(b))
    assert torch.allclose(mixed, lam * x + (1 - lam) * x.flip(0), atol=1e-6)
    if b % 2:  # the middle image is mixed with itself
        assert torch.allclose(mixed[b // 2], x[b // 2], atol=1e-6)


# --------------------------------------------------------------------------- model pieces
def tiny_classifier(pool, **kw):
    return ViT_Classifier(ClassifierConfig(image_size=16, emb_dim=32, encoder_layer=2,
                                           encoder_head=2, pool=pool, **kw))


def test_mean_pool_is_the_official_global_pool_with_a_fresh_fc_norm():
    torch.manual_seed(0)
    mae = MAE_ViT(image_size=16, emb_dim=32, encoder_layer=2, encoder_head=2, decoder_dim=32,
                  decoder_layer=1)
    with torch.no_grad():
        mae.encoder.norm.weight.uniform_()  # a trained final norm, which mean pool drops
    state = mae.encoder_state_dict()
    clf = ViT_Classifier.from_mae(mae.config, state, num_classes=10, pool="mean").eval()
    assert isinstance(clf.norm, torch.nn.Identity)
    assert torch.equal(clf.fc_norm.weight, torch.ones(32))  # fresh LayerNorm
    for k, v in clf.state_dict().items():
        if k in state:
            assert torch.equal(v, state[k]), k  # every other tensor transfers exactly
    assert set(state) - set(clf.state_dict()) == {"norm.weight", "norm.bias"}
    x = torch.randn(3, 3, 16, 16)
    tokens = mae.encoder.blocks(mae.encoder._pos_embed(mae.encoder.patch_embed(x)))
    want = torch.nn.functional.layer_norm(tokens[:, 1:].mean(1), (32,), eps=1e-6)
    assert torch.allclose(clf.features(x), want, atol=1e-5)
    cls = ViT_Classifier.from_mae(mae.config, state, num_classes=10, pool="cls").eval()
    assert torch.allclose(cls.features(x), mae.encoder.norm(tokens)[:, 0], atol=1e-5)


def test_layer_decay_groups_match_timms_factory_and_pretraining_decays_tokens():
    model = tiny_classifier("mean")

    def table(m, groups):
        names = {id(p): n for n, p in m.named_parameters()}
        return {names[id(p)]: (g["weight_decay"], pytest.approx(g.get("lr_scale", 1.0)))
                for g in groups for p in g["params"]}

    ours = table(model, param_groups(model, 0.05, 0.65))
    assert ours == table(model, param_groups_layer_decay(
        model, 0.05, model.no_weight_decay(), layer_decay=0.65))
    assert ours["cls_token"][0] == 0 and ours["blocks.0.attn.qkv.weight"][0] == 0.05
    mae = MAE_ViT(image_size=16, emb_dim=32, encoder_layer=2, encoder_head=2, decoder_dim=32,
                  decoder_layer=1)
    official = table(mae, param_groups(mae, 0.05, 1.0, no_decay_names=()))
    assert official == table(mae, param_groups_weight_decay(mae, 0.05))  # add_weight_decay
    assert official["mask_token"][0] == official["encoder.cls_token"][0] == 0.05


def test_timms_layer_decay_groups_are_not_ours_so_utils_keeps_its_own():
    """Why utils.param_groups is not timm's param_groups_layer_decay: (1) with cls pooling
    timm's group_matcher puts the final norm in the last block's layer, official MAE
    (util/lr_decay.py: get_layer_id_for_vit) in the head's; (2) timm orders each layer's
    groups by first appearance, ours decay first: the optimizer state's layout in every
    checkpoint, which a resume of an existing run loads."""
    model = tiny_classifier("cls")
    names = {id(p): n for n, p in model.named_parameters()}
    ours = param_groups(model, 0.05, 0.65)
    theirs = param_groups_layer_decay(model, 0.05, model.no_weight_decay(), layer_decay=0.65)

    def scale(groups):
        return {names[id(p)]: g["lr_scale"] for g in groups for p in g["params"]}

    assert scale(ours)["norm.weight"] == 1.0  # the head's layer, as official MAE
    assert scale(theirs)["norm.weight"] == pytest.approx(0.65)  # the last block's
    assert [g["weight_decay"] for g in ours[:2]] == [0.05, 0.0]
    assert [g["weight_decay"] for g in theirs[:2]] == [0.0, 0.05]


def test_lars_adapts_weights_like_the_official_probe_and_leaves_biases_plain():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 3)
    groups = param_groups(head, 0.0)
    opt = engine.build_optimizer("lars", groups, 0.5, None, torch.device("cpu"))
    w0, b0 = head.weight.detach().clone(), head.bias.detach().clone()
    head(torch.randn(4, 8)).square().sum().backward()
    gw, gb = head.weight.grad.clone(), head.bias.grad.clone()
    opt.step()
    trust = 1e-3 * w0.norm() / gw.norm()  # official util/lars.py, weight decay 0
    assert torch.allclose(head.weight, w0 - 0.5 * trust * gw, atol=1e-6)
    assert torch.allclose(head.bias, b0 - 0.5 * gb, atol=1e-6)


def test_lars_below_its_batch_warns_up_front(capsys):
    """25.21: the paper probe's LARS at a small batch (lr scaled down with it) says so, naming
    the batch the recipe expects and the `fast` alternative; at that batch, or with AdamW
    (`fast`), it does not."""
    def warnings(*argv):
        args = train_classifier.get_args_parser().parse_args(["--linear_probe", *argv])
        classifier.resolve_recipe(args)
        return [line for line in capsys.readouterr().out.splitlines() if "warning:" in line]

    for batch in ("64", "256"):
        lines = warnings("--recipe", "paper", "--batch_size", batch)
        assert len(lines) == 1 and lines[0].startswith(f"warning: LARS at --batch_size {batch}")
        assert "16384" in lines[0] and "--recipe fast" in lines[0]
    assert warnings("--recipe", "paper") == []  # the recipe's own batch
    assert warnings("--batch_size", "64") == []  # fast: AdamW
    assert warnings("--optimizer", "lars", "--batch_size", "64")  # LARS in any recipe


def test_schedule_ends_at_min_lr():
    lrs = [cosine_lr(s, 100, 10, 1.0, 1e-3) for s in range(101)]
    assert min(lrs[10:]) == pytest.approx(1e-3) and lrs[100] == pytest.approx(1e-3)
    assert lrs[55] == pytest.approx(1e-3 + (1 - 1e-3) / 2)


# --------------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def paper_runs(tmp_path_factory):
    """A `paper` MAE; from it a `paper` probe (augmented: through the frozen encoder every
    step), a `fast` probe with a min_lr (cached features) and a `paper` fine-tuning."""
    tmp_path = tmp_path_factory.mktemp("paper")
    root = ["--output_root", str(tmp_path)]
    mae_path = tmp_path / "main_exp" / "mae-pretrain" / "vit-t-mae.pt"
    probe = ["train_classifier.py", *TINY_DATA, *root, "--pretrained_model_path", mae_path,
             "--linear_probe", "--total_epoch", "2", "--warmup_epoch", "0"]
    results = run_scripts([
        ["mae_pretrain.py", *TINY_DATA, *TINY_MAE, *root, "--recipe", "paper",
         "--total_epoch", "1", "--warmup_epoch", "0", "--max_train_images", "70"],
        [*probe, "--recipe", "paper", "--exp_name", "lars"],
        [*probe, "--min_lr", "0.002", "--exp_name", "minlr"],
        ["train_classifier.py", *TINY_DATA, *root, "--pretrained_model_path", mae_path,
         "--recipe", "paper", "--batch_size", "33", "--max_device_batch_size", "11",
         "--max_train_images", "66", "--total_epoch", "1", "--warmup_epoch", "0"],
    ])
    return dict(tmp=tmp_path, mae_path=mae_path, results=results, probe=probe)


def test_runs_print_and_save_the_resolved_recipe(paper_runs):
    tmp_path, results = paper_runs["tmp"], paper_runs["results"]
    for r in results:
        assert r.returncode == 0, r.stderr[-2000:]
    assert "pretrain recipe 'paper'" in results[0].stdout
    assert "2 steps/epoch" in results[0].stdout  # 70 images, batch 32, drop_last
    saved = json.loads((tmp_path / "main_exp" / "mae-pretrain" / "args.json").read_text())
    assert saved["decay_tokens"] is True and saved["augment"] == "rrc_flip"
    assert "linprobe recipe 'paper'" in results[1].stdout and "mode linprobe; images" in \
        results[1].stdout  # augmented probe: no feature cache
    lars = json.loads((tmp_path / "lars" / "pretrain-cls-lin" / "args.json").read_text())
    assert lars["optimizer"] == "lars" and lars["batch_size"] == 32  # the flag overrides
    rows = (tmp_path / "minlr" / "pretrain-cls-lin" / "metrics.csv").read_text().splitlines()
    peak = 0.1 * 32 / 256
    last_lr = float(rows[-1].split(",")[1])  # the last step: 3 of 4
    assert last_lr == pytest.approx(0.002 + (peak - 0.002) * 0.5 * (1 + math.cos(math.pi * 3 / 4)))
    assert "finetune recipe 'paper'" in results[3].stdout


def test_paper_mae_position_embeddings_reach_classifiers_exactly_and_probes_keep_them(
        paper_runs):
    """The `paper` MAE's fixed sin-cos tensor is where a classifier starts, and a linear probe
    (cached or through the encoder) ends with it bit-identical; fine-tuning may train it, as
    official fine-tuning does."""
    for r in paper_runs["results"]:
        assert r.returncode == 0, r.stderr[-2000:]
    mae = torch.load(paper_runs["mae_path"], weights_only=True)
    assert mae["config"]["pos_embed"] == "sincos"
    pos = mae["model"]["encoder.pos_embed"]  # (1, 1+L, D)
    assert torch.equal(pos[0], sincos_pos_embed(pos.shape[-1], 8))  # 16 px / patch 2
    args = train_classifier.get_args_parser().parse_args(
        [str(a) for a in paper_runs["probe"][1:]])
    classifier.resolve_recipe(args)
    start = classifier.build_model(args, num_classes=10, device="cpu")
    assert start.config.pos_embed == "sincos" and torch.equal(start.pos_embed, pos)
    for exp, stage in (("lars", "pretrain-cls-lin"), ("minlr", "pretrain-cls-lin"),
                       ("main_exp", "pretrain-cls")):
        files = list((paper_runs["tmp"] / exp / stage).glob("vit-t-clf-*.pt"))
        trained = torch.load(files[0], weights_only=True)
        assert trained["config"]["pos_embed"] == "sincos", exp
        if stage.endswith("-lin"):
            assert torch.equal(trained["model"]["pos_embed"], pos), exp
