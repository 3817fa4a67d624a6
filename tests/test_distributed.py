"""DistributedDataParallel on the CPU (gloo, two processes), as torchrun runs the stages.

Two spawned ranks check the trainer: gradients equal one process's on the whole batch, only
the last micro-batch all-reduces, ranks stay identical, logged losses average over ranks, a
SIGTERM that one rank receives stops both (mid-epoch and at the epoch end), and a resume
reproduces the uninterrupted run. Then both stage scripts run under torchrun.
"""
import csv
import os
import signal
import socket
import subprocess
import sys
from argparse import Namespace
from dataclasses import asdict
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import REPO, SCRIPT_TIMEOUT_S, TINY_DATA, TINY_MAE, script_env
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from mae_cifar.checkpoint import load_checkpoint
from mae_cifar.data.datasets import Split, load_dataset
from mae_cifar.data.loader import DeviceLoader
from mae_cifar.distributed import DistInfo
from mae_cifar.evaluation.features import evaluate
from mae_cifar.training import engine, objectives
from mae_cifar.training.engine import Checkpointed, Interrupted, Trainer, autocast_context
from mae_cifar.training.recipes import ADAMW_BETAS_PRETRAIN, Optimization
from mae_cifar.training.run_folder import CHECKPOINT_FN, RunFolder
from model import ClassifierConfig, MAE_ViT, MAEConfig, ViT_Classifier, config_from_dict
from utils import seed_everything

pytestmark = pytest.mark.usefixtures("one_thread")
WORLD = 2
CPU = torch.device("cpu")
TINY = MAEConfig(emb_dim=32, encoder_layer=2, encoder_head=2, decoder_dim=32, decoder_layer=1)
N_IMAGES, BATCH = 80, 16  # 5 steps per epoch, 8 images per rank and step
NUM_PATCHES = (TINY.image_size // TINY.patch_size) ** 2
MICRO = 3  # max_device_batch_size: a rank's 8 images run as micro-batches of 3, 3 and 2
EPOCHS = 2
SEED = 7
MEAN, STD = torch.full((3,), 0.5), torch.full((3,), 0.25)
SIGTERM_CALL = 4  # rank 1 receives SIGTERM in its 4th micro-batch: during step 1
STOP_INTERVAL = 2  # LOG_INTERVAL of the mid-epoch stop: ranks agree after step 1
EVAL_IMAGES = 101  # odd: the two ranks evaluate 51 and 50 test images


# --------------------------------------------------------------------------- loader shards
@pytest.mark.parametrize("n,batch,world", [(64, 32, 2), (101, 32, 2), (50, 12, 3)])
def test_loader_shards_are_equal_disjoint_and_cover_the_epoch(n, batch, world):
    split = Split(torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.arange(n))  # label = index
    loaders = [DeviceLoader(split, batch, MEAN[:1], STD[:1], seed=SEED, rank=r, world=world)
               for r in range(world)]
    assert n - world < loaders[0].num_images <= n
    for epoch in range(2):
        steps = zip(*(loader.epoch(epoch) for loader in loaders))
        shards = [[y for _, y in step] for step in steps]
        assert len(shards) == len(loaders[0])
        assert all(len({len(y) for y in step}) == 1 for step in shards)  # DDP weighs ranks 1:1
        seen = torch.cat([torch.cat(step) for step in shards])  # rank shards in rank order
        assert torch.equal(seen, loaders[0].order(epoch)[:loaders[0].num_images])


# --------------------------------------------------------------------------- two ranks
def images():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (N_IMAGES, 3, 32, 32), generator=g, dtype=torch.uint8)
    return Split(x, torch.arange(N_IMAGES))  # label = index: picks each image's fixed mask


def fixed_mask_step(model, x, y):
    """The MAE loss with a mask fixed per image, so ranks and one process draw the same."""
    noise = torch.rand(N_IMAGES, NUM_PATCHES, generator=torch.Generator().manual_seed(1))
    loss, _, _ = model(x, noise=noise[y])
    return loss, {}


def make_trainer(rank, step_fn, run=None, augment="flip"):
    """A rank's Trainer of the tiny MAE as mae_pretrain.py sets it up, 2 epochs of 5 steps."""
    torch.manual_seed(0)
    model = MAE_ViT.from_config(TINY)
    seed_everything(SEED + rank)  # ranks draw their own masks and flips
    loader = DeviceLoader(images(), BATCH, MEAN, STD, augment, seed=SEED, rank=rank,
                          world=WORLD)
    args = Namespace(compile=False, amp="off", base_learning_rate=1e-3, batch_size=BATCH,
                     max_device_batch_size=MICRO, weight_decay=0.05, total_epoch=EPOCHS,
                     warmup_epoch=1, save_freq=1, progress_seconds=0)
    return Trainer(args, DistInfo(rank, WORLD, 0, CPU), model, loader, step_fn, run,
                   Checkpointed("mae", asdict(TINY)), Optimization(betas=ADAMW_BETAS_PRETRAIN))


