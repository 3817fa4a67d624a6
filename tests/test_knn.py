"""The kNN monitor: weighted voting by hand, equal numbers under 1 and 2 ranks, the CSV column."""
import csv
import json
import math
import os
import subprocess
from argparse import Namespace
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import TINY_DATA, TINY_MAE, run_script

import mae_pretrain
from mae_cifar.data.datasets import load_dataset
from mae_cifar.evaluation import knn
from mae_cifar.fileio import write_json
from mae_cifar.training.engine import autocast_context
from mae_cifar.training.run_folder import ARGS_FN, RunFolder
from model import MAE_ViT, MAEConfig

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")
DRIVERS = ["mae_pretrain_mask.sh", "ft_mask.sh", "lin_mask.sh"]
TINY = MAEConfig(emb_dim=32, encoder_layer=2, encoder_head=2, decoder_dim=32, decoder_layer=1)
N_TRAIN, N_TEST, BATCH = 37, 11, 8  # odd counts: uneven rank shards, a partial last batch
WORLD = 2

# Six unit vectors in 2-D and their labels; two queries (see test_knn_classify_by_hand).
MEMORY = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0],
                       [0.0, -1.0]])
MEMORY_LABELS = torch.tensor([0, 1, 1, 2, 2, 0])
QUERIES = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
QUERY_LABELS = torch.tensor([0, 2])


def hand_scores(T):
    """k=3. Query (1, 0): similarities 1 (class 0), 0.8 and 0.6 (class 1) are the top three.
    Query (0, 1): 1 (class 2), 0.8 and 0.6 (class 1). Both queries' top similarity is 1: the
    weights exp(s / T) are divided by exp(1 / T)."""
    e = [math.exp((s - 1.0) / T) for s in (1.0, 0.8, 0.6)]
    return torch.tensor([[e[0], e[1] + e[2], 0.0], [0.0, e[1] + e[2], e[0]]])


@pytest.mark.parametrize("T", [0.1, 1.0])
def test_knn_classify_by_hand(T):
    scores = knn.knn_classify(MEMORY, MEMORY_LABELS, QUERIES, 3, k=3, T=T)
    torch.testing.assert_close(scores, hand_scores(T))


def test_temperature_decides_between_one_close_and_two_far_neighbours():
    # T=0.1: e^10 > e^8 + e^6, the nearest neighbour wins; T=1: e^1 < e^0.8 + e^0.6.
    assert knn.knn_accuracy(MEMORY, MEMORY_LABELS, QUERIES, QUERY_LABELS, 3, 3, 0.1) == 1.0
    assert knn.knn_accuracy(MEMORY, MEMORY_LABELS, QUERIES, QUERY_LABELS, 3, 3, 1.0) == 0.0


def test_small_temperature_does_not_overflow():
    # exp(1 / 0.005) is inf in float32: unshifted, classes 1 and 2 of query (0, 1) would tie
    scores = knn.knn_classify(MEMORY, MEMORY_LABELS, QUERIES, 3, k=3, T=0.005)
    assert torch.isfinite(scores).all()
    assert knn.knn_accuracy(MEMORY, MEMORY_LABELS, QUERIES, QUERY_LABELS, 3, 3, 0.005) == 1.0


def test_grid_accuracy_is_knn_accuracy_of_each_cell():
    ks, ts = (1, 2, 3, 6), (0.005, 0.1, 1.0)
    grid = knn.knn_grid_accuracy(MEMORY, MEMORY_LABELS, QUERIES, QUERY_LABELS, 3, ks, ts)
    assert grid.shape == (4, 3)
    for i, k in enumerate(ks):
        for j, t in enumerate(ts):
            assert grid[i, j] == knn.knn_accuracy(MEMORY, MEMORY_LABELS, QUERIES, QUERY_LABELS,
                                                  3, k, t)


def test_chunked_similarity_and_large_k(monkeypatch):
    full = knn.knn_classify(MEMORY, MEMORY_LABELS, QUERIES, 3, k=10, T=0.5)
    torch.testing.assert_close(full.sum(1), torch.exp((MEMORY @ QUERIES.T - 1) / 0.5).sum(0))
    monkeypatch.setattr(knn, "SIM_CHUNK_ELEMENTS", 1)  # one query per chunk
    torch.testing.assert_close(knn.knn_classify(MEMORY, MEMORY_LABELS, QUERIES, 3, 10, 0.5),
                               full)


@pytest.mark.parametrize("n,world", [(37, 2), (3, 4), (8, 4)])
def test_shards_cover_range_in_order(n, world):
    parts = [knn.shard(n, r, world) for r in range(world)]
    assert [i for s, _ in parts for i in range(n)[s]] == list(range(n))
    assert all(len(range(n)[s]) <= per for s, per in parts)


