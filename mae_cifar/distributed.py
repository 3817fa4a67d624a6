"""torchrun / DistributedDataParallel plumbing; a plain `python script.py` is one process."""
import io
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from mae_cifar import cli
from mae_cifar.cli import UsageError


@dataclass
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self):
        return self.rank == 0


def resolve_device(name):
    """'auto' -> CUDA when available, else CPU; a device that is not there is a UsageError."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name} but this machine has no CUDA device; use --device cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise UsageError(f"unknown --device {name!r}; use auto, cpu, cuda or cuda:N")
    return name


def setup(device_name):
    """Join the torchrun process group if launched by torchrun (nccl on CUDA, gloo on CPU)."""
    device = resolve_device(device_name)
    world = cli.launch_world_size()
    if world == 1:
        return DistInfo(0, 1, 0, torch.device(device))
    local_rank = int(os.environ["LOCAL_RANK"])
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    cuda = dev.type == "cuda"
    dist.init_process_group(backend="nccl" if cuda else "gloo", device_id=dev if cuda else None)
    return DistInfo(dist.get_rank(), world, local_rank, dev)


def cleanup():
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t):
    """Sum a tensor over ranks in place (no-op for one process); returns it."""
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_cat(t):
    """Concatenate equally shaped tensors of every rank along dim 0 (rank order)."""
    if not dist.is_initialized():
        return t
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t.contiguous())
    return torch.cat(out)


def all_gather_state(state):
    """[state of rank 0, state of rank 1, ...] for containers of numbers and tensors; [state]
    for one process. Sent as torch.save bytes: pickle fails on uint32 tensors (NumPy's RNG)."""
    if not dist.is_initialized():
        return [state]
    buf = io.BytesIO()
    torch.save(state, buf)
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, buf.getvalue())
    return [torch.load(io.BytesIO(b), weights_only=True) for b in out]


def barrier():
    """Wait until every rank gets here (no-op for one process)."""
    if dist.is_initialized():
        dist.barrier()