def gradient_step(rank):
    """(gradients of one DDP optimizer step on this rank's shard of the first batch, in
    micro-batches of 3, 3 and 2; indices of the gradient buckets DDP all-reduced during it).
    The optimizer's update is skipped."""
    trainer = make_trainer(rank, fixed_mask_step, augment="none")
    grads, buckets = {}, []

    def record_grads(*args, **kwargs):
        grads.update({n: p.grad.clone() for n, p in trainer.module.named_parameters()})

    def counting_allreduce(state, bucket):
        buckets.append(bucket.index())
        return default_hooks.allreduce_hook(None, bucket)

    trainer.optimizer.step = record_grads
    trainer.model.register_comm_hook(None, counting_allreduce)
    x, y = next(trainer.loader.epoch(0))
    trainer._optimizer_step(x, y, {"loss": torch.zeros(()), "n": torch.zeros(())})
    return grads, buckets


class Recorder:
    """step_fn of mae_pretrain.py that notes this rank's loss x images per epoch and can
    SIGTERM its own process at a given micro-batch; epoch_end keeps the trainer's stats."""

    def __init__(self, sigterm_call=None):
        self.calls, self.sigterm_call = 0, sigterm_call
        self.local, self.losses = [[0.0, 0]], []

    def step(self, model, x, y):
        self.calls += 1
        if self.calls == self.sigterm_call:
            os.kill(os.getpid(), signal.SIGTERM)
        loss, sums = objectives.pretrain_step(model, x, y)
        self.local[-1][0] += loss.item() * x.shape[0]
        self.local[-1][1] += x.shape[0]
        return loss, sums

    def epoch_end(self, epoch, stats):
        self.losses.append(stats["loss"])
        self.local.append([0.0, 0])


def fit(rank, folder, sigterm_call=None, resume=False):
    """Train in folder; -> (Recorder, flat parameters, signal that stopped it or 0, ckpt)."""
    run = RunFolder(folder, Namespace(), rank == 0)
    run.open(fresh=not resume)  # barriers: rank 0 finished writing any earlier checkpoint
    rec = Recorder(sigterm_call if rank == 1 else None)  # only rank 1 is signalled
    trainer = make_trainer(rank, rec.step, run)
    ckpt = trainer.resume() if resume else None
    stopped = 0
    try:
        trainer.fit(rec.epoch_end)
    except Interrupted as e:
        stopped = e.signum
    run.release()
    params = torch.cat([p.detach().flatten() for p in trainer.module.parameters()])
    return rec, params, stopped, ckpt


