"""baselines.py: every grid cell is recorded, the choice is the validation argmax, the test
split is evaluated once for the chosen cell, PCA and standardisation use the training part
only, a (nearly) constant feature stays bounded, and bad encoders or flags are refused before
anything is written. (The end-to-end runs of every stage: test_study.py.)"""
import json
import math
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_DATA, run_scripts

import baselines
import train_classifier
from mae_cifar.checkpoint import CHECKPOINT_FORMAT, UsageError, save_checkpoint
from mae_cifar.evaluation import probe
from mae_cifar.training import classifier
from mae_cifar.training.optim import cosine_lr
from model import MAE_ViT, MAEConfig
from utils import seed_everything

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = MAEConfig(image_size=16, emb_dim=32, encoder_layer=2, encoder_head=2, decoder_dim=32,
                 decoder_layer=1)
N_CLASSES, DIM = 3, 5


def blobs(n, seed, spread=1.0):
    """(features (n, DIM), labels (n,)): N_CLASSES Gaussian blobs, the last feature constant."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % N_CLASSES
    centres = torch.eye(N_CLASSES, DIM) * 3
    x = centres[y] + spread * torch.randn(n, DIM, generator=g)
    x[:, -1] = 7.0
    return x, y


def split_feats(seed=0):
    return {"train": blobs(60, seed), "val": blobs(30, seed + 1), "test": blobs(25, seed + 2)}


def grid_args(**over):
    values = dict(probe_lrs=[1e-3, 1e-1], probe_weight_decays=[0.0, 1e-2, 10.0], total_epoch=4,
                  warmup_epoch=1, batch_size=16, seed=0, knn_ks=[1, 5, 20],
                  knn_ts=[0.05, 1.0])
    return type("Args", (), {**values, **over})


# ----------------------------------------------------------------------------- linear probe
def test_probe_grid_records_every_cell_and_chooses_the_validation_argmax():
    feats = split_feats()
    a = grid_args()
    rows, curves, (w, b) = probe.probe_grid(
        feats["train"], feats["val"], N_CLASSES, a.probe_lrs, a.probe_weight_decays,
        a.total_epoch, a.warmup_epoch, a.batch_size, a.seed)
    assert [(r["lr"], r["weight_decay"]) for r in rows] == [
        (lr, wd) for lr in a.probe_lrs for wd in a.probe_weight_decays]
    accs = [r["val_acc"] for r in rows]
    assert len(set(accs)) > 1  # the grid matters
    i = probe.choose(rows)
    assert accs[i] == max(accs) and i == accs.index(max(accs))  # first on a tie
    assert w.shape == (len(rows), DIM, N_CLASSES) and curves["val_acc"].shape == (4, len(rows))
    for r, column in zip(rows, curves["val_acc"].T):  # each cell kept at its best epoch
        assert r["val_acc"] == pytest.approx(column.max().item())
        assert r["best_epoch"] == int(column.argmax())


def test_test_split_is_evaluated_once_for_the_chosen_cell(monkeypatch):
    feats = split_feats()
    calls = []
    real = probe.cell_losses

    def spy(w, b, x, y):
        calls.append((len(w), x.shape[0]))
        return real(w, b, x, y)

    monkeypatch.setattr(probe, "cell_losses", spy)
    summary, metrics = probe.run_linear(grid_args(), feats, N_CLASSES)
    n_test = len(feats["test"][1])
    assert calls[-1] == (1, n_test)  # one head, on the test images, after the sweep
    assert all(n != n_test for _, n in calls[:-1])  # train batches (16, 12) and val (30)
    assert len(summary["grid"]) == 6 and all("test" not in k for r in summary["grid"] for k in r)
    best = summary["grid"][probe.choose(summary["grid"])]
    assert summary["chosen"] == {"lr": best["lr"], "weight_decay": best["weight_decay"],
                                 "epoch": best["best_epoch"]}
    assert [m["epoch"] for m in metrics] == [0, 1, 2, 3]
    assert 0 <= summary["test_acc"] <= 1


def test_standardisation_floors_a_nearly_constant_feature():
    train, _ = blobs(60, 0)
    train[::7, -1] += 1e-4  # nearly constant in training: std ~4e-5
    mean, std = probe.fit_standardiser(train)
    assert std.min() >= probe.STD_FLOOR * train.std(0).mean() * (1 - 1e-6)
    test = torch.full((1, DIM), 255.0)  # the rare image with ink in a border pixel
    z = (test - mean) / std
    assert torch.isfinite(z).all()
    bound = (test - mean).abs().max() / (probe.STD_FLOOR * train.std(0).mean())
    assert z.abs().max() <= bound * (1 + 1e-6)
    zt = (train - mean) / std
    assert zt[:, -1].abs().max() < 1e-2  # the constant feature is (nearly) 0 in training


def test_standardisation_of_all_constant_features_is_finite():
    train = torch.ones(10, DIM)
    mean, std = probe.fit_standardiser(train)
    assert torch.equal(std, torch.ones(DIM)) and torch.isfinite((train + 1 - mean) / std).all()


def reference_head(train, val, lr, wd, a):
    """One head trained the plain way: nn.Linear from zeros, Adam with L2 weight decay on
    the weight only, warmup + cosine per step, the probe's batch order. -> per epoch
    (train loss, train acc, val loss, val acc, W (D, C), b (C,))."""
    (x, y), (xv, yv) = train, val
    head = torch.nn.Linear(x.shape[1], N_CLASSES)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    opt = torch.optim.Adam([{"params": [head.weight], "weight_decay": wd},
                            {"params": [head.bias]}], betas=probe.PROBE_BETAS)
    steps, gen, out = math.ceil(len(y) / a.batch_size), torch.Generator().manual_seed(a.seed), []
    for epoch in range(a.total_epoch):
        loss_sum, correct = 0.0, 0
        for i, idx in enumerate(torch.randperm(len(y), generator=gen).split(a.batch_size)):
            for group in opt.param_groups:
                group["lr"] = cosine_lr(epoch * steps + i, a.total_epoch * steps,
                                        a.warmup_epoch * steps, lr)
            logits = head(x[idx])
            loss = F.cross_entropy(logits, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(1) == y[idx]).sum().item()
        with torch.no_grad():
            logits = head(xv)
            out.append((loss_sum / len(y), correct / len(y), F.cross_entropy(logits, yv).item(),
                        (logits.argmax(1) == yv).float().mean().item(), head.weight.T.clone(),
                        head.bias.clone()))
    return out


def test_each_cell_trains_as_plain_logistic_regression_with_adam():
    """Every cell's curves, and its head at its best epoch, are those of one head trained
    alone: the grid's shared batches, stacked heads and loss sums change nothing."""
    feats, a = split_feats(), grid_args(probe_lrs=[1e-2, 1e-1], probe_weight_decays=[0.0, 1e-2])
    rows, curves, (w, b) = probe.probe_grid(
        feats["train"], feats["val"], N_CLASSES, a.probe_lrs, a.probe_weight_decays,
        a.total_epoch, a.warmup_epoch, a.batch_size, a.seed)
    close = {"rel": 1e-4, "abs": 1e-5}
    for cell, row in enumerate(rows):
        ref = reference_head(feats["train"], feats["val"], row["lr"], row["weight_decay"], a)
        for column, values in zip(probe.LIN_FIELDS[2:], zip(*ref)):
            assert curves[column][:, cell].tolist() == pytest.approx(values, **close), column
        best = ref[row["best_epoch"]]
        assert w[cell].flatten().tolist() == pytest.approx(best[4].flatten().tolist(), **close)
        assert b[cell].tolist() == pytest.approx(best[5].tolist(), **close)


