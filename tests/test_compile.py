"""--compile with the real backend: inductor (C++ on the CPU) trains as eager does.

For the MAE step and the classifier step, one compiled model and one eager copy train side by
side through engine.Trainer: the gradients of a step (accumulated over micro-batches), the
per-epoch losses and the final weights agree, and the compiled model is compiled ONCE although
its micro-batches come in several sizes (tensor_split of 16 images into 6, 5 and 5; the last
batch of an epoch, 9 images, into 3, 3 and 3).

Inductor writes and compiles C++ with gcc: with an empty cache (/tmp/torchinductor_$USER)
the MAE costs about a minute of CPU time (measured: 56 s; 250 s of wall time on two cores
shared with ~10 busy processes), and the classifier then reuses most of its kernels (18 s);
a warm cache takes seconds. So each test compiles one tiny model and checks everything on it.
tests/test_cuda.py runs the same checks on a GPU (Triton kernels).
"""
import copy
import json
from argparse import Namespace

import pytest
import torch
from torch._dynamo.utils import counters

import bench
from mae_cifar.cli import UsageError
from mae_cifar.data.datasets import Split
from mae_cifar.data.loader import DeviceLoader
from mae_cifar.distributed import DistInfo
from mae_cifar.training import objectives
from mae_cifar.training.engine import Checkpointed, Trainer
from mae_cifar.training.objectives import Objective
from model import ClassifierConfig, MAE_ViT, MAEConfig, ViT_Classifier

pytestmark = pytest.mark.usefixtures("one_thread")

IMAGE, CHANS, CLASSES = 8, 3, 10  # 16 patches of 2 x 2
MAE_CFG = MAEConfig(image_size=IMAGE, emb_dim=16, encoder_layer=1, encoder_head=1,
                    decoder_dim=16, decoder_layer=1)
CLS_CFG = ClassifierConfig(image_size=IMAGE, emb_dim=16, encoder_layer=1, encoder_head=1,
                           num_classes=CLASSES)
N_IMAGES, BATCH, MICRO = 41, 16, 6  # steps of 16, 16, 9 images; micro-batches 6,5,5 / 3,3,3
EPOCHS = 2
SEED = 3
MEAN, STD = torch.full((CHANS,), 0.5), torch.full((CHANS,), 0.25)
# fp32 on both sides; inductor fuses and reorders reductions. AdamW turns gradients that are
# zero up to rounding (the attention key biases) into lr-sized steps of either sign, so the
# weights are compared by how far they moved: their difference is a small part of the update.
LOSS_RTOL, GRAD_RTOL, GRAD_ATOL, UPDATE_RTOL = 1e-5, 1e-3, 1e-6, 1e-2


def images(device):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (N_IMAGES, CHANS, IMAGE, IMAGE), generator=g, dtype=torch.uint8)
    return Split(x.to(device), (torch.arange(N_IMAGES) % CLASSES).to(device))


def trainer(module, step_fn, device, compile):
    """engine.Trainer as the stages set it up: flips, AdamW, warmup + cosine, micro-batches."""
    loader = DeviceLoader(images(device), BATCH, MEAN, STD, "flip", seed=SEED)
    args = Namespace(compile=compile, amp="off", base_learning_rate=1e-3, batch_size=BATCH,
                     max_device_batch_size=MICRO, weight_decay=0.05, total_epoch=EPOCHS,
                     warmup_epoch=1, progress_seconds=0)
    return Trainer(args, DistInfo(0, 1, 0, torch.device(device)), module.to(device), loader,
                   step_fn, None, Checkpointed("test", {}))


def step_grads(t, x, y):
    """Gradients of one Trainer step over micro-batches (the optimizer's update skipped)."""
    grads = {}

    def record():
        grads.update({n: p.grad.clone() for n, p in t.module.named_parameters()
                      if p.grad is not None})
    t.optimizer.step = record
    torch.manual_seed(SEED)  # the same masks on both sides
    t._optimizer_step(x, y, {"loss": torch.zeros((), device=x.device),
                             "n": torch.zeros((), device=x.device)})
    del t.optimizer.step  # the real AdamW step again
    return grads


