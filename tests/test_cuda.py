"""The CUDA paths, checked on a GPU; every test here is skipped on a machine without one.

    python -m pytest -q -m cuda        # on a GPU (scripts/gpu_check.sh runs this first)

bf16 autocast against fp32, fused AdamW against the unfused one, the inductor-compiled
training step against eager (Triton kernels; the checks of tests/test_compile.py), the
DeviceLoader's batches on the GPU against the CPU's, and a DDP step in an NCCL process group
of one process.
"""
import copy
import socket

import pytest
import torch
import torch.distributed as dist
from test_compile import (
    BATCH,
    MAE_CFG,
    MEAN,
    MICRO,
    N_IMAGES,
    STD,
    check_backend,
    classifier,
    compiled_matches_eager,
    images,
    mae,
    objective,
    trainer,
)
from torch.nn.parallel import DistributedDataParallel

from mae_cifar.data.loader import DeviceLoader
from mae_cifar.training import engine, objectives, recipes
from mae_cifar.training.optim import param_groups

CUDA = "cuda"
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs a CUDA device (run `python -m pytest -q -m cuda` on a GPU)"),
]
# bf16 keeps 8 bits of mantissa (~0.4 % per rounding); the loss of the tiny MAE moved by
# ~0.2 % under CPU autocast (tests/test_speed_equivalence.py), gradients by a few % in norm
BF16_LOSS_RTOL, BF16_GRAD_RTOL = 1e-2, 5e-2
ADAMW_STEPS = 5
CUDA_LOSS_RTOL, CUDA_GRAD_ATOL = 1e-4, 1e-5


@pytest.fixture
def no_tf32():
    """fp32 matmuls and convolutions (cuDNN allows TF32 by default), as on the CPU."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def relative_error(got, expected):
    return ((got.float() - expected).norm() / expected.norm()).item()


def fixed_noise(n, seed=1):
    patches = (MAE_CFG.image_size // MAE_CFG.patch_size) ** 2
    return torch.rand(n, patches, generator=torch.Generator().manual_seed(seed)).to(CUDA)


def loss_and_grads(model, x, noise, dtype):
    """(loss, {name: grad}) of one MAE forward/backward under autocast(dtype) or fp32."""
    model.zero_grad(set_to_none=True)
    with engine.autocast_context(dtype, torch.device(CUDA))():
        loss = model(x, noise=noise)[0]
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.usefixtures("no_tf32")  # a true fp32 reference
def test_bf16_autocast_forward_backward_matches_fp32():
    model = mae().to(CUDA)
    x, _ = DeviceLoader(images(CUDA), BATCH, MEAN, STD).batch(torch.arange(BATCH, device=CUDA))
    noise = fixed_noise(BATCH)
    fp32, fp32_grads = loss_and_grads(model, x, noise, None)
    bf16, bf16_grads = loss_and_grads(model, x, noise, torch.bfloat16)
    assert bf16.dtype == torch.float32  # the loss is reduced in fp32
    torch.testing.assert_close(bf16, fp32, rtol=BF16_LOSS_RTOL, atol=0)
    for name, g in fp32_grads.items():
        assert torch.isfinite(bf16_grads[name]).all(), name
        assert relative_error(bf16_grads[name], g) < BF16_GRAD_RTOL, name


def test_fused_adamw_steps_match_unfused():
    """engine.Trainer's fused AdamW (CUDA) against the default one, same groups and grads."""
    models = [mae().to(CUDA) for _ in range(2)]
    opts = [torch.optim.AdamW(param_groups(m, 0.05), lr=1e-3, betas=recipes.ADAMW_BETAS_PRETRAIN,
                              fused=fused) for m, fused in zip(models, (True, False))]
    g = torch.Generator(device=CUDA).manual_seed(0)
    for _ in range(ADAMW_STEPS):
        for p, q in zip(*(m.parameters() for m in models)):
            p.grad = torch.randn(p.shape, device=CUDA, generator=g)
            q.grad = p.grad.clone()
        for opt in opts:
            opt.step()
    for (name, p), q in zip(models[0].named_parameters(), models[1].parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.usefixtures("no_tf32")
@pytest.mark.parametrize("make,step_fn", [(mae, objectives.pretrain_step),
                                          (classifier, objective())])
def test_inductor_step_matches_eager_on_cuda(make, step_fn):
    """Triton kernels reduce in other orders than the CPU's C++: looser loss tolerance."""
    check_backend(CUDA)
    assert compiled_matches_eager(make(), step_fn, device=CUDA, loss_rtol=CUDA_LOSS_RTOL,
                                  grad_atol=CUDA_GRAD_ATOL) == 1


@pytest.mark.parametrize("world", [1, 2])
def test_device_loader_gives_the_cpu_batches_on_cuda(world):
    """The same order, rank shards, last partial batch and normalisation as on the CPU. Flips
    draw on the device's own RNG, so each flipped batch is checked image by image to be the
    CPU's image or its mirror."""
    for augment in ("none", "flip"):
        flips = 0
        for rank in range(world):
            cpu = DeviceLoader(images("cpu"), BATCH, MEAN, STD, "none", seed=5, rank=rank,
                               world=world)
            gpu = DeviceLoader(images(CUDA), BATCH, MEAN, STD, augment, seed=5, rank=rank,
                               world=world)
            assert len(cpu) == len(gpu)
            for epoch in range(2):
                for (x, y), (gx, gy) in zip(cpu.epoch(epoch), gpu.epoch(epoch), strict=True):
                    assert torch.equal(gy.cpu(), y)
                    same, mirrored = (max_abs_diff(gx.cpu(), t) <= 1e-6 for t in (x, x.flip(3)))
                    assert (same | mirrored).all()
                    flips += (mirrored & ~same).sum().item()
        assert (flips > 0) == (augment == "flip")


def max_abs_diff(a, b):
    """(B,) the largest absolute difference per image."""
    return (a - b).abs().flatten(1).amax(1)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_nccl_available(), reason="this torch has no NCCL")
def test_nccl_process_group_of_one_runs_a_ddp_step():
    """engine.Trainer's DDP path (no_sync on all but the last micro-batch, NCCL all-reduces
    of the sums) in a process group of world size 1 equals the plain step."""
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0,
                            world_size=1, device_id=torch.device(CUDA, 0))
    try:
        model = mae()
        plain = trainer(model, objectives.pretrain_step, CUDA, compile=False)
        ddp = trainer(copy.deepcopy(model), objectives.pretrain_step, CUDA, compile=False)
        ddp.model = DistributedDataParallel(ddp.model, device_ids=[0])
        assert ddp.micro_batches > 1 and N_IMAGES % BATCH and BATCH % MICRO
        losses = []
        for t in (plain, ddp):
            torch.manual_seed(0)
            losses.append(t.train_epoch(0)["loss"])
        torch.testing.assert_close(losses[1], losses[0], rtol=1e-6, atol=0)
        for p, q in zip(ddp.module.parameters(), plain.module.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    finally:
        dist.destroy_process_group()