def test_a_cell_never_right_on_validation_keeps_its_first_epoch_head():
    """Validation labels every head gets wrong: accuracy 0 at every epoch, and the cell
    keeps the head of epoch 0, not its untrained zeros."""
    x = torch.tensor([[1.0], [-1.0]]).repeat(8, 1)
    y = torch.tensor([0, 1]).repeat(8)
    rows, _, (w, _) = probe.probe_grid((x, y), (x, 1 - y), 2, [1e-1], [0.0], 3, 0, 4, 0)
    assert (rows[0]["val_acc"], rows[0]["best_epoch"]) == (0.0, 0)
    assert w[0].abs().sum() > 0


def test_linear_probe_sees_features_standardised_on_the_training_part():
    """Scaling and shifting the raw features changes nothing; the validation labels choose
    the cell but never change what the heads learn."""
    feats, a = split_feats(), grid_args()
    summary, metrics = probe.run_linear(a, feats, N_CLASSES)
    moved = {k: (x * 10 + 5, y) for k, (x, y) in feats.items()}
    moved_summary, moved_metrics = probe.run_linear(a, moved, N_CLASSES)
    assert [r["val_acc"] for r in moved_summary["grid"]] == [r["val_acc"] for r in summary["grid"]]
    for m, mm in zip(metrics, moved_metrics):
        assert mm["train_loss"] == pytest.approx(m["train_loss"], rel=1e-4)
    one_cell = grid_args(probe_lrs=[1e-1], probe_weight_decays=[0.0])
    shuffled = torch.randperm(len(feats["val"][1]), generator=torch.Generator().manual_seed(0))
    relabelled = {**feats, "val": (feats["val"][0], feats["val"][1][shuffled])}
    assert [m["train_loss"] for m in probe.run_linear(one_cell, relabelled, N_CLASSES)[1]] == \
        [m["train_loss"] for m in probe.run_linear(one_cell, feats, N_CLASSES)[1]]


