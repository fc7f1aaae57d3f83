"""Processes and devices for DDP: one device per process, an elastic-safe process group, collectives on the device."""
from __future__ import annotations

import dataclasses
import datetime
import os

import torch
import torch.distributed as dist

__all__ = ['ProcessInfo', 'resolve_device', 'init_distributed', 'all_reduce_sum', 'any_rank', 'all_gather']


@dataclasses.dataclass(frozen=True)
class ProcessInfo:
    """This process's place in the job, from torchrun's environment (one process: rank 0 of 1)."""
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @classmethod
    def from_env(cls) -> ProcessInfo:
        return cls(*(int(os.environ.get(k, d)) for k, d in (('RANK', 0), ('LOCAL_RANK', 0), ('WORLD_SIZE', 1))))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(spec: str, local_rank: int = 0, world_size: int = 1) -> torch.device:
    """'auto' (cuda, then mps, then cpu), 'cpu', 'cuda', 'cuda:N' or 'mps'; a CUDA device always has an index
    (``cuda:LOCAL_RANK``: ``torch.cuda.set_device`` refuses a bare 'cuda'); ValueError when not available here."""
    if spec == 'auto':
        spec = 'cuda' if torch.cuda.is_available() else 'mps' if torch.backends.mps.is_available() else 'cpu'
    if spec not in ('cpu', 'cuda', 'mps') and not (spec.startswith('cuda:') and spec[5:].isdigit()):
        raise ValueError(f"device {spec!r} is not one of 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'")
    if spec.startswith('cuda:') and world_size > 1:
        raise ValueError(f"device {spec!r} names one GPU for {world_size} processes: use 'cuda' or 'auto' (each "
                         'process takes cuda:LOCAL_RANK)')
    index = int(spec[5:]) if spec.startswith('cuda:') else local_rank
    available = torch.cuda.device_count() > index if spec.startswith('cuda') else \
        spec != 'mps' or torch.backends.mps.is_available()
    if not available:
        count = f' ({torch.cuda.device_count()} CUDA devices; cuda:{index} asked for)' if spec[:4] == 'cuda' else ''
        raise ValueError(f"device {spec!r} is not available here{count}: use device 'cpu' or 'auto'")
    return torch.device('cuda', index) if spec.startswith('cuda') else torch.device(spec)


def init_distributed(device: torch.device, process: ProcessInfo, timeout_s: float) -> None:
    """Bind this process to ``device`` first, then join the process group (NCCL on CUDA, else gloo).

    torchrun's agent keeps one store across ``--max-restarts`` rounds; a restarted rank could read a dead peer's
    address from the round before, so the group's keys are prefixed with ``TORCHELASTIC_RESTART_COUNT``."""
    if device.type == 'cuda':
        torch.cuda.set_device(device)
    timeout = datetime.timedelta(seconds=timeout_s)
    kwargs = dict(backend='nccl' if device.type == 'cuda' else 'gloo', timeout=timeout,
                  device_id=device if device.type == 'cuda' else None)
    if os.environ.get('TORCHELASTIC_USE_AGENT_STORE') == 'True':
        store = dist.TCPStore(os.environ['MASTER_ADDR'], int(os.environ['MASTER_PORT']), process.world_size,
                              is_master=False, timeout=timeout)
        store = dist.PrefixStore(f'restart{os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")}/', store)
        kwargs.update(store=store, rank=process.rank, world_size=process.world_size)
    dist.init_process_group(**kwargs)


def all_reduce_sum(values: torch.Tensor | list[float], device: torch.device) -> torch.Tensor:
    """Sum over ranks on the training device (NCCL reduces only accelerator tensors); float64 where it exists."""
    dtype = torch.float32 if device.type == 'mps' else torch.float64
    tensor = torch.as_tensor(values).to(device=device, dtype=dtype, copy=True)
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any rank: ranks that must act together decide together."""
    return bool(all_reduce_sum([float(flag)], device).item() > 0)


def all_gather(obj: object, world_size: int) -> list[object]:
    """Every rank's ``obj`` (e.g. its RNG states), in rank order; the current CUDA device carries NCCL's copy."""
    if world_size == 1:
        return [obj]
    gathered: list[object] = [None] * world_size
    dist.all_gather_object(gathered, obj)
    return gathered