def _rank_worker(rank, tmp):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(os.path.join(tmp, "store"), WORLD),
                           rank=rank, world_size=WORLD, timeout=timedelta(seconds=60))
    try:
        grads, buckets = gradient_step(rank)
        whole = fit(rank, os.path.join(tmp, "whole"))
        at_end = fit(rank, os.path.join(tmp, "at_end"), SIGTERM_CALL)  # LOG_INTERVAL > 5 steps
        engine.LOG_INTERVAL = STOP_INTERVAL
        mid = fit(rank, os.path.join(tmp, "mid"), SIGTERM_CALL)
        resumed = fit(rank, os.path.join(tmp, "mid"), resume=True)
        out = {"grads": grads, "buckets": buckets, "params": whole[1],
               "losses": whole[0].losses, "local": whole[0].local[:EPOCHS],
               "resumed_params": resumed[1], "resumed_losses": resumed[0].losses,
               "at_end": (at_end[2], len(at_end[0].losses)), "mid": (mid[2], mid[0].losses),
               "resumed_from": (resumed[3]["epoch"], resumed[3]["step"],
                                len(resumed[3]["rng"]))}
        torch.save(out, os.path.join(tmp, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    mp.spawn(_rank_worker, args=(str(tmp),), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)], tmp


def whole_batch_gradients():
    """Gradients of one plain backward of the tiny MAE on the whole first batch."""
    torch.manual_seed(0)
    model = MAE_ViT.from_config(TINY)
    x, y = next(DeviceLoader(images(), BATCH, MEAN, STD, seed=SEED).epoch(0))  # (16, ...)
    fixed_mask_step(model, x, y)[0].backward()
    return {n: p.grad for n, p in model.named_parameters()}


def test_ddp_gradients_equal_one_process_on_the_whole_batch(ranks):
    one = whole_batch_gradients()
    for r in ranks[0]:
        assert r["grads"].keys() == one.keys()
        for name, g in one.items():
            torch.testing.assert_close(r["grads"][name], g, rtol=1e-5, atol=1e-7, msg=name)


def test_only_the_last_micro_batch_all_reduces(ranks):
    for r in ranks[0]:
        assert r["buckets"] and sorted(r["buckets"]) == list(range(len(r["buckets"])))


def test_ranks_stay_identical_and_log_the_mean_loss_of_all_ranks(ranks):
    r0, r1 = ranks[0]
    assert torch.equal(r0["params"], r1["params"])
    assert r0["losses"] == r1["losses"] and len(r0["losses"]) == EPOCHS
    for epoch, loss in enumerate(r0["losses"]):
        (s0, n0), (s1, n1) = r0["local"][epoch], r1["local"][epoch]
        assert n0 + n1 == N_IMAGES
        assert loss == pytest.approx((s0 + s1) / N_IMAGES, rel=1e-5)
        assert s0 / n0 != pytest.approx(s1 / n1, rel=1e-5)  # other images and masks


def test_sigterm_on_one_rank_stops_both(ranks):
    r0, r1 = ranks[0]
    # LOG_INTERVAL longer than the epoch: both stop after finishing epoch 0
    assert r0["at_end"] == r1["at_end"] == (signal.SIGTERM, 1)
    # LOG_INTERVAL 2: both stop after step 1 of epoch 0, before any epoch ends
    assert r0["mid"] == r1["mid"] == (signal.SIGTERM, [])
    assert r0["resumed_from"] == r1["resumed_from"] == (0, STOP_INTERVAL, WORLD)
    at_end = load_checkpoint(ranks[1] / "at_end" / CHECKPOINT_FN, kind="mae")
    assert (at_end["epoch"], at_end["step"]) == (1, 0)


def test_resume_under_ddp_reproduces_the_uninterrupted_run(ranks):
    for r in ranks[0]:
        assert torch.equal(r["resumed_params"], r["params"])  # each rank's masks and flips
        assert r["resumed_losses"] == pytest.approx(r["losses"], rel=1e-6)  # all ranks' sums


# --------------------------------------------------------------------------- torchrun
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(rendezvous, script, *args):
    cmd = [sys.executable, "-m", "torch.distributed.run", *rendezvous,
           f"--nproc_per_node={WORLD}", script, *map(str, args)]
    proc = subprocess.run(cmd, cwd=REPO, env=script_env(), capture_output=True, text=True,
                          timeout=SCRIPT_TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count(f"epoch 0/{EPOCHS}:") == 1  # rank 0 alone prints
    return proc


def read_rows(folder):
    with open(folder / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def check_outputs(folder):
    """One checkpoint, one CSV row per epoch, one TensorBoard writer, nothing left over."""
    names = os.listdir(folder)
    assert names.count(CHECKPOINT_FN) == 1 and "summary.json" in names
    assert not [n for n in names if n.startswith((".tmp-", ".lock"))]
    assert [int(r["epoch"]) for r in read_rows(folder)] == list(range(EPOCHS))
    assert len(os.listdir(folder / "tensorboard")) == 1
    ckpt = load_checkpoint(folder / CHECKPOINT_FN)
    assert (ckpt["epoch"], len(ckpt["rng"])) == (EPOCHS, WORLD)  # every rank's RNG state


def test_both_stages_under_torchrun(tmp_path):
    epochs = ["--total_epoch", EPOCHS, "--warmup_epoch", 1, "--output_root", tmp_path,
              "--exp_name", "e"]
    torchrun(["--standalone"], "mae_pretrain.py", *TINY_DATA, *TINY_MAE, *epochs)
    mae = tmp_path / "e" / "mae-pretrain"
    check_outputs(mae)
    assert os.listdir(mae / "images") == [f"epoch_{EPOCHS - 1:04d}"]

    multi_node = ["--nnodes=1", "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{free_port()}"]
    torchrun(multi_node, "train_classifier.py", *TINY_DATA, "--max_eval_images", EVAL_IMAGES,
             "--pretrained_model_path", mae / "vit-t-mae.pt", *epochs)
    cls = tmp_path / "e" / "pretrain-cls"
    check_outputs(cls)
    correct = float(read_rows(cls)[-1]["test_acc"]) * EVAL_IMAGES
    assert correct == pytest.approx(round(correct), abs=1e-3)  # a count of all 101 images

    saved = load_checkpoint(cls / "vit-t-clf-from_pretrained.pt", kind="classifier")
    cfg = config_from_dict(ClassifierConfig, saved["config"])
    model = ViT_Classifier(cfg)
    model.load_state_dict(saved["model"])
    test = load_dataset("fake", image_size=cfg.image_size, max_eval=EVAL_IMAGES).test
    _, acc = evaluate(model, test, 64, (saved["norm_mean"], saved["norm_std"]),
                      autocast_context(None, CPU), DistInfo(0, 1, 0, CPU))
    assert round(correct) == round(acc * EVAL_IMAGES)
