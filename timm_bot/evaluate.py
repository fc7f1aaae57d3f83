"""Evaluation shared by train.py and validate.py: top-1 / top-5 accuracy and cross-entropy over a whole split."""
import logging
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .distributed import all_reduce_sum

__all__ = ['evaluate']


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: DataLoader, device: torch.device, amp_autocast: Callable = nullcontext,
             channels_last: bool = False, log_interval: int = 0,
             normalize: Callable | None = None) -> dict[str, float]:
    """``{'loss', 'top1', 'top5', 'count'}`` (in %) over ``collate_skip_bad`` batches, summed on the device and
    read once (all-reduced over ranks when the process group is up); ``normalize``: the device side of a split eval
    transform (uint8 batches)."""
    model.eval()
    memory_format = torch.channels_last if channels_last else torch.preserve_format
    sums = torch.zeros(3, dtype=torch.float32 if device.type == 'mps' else torch.float64, device=device)
    count, tic = 0, time.perf_counter()  # sums: loss, top-1 hits, top-5 hits, kept on the device
    for batch_idx, (images, targets, _) in enumerate(loader, 1):
        if images is not None:  # None: every image of the batch was unreadable (skip_bad_images)
            images = images.to(device, non_blocking=True)
            images = (normalize(images) if normalize else images).contiguous(memory_format=memory_format)
            targets = targets.to(device, non_blocking=True)
            with amp_autocast():
                logits = model(images).float()
            hits = logits.topk(min(5, logits.shape[1]), dim=1).indices.eq(targets[:, None])
            sums += torch.stack([F.cross_entropy(logits, targets, reduction='sum'), hits[:, 0].sum(),
                                 hits.any(dim=1).sum()]).to(sums.dtype)
            count += targets.shape[0]
        if log_interval > 0 and (batch_idx % log_interval == 0 or batch_idx == len(loader)):
            progress = f'eval batch {batch_idx}/{len(loader)}  top-1 {100 * sums[1].item() / max(count, 1):.2f}%'
            logging.getLogger(__name__).info(f'{progress}  {count / (time.perf_counter() - tic):.1f} img/s')
    loss, top1, top5, count = all_reduce_sum(torch.cat([sums, sums.new_tensor([count])]), device).tolist()
    if count == 0:
        raise ValueError('evaluate: the loader produced no readable image.')
    return {'loss': loss / count, 'top1': 100 * top1 / count, 'top5': 100 * top5 / count, 'count': int(count)}