def test_linear_probe_logs_the_chosen_lr_at_each_epoch_s_last_step():
    a = grid_args()  # 60 training images in batches of 16: 4 steps per epoch, 1 of warmup
    summary, metrics = probe.run_linear(a, split_feats(), N_CLASSES)
    lr = summary["chosen"]["lr"]
    assert [m["lr"] for m in metrics] == [cosine_lr(s, 16, 4, lr) for s in (3, 7, 11, 15)]


# ----------------------------------------------------------------------------- PCA
def test_pca_is_fitted_on_the_training_features_only():
    feats = split_feats()
    projected, (mean, comps) = baselines.transform(feats, 2)
    changed = {**feats, "test": (feats["test"][0] * 5 + 3, feats["test"][1])}
    projected2, (mean2, comps2) = baselines.transform(changed, 2)
    assert torch.equal(mean, mean2) and torch.equal(comps, comps2)
    assert torch.equal(projected["val"][0], projected2["val"][0])
    assert projected["train"][0].shape == (60, 2)
    torch.testing.assert_close(comps.T @ comps, torch.eye(2))  # orthonormal components
    # the first component carries the most training variance
    var = projected["train"][0].var(0)
    assert var[0] >= var[1]
    with pytest.raises(UsageError, match="needs more than 60 training images, got 60"):
        baselines.check_pca_dim(60, DIM * 100, n_train=60)


# ----------------------------------------------------------------------------- kNN
def test_knn_k_and_temperature_are_chosen_on_validation():
    feats = split_feats()
    summary, metrics = probe.run_knn(grid_args(), feats, N_CLASSES)
    grid = summary["grid"]
    assert [(r["k"], r["T"]) for r in grid] == [(k, t) for k in (1, 5, 20) for t in (0.05, 1.0)]
    best = grid[probe.choose(grid)]
    assert summary["chosen"] == {"k": best["k"], "T": best["T"]}
    assert metrics == [{"epoch": 0, "val_acc": best["val_acc"], "test_acc": summary["test_acc"]}]
    assert (summary["epochs"], summary["best_epoch"], summary["memory_images"]) == (0, 0, 60)
    # cosine similarity: each image's features may be scaled by any positive factor
    scale = torch.arange(1.0, 61.0)[:, None]
    rescaled = {**feats, "train": (feats["train"][0] * scale, feats["train"][1])}
    assert probe.run_knn(grid_args(), rescaled, N_CLASSES)[0] == summary


