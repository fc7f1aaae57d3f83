"""Evaluation shared by train.py and validate.py: top-1 / top-5 accuracy and cross-entropy over a whole split."""
import logging
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader

__all__ = ['evaluate']


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: DataLoader, device: torch.device, amp_autocast: Callable = nullcontext,
             world_size: int = 1, channels_last: bool = False, log_interval: int = 0) -> dict[str, float]:
    """``{'loss', 'top1', 'top5', 'count'}`` (in %) over ``collate_skip_bad`` batches, all-reduced under DDP."""
    model.eval()
    memory_format = torch.channels_last if channels_last else torch.preserve_format
    totals = torch.zeros(4, dtype=torch.float64)  # loss sum, top-1 hits, top-5 hits, count
    tic = time.perf_counter()
    for batch_idx, (images, targets, _) in enumerate(loader, 1):
        if images is not None:  # None: every image of the batch was unreadable (skip_bad_images)
            images, targets = images.to(device, memory_format=memory_format), targets.to(device)
            with amp_autocast():
                logits = model(images).float()
            hits = logits.topk(min(5, logits.shape[1]), dim=1).indices.eq(targets[:, None])
            sums = [F.cross_entropy(logits, targets, reduction='sum'), hits[:, 0].sum(), hits.any(dim=1).sum()]
            totals[:3] += torch.stack(sums).cpu().double()  # one device read per batch
            totals[3] += targets.shape[0]
        if log_interval > 0 and (batch_idx % log_interval == 0 or batch_idx == len(loader)):
            _, top1, _, count = totals.tolist()
            progress = f'eval batch {batch_idx}/{len(loader)}  top-1 {100 * top1 / max(count, 1):.2f}%'
            logging.getLogger(__name__).info(f'{progress}  {count / (time.perf_counter() - tic):.1f} img/s')
    if world_size > 1:  # on the device: NCCL reduces only accelerator tensors
        dist.all_reduce(totals := totals.to(device))
    loss, top1, top5, count = totals.tolist()
    if count == 0:
        raise ValueError('evaluate: the loader produced no readable image.')
    return {'loss': loss / count, 'top1': 100 * top1 / count, 'top5': 100 * top5 / count, 'count': int(count)}
