"""Evaluation shared by train.py and validate.py: top-1 / top-5 accuracy and cross-entropy over a whole split."""
from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

__all__ = ['evaluate']

_logger = logging.getLogger(__name__)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device,
             amp_autocast: Callable = contextlib.nullcontext, world_size: int = 1, channels_last: bool = False,
             log_interval: int = 0) -> dict[str, float]:
    """``{'loss', 'top1', 'top5', 'count'}`` of ``model`` over ``loader`` (accuracies in %).

    ``loader`` yields ``(images, targets, num_skipped)`` (``timm_bot.data.collate_skip_bad``). Under DDP the sums are
    all-reduced, so every rank returns the exact totals. ``log_interval > 0`` logs a progress line every that many
    batches (this rank's running top-1 and img/s).
    """
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64)  # loss sum, top-1 hits, top-5 hits, count
    tic = time.perf_counter()
    for batch_idx, (images, targets, _) in enumerate(loader):
        if images is not None:  # None: every image of the batch was unreadable (skip_bad_images)
            images, targets = images.to(device), targets.to(device)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with amp_autocast():
                logits = model(images)
            logits = logits.float()
            hits = logits.topk(min(5, logits.shape[1]), dim=1).indices.eq(targets[:, None])
            totals += torch.tensor([F.cross_entropy(logits, targets, reduction='sum').item(), hits[:, 0].sum().item(),
                                    hits.any(dim=1).sum().item(), targets.shape[0]], dtype=torch.float64)
        if log_interval > 0 and ((batch_idx + 1) % log_interval == 0 or batch_idx + 1 == len(loader)):
            count = max(totals[3].item(), 1)
            _logger.info(f'eval batch {batch_idx + 1}/{len(loader)}  top-1 {100 * totals[1].item() / count:.2f}%  '
                         f'{totals[3].item() / (time.perf_counter() - tic):.1f} img/s')
    if world_size > 1:  # on the device: NCCL reduces only accelerator tensors
        totals = totals.to(device)
        dist.all_reduce(totals)
    loss, top1, top5, count = totals.tolist()
    if count == 0:
        raise ValueError('evaluate: the loader produced no readable image.')
    return {'loss': loss / count, 'top1': 100 * top1 / count, 'top5': 100 * top5 / count, 'count': int(count)}