def test_knn_grid_follows_the_validation_split():
    """Validation queries that sit on single training points: k=1 wins; far from any:
    a wider vote wins. The choice follows whichever split is the validation split."""
    memory = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7], [0.72, 0.69], [0.69, 0.72]])
    labels = torch.tensor([0, 1, 2, 1, 1])
    memory = torch.nn.functional.normalize(memory, dim=1)
    near = (memory[2:3], torch.tensor([2]))  # exactly the lone class-2 point
    feats = {"train": (memory, labels), "val": near, "test": near}
    summary, _ = probe.run_knn(grid_args(knn_ks=[1, 3], knn_ts=[1.0]), feats, 3)
    assert summary["chosen"]["k"] == 1 and summary["test_acc"] == 1.0
    feats["val"] = (memory[2:3], torch.tensor([1]))  # its neighbours' majority
    summary, _ = probe.run_knn(grid_args(knn_ks=[1, 3], knn_ts=[1.0]), feats, 3)
    assert summary["chosen"]["k"] == 3 and summary["test_acc"] == 0.0


# ----------------------------------------------------------------------------- refusals
def mae_file(path, poison=None):
    torch.manual_seed(0)
    model = MAE_ViT.from_config(TINY)
    state = model.state_dict()
    if poison is not None:
        state["encoder.blocks.0.attn.qkv.weight"][0, 0] = poison
    save_checkpoint({"format": CHECKPOINT_FORMAT, "kind": "mae", "config": asdict(TINY),
                     "model": state}, path)
    return path


def test_non_finite_encoder_and_bad_flags_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "out"
    base = ["baselines.py", *TINY_DATA, "--output_root", out, "--val_split", "16"]
    nan, inf = mae_file(tmp_path / "nan.pt", float("nan")), mae_file(tmp_path / "inf.pt",
                                                                      float("inf"))
    bad = [
        [*base, "--pretrained_model_path", nan],
        [*base, "--pretrained_model_path", inf, "--method", "knn"],
        [*base[:-2]],  # no --val_split
        [*base, "--pca_dim", "768"],  # 3 x 16 x 16 pixels
        [*base, "--pca_dim", "64"],  # the 64 training images
        [*base, "--probe_lrs", "0.1", "0.1"],
        [*base, "--probe_weight_decays", "-1"],
        [*base, "--warmup_epoch", "9", "--total_epoch", "2"],
        [*base, "--exp_name", "a/b"],
        [*base, "--features", "random", "--pretrained_model_path", nan],
        [*base, "--emb_dim", "32"],  # pixels: the architecture is --features random's
        [*base, "--pretrained_model_path", nan, "--encoder_layer", "2"],
        [*base, "--features", "random", "--emb_dim", "30", "--encoder_head", "4"],
    ]
    procs = run_scripts(bad)
    for argv, p in zip(bad, procs):
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), \
            (argv, p.stderr[-800:])
    for p, path in zip(procs, (nan, inf)):
        assert str(path) in p.stderr and "NaN or infinite" in p.stderr
    assert not out.exists()


def test_non_finite_features_refused():
    with pytest.raises(UsageError, match="the val features holds NaN or Inf"):
        baselines.check_finite({"the val features": torch.tensor([[1.0, float("nan")]])},
                               "enc.pt")
    baselines.check_finite({"labels": torch.tensor([1, 2])}, "enc.pt")  # integers: fine


def test_pca_run_records_its_width_and_grid(tmp_path):
    common = ["baselines.py", *TINY_DATA, "--output_root", tmp_path, "--val_split", "16",
              "--pca_dim", "8", "--probe_lrs", "0.01", "0.1", "--probe_weight_decays", "0",
              "1e-3", "--total_epoch", "2", "--warmup_epoch", "0"]
    procs = run_scripts([common, [*common, "--method", "knn", "--knn_ks", "1", "5"]])
    assert [p.returncode for p in procs] == [0, 0], [p.stderr[-800:] for p in procs]
    knn_cells = 2 * len(probe.KNN_TS)  # --knn_ks 1 5 x the default temperatures
    for stage, cells in (("pixels-pca8-lin", 4), ("pixels-pca8-knn", knn_cells)):
        summary = json.loads((tmp_path / "main_exp" / stage / "summary.json").read_text())
        assert summary["feature_dim"] == 8 and len(summary["grid"]) == cells
        assert summary["selection_split"] == "val"
        assert summary["best_val_acc"] == max(r["val_acc"] for r in summary["grid"])
        assert summary["final_test_acc"] == summary["test_acc_at_best"]
        images = summary["images"]
        assert [images[k]["count"] for k in ("train", "val", "test")] == [64, 16, 32]
    knn_summary = json.loads((tmp_path / "main_exp" / "pixels-pca8-knn" / "summary.json")
                             .read_text())
    assert knn_summary["chosen_on_grid_edge"][0] == "knn_ks"  # a two-value grid: an end
    assert "note: the chosen value is at an end of --knn_ks" in procs[1].stdout


