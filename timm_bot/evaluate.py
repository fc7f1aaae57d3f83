"""Evaluation shared by train.py and validate.py: top-1 / top-5 accuracy and cross-entropy over a whole split."""
from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

__all__ = ['evaluate']


def evaluate(model: nn.Module, loader: DataLoader, device: torch.device,
             amp_autocast: Callable = contextlib.nullcontext, world_size: int = 1,
             channels_last: bool = False) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) and mean cross-entropy of ``model`` over ``loader``.

    ``loader`` yields ``(images, targets, num_skipped)`` batches (``timm_bot.data.collate_skip_bad``).
    Under DDP each rank evaluates its shard and the sums are all-reduced, so every rank returns the exact totals.
    """
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64)  # loss sum, top-1 hits, top-5 hits, count
    with torch.no_grad():
        for images, targets, _ in loader:
            if images is None:  # every image of the batch was unreadable (skip_bad_images)
                continue
            images, targets = images.to(device), targets.to(device)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with amp_autocast():
                logits = model(images)
            logits = logits.float()
            hits = logits.topk(min(5, logits.shape[1]), dim=1).indices.eq(targets[:, None])  # B x 5, hit counts
            totals += torch.tensor([F.cross_entropy(logits, targets, reduction='sum').item(),
                                    hits[:, 0].sum().item(), hits.any(dim=1).sum().item(), targets.shape[0]],
                                   dtype=torch.float64)
    if world_size > 1:
        dist.all_reduce(totals)
    loss, top1, top5, count = totals.tolist()
    if count == 0:
        raise ValueError('evaluate: the loader produced no readable image.')
    return {'loss': loss / count, 'top1': 100 * top1 / count, 'top5': 100 * top5 / count, 'count': int(count)}