def test_last_value():
    rows = [{"knn_acc": "0.5"}, {"knn_acc": "0.75"}, {"knn_acc": ""}]
    assert knn.last_value(rows, "knn_acc") == 0.75
    assert knn.last_value([{"knn_acc": ""}], "knn_acc") is None


# --------------------------------------------------------------------------- 1 vs 2 ranks
def monitor(rank, world, feature):
    """A KNNMonitor of a fixed, seeded tiny encoder on the first fake images."""
    torch.manual_seed(0)
    model = MAE_ViT.from_config(TINY)
    data = load_dataset("fake", max_train=N_TRAIN, max_eval=N_TEST)
    args = Namespace(knn_freq=1, total_epoch=1, knn_k=5, knn_t=0.07, knn_feature=feature,
                     knn_train_images=N_TRAIN, knn_eval_images=N_TEST,
                     max_device_batch_size=BATCH)
    return knn.KNNMonitor(model, data, args, autocast_context(None, torch.device("cpu")),
                          rank, world)


def monitor_numbers(m):
    """(memory features, query features, accuracy) of a monitor."""
    a = m.args
    common = (a.knn_feature, m.batch_size, m.autocast, m.rank, m.world)
    return (knn.encode(m.model.encoder, m.memory, m.n_train, *common),
            knn.encode(m.model.encoder, m.queries, m.n_test, *common), m.accuracy())


def _rank_worker(rank, store_path, out_dir):
    torch.set_num_threads(1)
    store = dist.FileStore(store_path, WORLD)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=WORLD)
    try:
        numbers = {f: monitor_numbers(monitor(rank, WORLD, f)) for f in knn.TIMM_POOL}
        torch.save(numbers, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_match_one_process(tmp_path):
    """Features and accuracy, cls and mean, are the same on both ranks and in one process."""
    mp.spawn(_rank_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD,
             join=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD)]
    for feature in knn.TIMM_POOL:
        train, test, acc = monitor_numbers(monitor(0, 1, feature))
        assert train.shape == (N_TRAIN, TINY.emb_dim) and test.shape == (N_TEST, TINY.emb_dim)
        torch.testing.assert_close(train.norm(dim=1), torch.ones(N_TRAIN))
        for numbers in ranks:
            r_train, r_test, r_acc = numbers[feature]
            torch.testing.assert_close(r_train, train)
            torch.testing.assert_close(r_test, test)
            assert r_acc == acc


def test_encoder_sees_every_patch():
    """The monitor's features equal the MAE encoder's with mask ratio 0 (cls token), in
    batches of BATCH images and a last one of a single image."""
    m = monitor(0, 1, "cls")
    n = BATCH + 1
    x, _ = m.queries.batch(torch.arange(n))
    latent, mask, _ = m.model.eval().forward_encoder(x, 0.0)
    assert mask.sum() == 0
    feats = knn.encode(m.model.encoder, m.queries, n, "cls", BATCH, m.autocast)
    torch.testing.assert_close(feats, torch.nn.functional.normalize(latent[:, 0], dim=1))


# --------------------------------------------------------------------------- pretraining
def test_pretraining_logs_knn_acc_every_epoch(tmp_path):
    proc = run_script("mae_pretrain.py", *TINY_DATA, *TINY_MAE, "--total_epoch", "2",
                      "--warmup_epoch", "1", "--knn_freq", "1", "--knn_train_images", "50",
                      "--output_root", tmp_path, "--exp_name", "e")
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "e" / "mae-pretrain"
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    accs = [float(r["knn_acc"]) for r in rows]
    assert all(0.0 <= a <= 1.0 for a in accs)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["knn_acc"] == pytest.approx(accs[-1])


@pytest.mark.parametrize("freq,total,due", [(0, 3, []), (2, 5, [1, 3, 4]), (10, 3, [2])])
def test_monitored_epochs(freq, total, due):
    m = Namespace(args=Namespace(knn_freq=freq, total_epoch=total))
    assert [e for e in range(total) if knn.KNNMonitor.due(m, e)] == due


@pytest.mark.parametrize("driver", DRIVERS)
def test_mask_drivers_parse(driver):
    subprocess.run(["bash", "-n", str(REPO / "commands" / driver)], check=True)


def test_knn_flags_do_not_block_a_resume(tmp_path):
    """A run started before (or with other) monitor flags resumes: training is unchanged."""
    args = mae_pretrain.get_args_parser().parse_args(["--knn_freq", "5"])
    saved = {k: v for k, v in vars(args).items() if not k.startswith("knn_")}
    write_json(str(tmp_path / ARGS_FN), saved)
    assert RunFolder(str(tmp_path), args).status() == "new"  # no checkpoint yet, no refusal