# ----------------------------------------------------------------------------- random encoder
RANDOM_ARCH = ["--patch_size", "4", "--emb_dim", "32", "--encoder_layer", "2",
               "--encoder_head", "2", "--pos_embed", "sincos"]


def random_features(seed, x):
    """baselines.py's --features random encoder of --seed `seed`, as main() builds it, on x."""
    args = baselines.get_args_parser().parse_args(
        [*TINY_DATA, "--val_split", "16", "--features", "random", *RANDOM_ARCH,
         "--seed", str(seed)])
    baselines.validate(args)
    seed_everything(args.seed)
    encoder = baselines.random_encoder(args, num_classes=10)
    cfg = baselines.FeatureConfig("random", baselines.LAST_BLOCK, "cls", encoder.embed_dim)
    return encoder, baselines.FrozenFeatures(cfg, encoder).features(x)


def test_random_encoder_features_follow_the_seed():
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    _, a = random_features(1, x)
    _, again = random_features(1, x)
    _, b = random_features(2, x)
    assert a.shape == (4, 32) and torch.isfinite(a).all()
    assert torch.equal(a, again)
    assert not torch.allclose(a, b)


def test_random_encoder_is_the_scratch_classifiers_initial_encoder():
    encoder, _ = random_features(7, torch.zeros(1, 3, 16, 16))
    args = train_classifier.get_args_parser().parse_args(
        [*TINY_DATA, *RANDOM_ARCH, "--seed", "7"])
    classifier.resolve_recipe(args)
    seed_everything(args.seed)  # as train_classifier.main() does before build_model
    scratch = classifier.build_model(args, num_classes=10, device="cpu")
    want = scratch.encoder_state_dict()
    got = encoder.state_dict()
    assert set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_random_run_records_its_architecture(tmp_path):
    common = ["baselines.py", *TINY_DATA, "--output_root", tmp_path, "--val_split", "16",
              "--features", "random", *RANDOM_ARCH]
    procs = run_scripts([
        [*common, "--method", "knn", "--knn_ks", "1", "5", "--knn_ts", "0.1"],
        [*common, "--probe_lrs", "0.01", "--probe_weight_decays", "0", "--total_epoch", "1",
         "--warmup_epoch", "0"]])
    assert [p.returncode for p in procs] == [0, 0], [p.stderr[-800:] for p in procs]
    for stage in ("random-knn", "random-lin"):
        summary = json.loads((tmp_path / "main_exp" / stage / "summary.json").read_text())
        assert summary["architecture"] == {
            "image_size": 16, "patch_size": 4, "in_chans": 3, "emb_dim": 32,
            "encoder_layer": 2, "encoder_head": 2, "pos_embed": "sincos", "pool": "cls",
            "block": -1}
        assert summary["feature_dim"] == 32 and summary["pretrained_sha256"] is None


# ----------------------------------------------------------------------------- stop signals
def test_sigint_during_the_sweep_stops_it_and_records_nothing(tmp_path, monkeypatch, capsys):
    """Issue 35: a SIGINT while the probe trains stops baselines.py with exit 130 and no
    summary.json, even where an earlier run in the process (a stage's Trainer) left its
    handler behind; the handlers before the stage are restored after it."""
    import os
    import signal
    def stale(signum, frame):  # what a Trainer left installed
        pass
    previous = signal.signal(signal.SIGINT, stale)
    losses = probe.cell_losses

    def interrupted(*a):
        os.kill(os.getpid(), signal.SIGINT)
        return losses(*a)
    monkeypatch.setattr(probe, "cell_losses", interrupted)
    args = baselines.get_args_parser().parse_args([
        *TINY_DATA, "--val_split", "16", "--total_epoch", "2", "--warmup_epoch", "0",
        "--probe_lrs", "0.1", "--probe_weight_decays", "0", "--output_root", str(tmp_path)])
    try:
        with pytest.raises(SystemExit) as e:
            baselines.main(args)
        assert e.value.code == 130
        assert signal.getsignal(signal.SIGINT) is stale
        assert capsys.readouterr().err.strip().splitlines() == [
            "stopped by SIGINT: nothing saved by this attempt: run the same command again"]
    finally:
        signal.signal(signal.SIGINT, previous)
    assert not (tmp_path / "main_exp" / "pixels-lin" / "summary.json").exists()