def train(t):
    """Per-epoch mean losses of EPOCHS epochs from a fixed RNG state."""
    torch.manual_seed(SEED)
    return [t.train_epoch(epoch)["loss"] for epoch in range(EPOCHS)]


def compiled_matches_eager(model, step_fn, device="cpu", loss_rtol=LOSS_RTOL,
                           grad_atol=GRAD_ATOL):
    """Train a compiled copy of model beside the eager one (fp32); assert that they agree
    and return the number of graphs Dynamo compiled.

    fallback_random makes inductor draw random numbers (masks) with eager's generator, so both
    sides see the same masks and flips."""
    torch._dynamo.reset()
    counters.clear()
    start = flat_weights(model)
    eager = trainer(model, step_fn, device, compile=False)
    compiled = trainer(copy.deepcopy(model), step_fn, device, compile=True)
    x, y = next(eager.loader.epoch(0))
    with torch._inductor.config.patch(fallback_random=True):
        expected = step_grads(eager, x, y)
        got = step_grads(compiled, x, y)
        assert got.keys() == expected.keys() and expected
        for name, g in expected.items():
            torch.testing.assert_close(got[name], g, rtol=GRAD_RTOL, atol=grad_atol,
                                       msg=lambda m, name=name: f"{name}: {m}")
        torch.testing.assert_close(train(compiled), train(eager), rtol=loss_rtol, atol=0)
    got, expected = flat_weights(compiled.module), flat_weights(eager.module)
    assert (got - expected).norm() < UPDATE_RTOL * (expected - start.to(device)).norm()
    return counters["stats"]["unique_graphs"]


def flat_weights(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


def mae():
    torch.manual_seed(0)
    return MAE_ViT.from_config(MAE_CFG)


def classifier():
    torch.manual_seed(0)
    return ViT_Classifier(CLS_CFG)


def objective():
    return Objective(Namespace(mixup=0.0, cutmix=0.0, smoothing=0.1), CLASSES)


def check_backend(device):
    """Skip when inductor cannot build code here (no C++ compiler, say)."""
    try:
        torch.compile(lambda t: t * 2)(torch.ones(2, device=device))
    except Exception as e:  # the backend's own error types vary between versions
        pytest.skip(f"inductor cannot compile on {device} here: {e}")
    finally:
        torch._dynamo.reset()


def test_inductor_mae_step_matches_eager_and_compiles_once():
    check_backend("cpu")
    assert compiled_matches_eager(mae(), objectives.pretrain_step) == 1


def test_inductor_classifier_step_matches_eager_and_compiles_once():
    check_backend("cpu")
    assert compiled_matches_eager(classifier(), objective()) == 1


def test_bench_times_compiled_and_eager_paths_in_one_run(tmp_path, monkeypatch,
                                                         known_bench_times):
    """bench.py --compile --with_eager: a third, uncompiled fast path and the compile
    speed-up (compiled steps of 0.1 s against eager ones of 0.2 s: x2). Dynamo is switched
    off here (its C++ build is what the tests above pay for)."""
    monkeypatch.setattr(torch._dynamo.config, "disable", True)
    out = tmp_path / "bench.json"
    bench.main(bench.get_args_parser().parse_args([
        "--preset", "tiny", "--device", "cpu", "--workers", "0", "--batch_size", "32",
        "--max_device_batch_size", "16", "--steps", "1", "--warmup", "0", "--threads", "1",
        "--compile", "--with_eager", "--phases", "pretrain", "finetune", "--out", str(out)]))
    res = json.loads(out.read_text())["results"]
    for phase in ("pretrain", "finetune"):
        fast, eager = res[phase]["fast"], res[phase]["eager"]
        assert eager["images_per_step"] == fast["images_per_step"] == 32
        assert eager["gflop_per_image"] == fast["gflop_per_image"]
        assert eager["images_per_s"] == pytest.approx(160)  # 32 images / 0.2 s
        assert res[phase]["compile_speedup"] == pytest.approx(2)
    with pytest.raises(UsageError, match="--compile"):
        bench.resolve_preset(bench.get_args_parser().parse_args(["--with_eager"]))