# ----------------------------------------------------------------------------- diverged probes
HUGE_LR = 3e37  # Adam's first step moves every weight by ~10 lr: the logits overflow


def test_diverged_cells_are_recorded_and_never_chosen():
    feats = split_feats()
    rows, _, _ = probe.probe_grid(feats["train"], feats["val"], N_CLASSES, [1e-1, HUGE_LR],
                                  [0.0], 4, 0, 16, 0)
    assert [r["diverged"] for r in rows] == [False, True]
    assert probe.choose(rows) == 0
    with pytest.raises(probe.Diverged):
        probe.choose(rows[1:])


def test_probe_whose_loss_went_non_finite_exits_3_and_records_nothing(tmp_path, capsys):
    """Issue 35: as train_classifier.py does, exit 3 and one error line, no summary.json."""
    args = baselines.get_args_parser().parse_args([
        *TINY_DATA, "--val_split", "16", "--total_epoch", "2", "--warmup_epoch", "0",
        "--probe_lrs", str(HUGE_LR), "--probe_weight_decays", "0", "--output_root",
        str(tmp_path)])
    with pytest.raises(SystemExit) as e:
        baselines.main(args)
    assert e.value.code == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the linear probe's training loss")
    assert "--probe_lrs" in err[0]
    assert not (tmp_path / "main_exp" / "pixels-lin" / "summary.json").exists()


def test_architecture_flag_the_encoder_does_not_have_is_refused(tmp_path):
    """Issue 35: --encoder_head 4 with an MAE of 2 heads was recorded in args.json while the
    encoder used 2; refused as train_classifier.py refuses it, before anything is written."""
    args = baselines.get_args_parser().parse_args([
        *TINY_DATA, "--val_split", "16", "--pretrained_model_path",
        str(mae_file(tmp_path / "m.pt")), "--encoder_head", "4", "--output_root",
        str(tmp_path / "out")])
    with pytest.raises(UsageError, match=r"--encoder_head 4 \(the checkpoint has 2\)"):
        baselines.main(args)
    assert not (tmp_path / "out" / "main_exp" / "mae-lin" / "summary.json").exists()


# ----------------------------------------------------------------------------- overlap
def mae_file_of_run(path, val_split):
    """A model file as mae_pretrain.py writes it, recording the flags (those that say which
    images it trained on) of a run on every fake training image but --val_split val_split."""
    torch.manual_seed(0)
    args = {"dataset": "fake", "val_split": val_split, "max_train_images": None}
    save_checkpoint({"format": CHECKPOINT_FORMAT, "kind": "mae", "config": asdict(TINY),
                     "model": MAE_ViT.from_config(TINY).state_dict(), "args": args}, path)
    return path


@pytest.mark.parametrize("mae_val_split,seen", [(0, 16), (16, 0)])
def test_validation_images_the_mae_was_pretrained_on_are_recorded(tmp_path, capsys,
                                                                   mae_val_split, seen):
    """Issue 35: an MAE pretrained without the classifier's --val_split saw its validation
    images (the choices then favour it); the count is said and recorded in summary.json."""
    args = baselines.get_args_parser().parse_args([
        *TINY_DATA, "--val_split", "16", "--pretrained_model_path",
        str(mae_file_of_run(tmp_path / "m.pt", mae_val_split)), "--method", "knn",
        "--output_root", str(tmp_path)])
    baselines.main(args)
    summary = json.loads((tmp_path / "main_exp" / "mae-knn" / "summary.json").read_text())
    assert summary["val_images_in_pretraining"] == seen
    out = capsys.readouterr().out
    assert (f"warning: {seen} of the 16 validation images were in the MAE's pretraining "
            "images" in out) == bool(seen)
