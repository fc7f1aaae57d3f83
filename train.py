#!/usr/bin/env python3
"""Train an image classifier with the recipes of *Bag of Tricks for Image Classification* (He et al., 2019).

    python train.py --hparams hparams/quickstart.yaml [--KEY VALUE ...]
    torchrun --nproc_per_node 2 train.py --hparams hparams/cifar10.yaml --data_dir ../shared/data/cifar10

Every key of ``timm_bot.hparams.TrainHparams`` can be set in the YAML file and overridden on the command line.
The script only wires timm (models, optimizer factory, AMP scaler, EMA, summary) with the ``timm_bot`` pieces;
each trick lives, and is documented, in its own module.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import logging
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import timm
import timm.data
import timm.utils
import torch
import torch.distributed as dist
import torch.nn as nn
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

import timm_bot  # noqa: F401  (registers the _bot models and the 'nag' optimizer)
from timm_bot.checkpoint import load_checkpoint, save_checkpoint
from timm_bot.data import BadImageError, collate_skip_bad, create_image_dataset
from timm_bot.distill import DistillationLoss, load_teacher
from timm_bot.evaluate import evaluate
from timm_bot.export import ExportError, HubPushError, export_checkpoint
from timm_bot.hparams import HparamsError, TrainHparams, load_hparams, parse_overrides
from timm_bot.loss import SmoothedCrossEntropy
from timm_bot.mixup import BatchMixup
from timm_bot.optim import create_paper_optimizer, decayed_parameter_names, resolve_lr
from timm_bot.plots import plot_curves, plot_lr
from timm_bot.sampler import ResumableSampler, SeededTransformDataset
from timm_bot.scheduler import create_paper_scheduler
from timm_bot.transforms import create_paper_train_transform

_logger = logging.getLogger('train')


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stops and the last good checkpoint is kept."""


# ---------------------------------------------------------------------------------------------------------------------
# Setup
# ---------------------------------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> tuple[TrainHparams, str, set[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     usage='train.py --hparams FILE.yaml [--resume CKPT] [--KEY VALUE ...]')
    parser.add_argument('--hparams', help='YAML file of hparams (see hparams/)')
    parser.add_argument('--resume', default='', help='checkpoint to continue from (last.pth.tar)')
    known, rest = parser.parse_known_args(argv)
    overrides = parse_overrides(rest)
    return load_hparams(known.hparams, overrides), known.resume, set(overrides)


def init_distributed(hp: TrainHparams) -> tuple[torch.device, int, int]:
    """(device, rank, world_size). Under torchrun: DDP over gloo (CPU) or nccl (GPU), with a timeout so that a rank
    that dies makes the others fail instead of hanging forever."""
    use_cuda = hp.device == 'cuda' or (hp.device == 'auto' and torch.cuda.is_available())
    world_size = int(os.environ.get('WORLD_SIZE', 1))
    rank = int(os.environ.get('RANK', 0))
    if world_size > 1:
        dist.init_process_group(backend='nccl' if use_cuda else 'gloo',
                                timeout=datetime.timedelta(seconds=hp.dist_timeout))
    if use_cuda:
        local_rank = int(os.environ.get('LOCAL_RANK', 0))
        torch.cuda.set_device(local_rank)
        return torch.device('cuda', local_rank), rank, world_size
    return torch.device('cpu'), rank, world_size


def create_loaders(hp: TrainHparams, rank: int, world_size: int, device: torch.device):
    """Training data with the paper's augmentation (section 2) and validation data with the eval preprocessing."""
    train_set = create_image_dataset(hp.data_dir, hp.train_split, skip_bad_images=hp.skip_bad_images)
    val_set = create_image_dataset(hp.data_dir, hp.val_split, skip_bad_images=hp.skip_bad_images)
    if list(val_set.classes) != list(train_set.classes):
        raise ValueError(f'data_dir: the {hp.val_split} split has classes {list(val_set.classes)[:5]}... but '
                         f'{hp.train_split} has {list(train_set.classes)[:5]}...: both need the same class folders.')
    train_transform = create_paper_train_transform(
        hp.img_size, scale=tuple(hp.scale), ratio=tuple(hp.ratio), hflip=hp.hflip, color_jitter=hp.color_jitter,
        hue=hp.color_jitter if hp.hue_jitter else 0.0, pca_lighting=hp.pca_lighting, mean=hp.mean, std=hp.std,
        interpolation=hp.interpolation)
    eval_transform = timm.data.create_transform(
        hp.img_size, is_training=False, crop_pct=hp.crop_pct, interpolation=hp.interpolation,
        mean=tuple(hp.mean), std=tuple(hp.std))
    # generator: each DataLoader iterator draws a base seed from it -- by default from the global torch RNG that
    # mixup samples from, which would shift mixup's stream after a mid-epoch resume (the iterator is created anew).
    loader_args = dict(num_workers=hp.workers, collate_fn=collate_skip_bad, persistent_workers=hp.workers > 0,
                       pin_memory=hp.pin_memory and device.type == 'cuda',
                       generator=torch.Generator().manual_seed(hp.seed))
    train_sampler = ResumableSampler(len(train_set), hp.batch_size, hp.seed, rank, world_size)
    train_loader = DataLoader(SeededTransformDataset(train_set, train_transform), batch_size=hp.batch_size,
                              sampler=train_sampler, **loader_args)
    val_set.transform = eval_transform  # deterministic: no per-sample seeding needed
    val_sampler = ResumableSampler(len(val_set), hp.batch_size, hp.seed, rank, world_size,
                                   shuffle=False, drop_last=False)
    val_loader = DataLoader(val_set, batch_size=hp.batch_size, sampler=val_sampler, **loader_args)
    return train_loader, val_loader, train_set.classes


def create_criterion(hp: TrainHparams, num_classes: int) -> nn.Module:
    """Label smoothing (5.2), mixup-aware (5.4); wrapped with a frozen teacher for distillation (5.3)."""
    criterion = SmoothedCrossEntropy(hp.smoothing, hp.smoothing_mode)
    if not hp.teacher:
        return criterion
    teacher, teacher_cfg = load_teacher(hp.teacher, num_classes=num_classes)
    return DistillationLoss(teacher, criterion, temperature=hp.temperature, student_mean=hp.mean,
                            student_std=hp.std, teacher_mean=teacher_cfg['mean'], teacher_std=teacher_cfg['std'])


def rng_state() -> dict[str, Any]:
    """Main-process RNG states (mixup draws; augmentation is seeded per sample, see timm_bot.sampler)."""
    np_state = np.random.get_state()
    state = {'torch': torch.get_rng_state(), 'python': random.getstate(),
             'numpy': [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state['torch'])
    random.setstate(tuple(tuple(s) if isinstance(s, list) else s for s in state['python']))
    name, keys, *rest = state['numpy']
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


# ---------------------------------------------------------------------------------------------------------------------
# Training and evaluation
# ---------------------------------------------------------------------------------------------------------------------

def checkpoint_state(model, model_ema, optimizer, scheduler, loss_scaler, hp, lr, data_config, label_names,
                     epoch, batch_in_epoch, epoch_stats, global_step, best, history) -> dict[str, Any]:
    """Everything --resume needs, as plain tensors/containers so it loads with weights_only=True."""
    state = {
        'arch': hp.model, 'num_classes': len(label_names), 'label_names': list(label_names),
        'state_dict': timm.utils.unwrap_model(model).state_dict(), 'data_config': data_config,
        'optimizer': optimizer.state_dict(), 'scheduler': scheduler.state_dict(),
        'epoch': epoch, 'batch_in_epoch': batch_in_epoch, 'epoch_stats': epoch_stats, 'global_step': global_step,
        'best': best, 'history': history, 'rng': rng_state(), 'args': dict(hp.to_dict(), lr=lr),
        'version': timm_bot.__version__,
    }
    if model_ema is not None:
        state['state_dict_ema'] = timm.utils.unwrap_model(model_ema).state_dict()
    if loss_scaler is not None:
        state['scaler'] = loss_scaler.state_dict()
    return state


def write_summary(history: list[dict], path: Path) -> None:
    """summary.csv in timm's format, rewritten whole from the run history (so a resumed run has no gaps)."""
    tmp = path.with_name(path.name + '.tmp')
    tmp.unlink(missing_ok=True)
    for row in history:
        train = {'loss': row['train_loss']}
        evals = {k[len('eval_'):]: v for k, v in row.items() if k.startswith('eval_')}
        timm.utils.update_summary(row['epoch'], train, evals, tmp, lr=row['lr'])
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    try:
        hp, resume, cli_keys = parse_args(argv)
    except HparamsError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2

    device, rank, world_size = init_distributed(hp)
    if rank != 0:
        logging.getLogger().setLevel(logging.WARNING)
    timm.utils.random_seed(hp.seed, rank)
    if device.type == 'cpu' and hp.workers > 0:  # loader workers need cores too: don't oversubscribe
        torch.set_num_threads(max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) - hp.workers)))
    if hp.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False

    # Everything that can fail on bad input happens before the output folder exists.
    try:
        train_loader, val_loader, label_names = create_loaders(hp, rank, world_size, device)
        num_classes = len(label_names)
        model = timm.create_model(hp.model, pretrained=hp.pretrained, num_classes=num_classes,
                                  drop_rate=hp.drop_rate, weight_init=hp.weight_init,
                                  zero_init_last=hp.zero_init_last)
        criterion = create_criterion(hp, num_classes)
        resume_state = load_checkpoint(resume) if resume else None
        if resume_state is not None and (resume_state.get('arch'), resume_state.get('num_classes')) != \
                (hp.model, num_classes):
            raise ValueError(f'--resume {resume}: the checkpoint is {resume_state.get("arch")} with '
                             f'{resume_state.get("num_classes")} classes, this run is {hp.model} with {num_classes}.')
        if resume_state is not None:
            _warn_resume_overrides(resume_state.get('args', {}), hp, cli_keys)
    except (ValueError, FileNotFoundError, ImportError, RuntimeError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2

    data_config = {'input_size': [3, hp.img_size, hp.img_size], 'crop_pct': hp.crop_pct,
                   'interpolation': hp.interpolation, 'mean': list(hp.mean), 'std': list(hp.std),
                   'crop_mode': 'center'}
    model.to(device)
    criterion.to(device)
    if hp.channels_last:
        model.to(memory_format=torch.channels_last)

    # Optimizer: NAG, no bias decay (3.1), linear scaling of the lr with the global batch (3.1).
    lr, lr_message = resolve_lr(hp.lr, hp.batch_size, world_size, hp.grad_accum_steps, hp.lr_base, hp.lr_base_size)
    optimizer = create_paper_optimizer(model, hp.opt, lr=lr, weight_decay=hp.weight_decay, momentum=hp.momentum,
                                       no_bias_decay=hp.no_bias_decay)
    decayed, not_decayed = decayed_parameter_names(model, hp.no_bias_decay)
    _logger.info(f'{hp.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, {num_classes} classes')
    _logger.info(f'{lr_message}; global batch {hp.batch_size * world_size * hp.grad_accum_steps} '
                 f'({world_size} process(es) x {hp.batch_size} x {hp.grad_accum_steps} accumulation steps)')
    _logger.info(f'weight decay {hp.weight_decay:g} on {len(decayed)} tensors (conv/fc weights), '
                 f'none on {len(not_decayed)} (biases, BN gamma/beta)' if hp.no_bias_decay else
                 f'weight decay {hp.weight_decay:g} on all {len(decayed)} parameter tensors')

    # Schedule: per-iteration warmup (3.1) then cosine (5.1) or step decay (section 2).
    batches_per_epoch = len(train_loader.sampler) // hp.batch_size
    updates_per_epoch = math.ceil(batches_per_epoch / hp.grad_accum_steps)
    scheduler = create_paper_scheduler(optimizer, hp.sched, hp.epochs, updates_per_epoch, hp.warmup_epochs,
                                       hp.decay_milestones, hp.decay_rate)

    # Low precision (3.2): bfloat16 autocast, or float16 with loss scaling.
    amp_dtype = torch.bfloat16 if hp.amp_dtype == 'bfloat16' else torch.float16
    amp_autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if hp.amp else contextlib.nullcontext
    loss_scaler = timm.utils.NativeScaler(device=device.type) if hp.amp and amp_dtype == torch.float16 else None
    mixup = BatchMixup(hp.mixup) if hp.mixup > 0 else None
    model_ema = timm.utils.ModelEmaV3(model, decay=hp.model_ema_decay) if hp.model_ema else None

    start_epoch, start_batch, global_step, best, history = 0, 0, 0, {'top1': -1.0, 'epoch': -1}, []
    epoch_stats = (0.0, 0, 0)  # train loss sum, images, skipped images of a partly done epoch
    if resume_state is not None:
        model.load_state_dict(resume_state['state_dict'])
        optimizer.load_state_dict(resume_state['optimizer'])
        scheduler.load_state_dict(resume_state['scheduler'])
        if model_ema is not None and 'state_dict_ema' in resume_state:
            model_ema.load_state_dict(resume_state['state_dict_ema'])
        if loss_scaler is not None and 'scaler' in resume_state:
            loss_scaler.load_state_dict(resume_state['scaler'])
        start_epoch, start_batch = resume_state['epoch'], resume_state['batch_in_epoch']
        global_step, best, history = resume_state['global_step'], resume_state['best'], resume_state['history']
        epoch_stats = tuple(resume_state['epoch_stats'])
        scheduler.step_update(num_updates=global_step)
        set_rng_state(resume_state['rng'])
        _logger.info(f'resumed from {resume}: epoch {start_epoch}, batch {start_batch}, update {global_step}')

    train_model = model
    if hp.torchcompile:
        train_model = torch.compile(model)
    if world_size > 1:
        train_model = DistributedDataParallel(train_model, device_ids=[device.index] if device.type == 'cuda' else None)

    output_dir = Path(hp.output) / (hp.experiment or f'{time.strftime("%Y%m%d-%H%M%S")}-{hp.model}')
    if resume and 'experiment' not in cli_keys:  # only a command-line --experiment moves it (YAML files set one)
        output_dir = Path(resume).resolve().parent
    if rank == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / 'args.yaml').write_text(yaml.safe_dump(dict(hp.to_dict(), lr=lr), sort_keys=False))

    def save(name: str, epoch: int, batch_in_epoch: int, epoch_stats: tuple = (0.0, 0, 0)) -> None:
        if rank == 0:
            save_checkpoint(checkpoint_state(model, model_ema, optimizer, scheduler, loss_scaler, hp, lr,
                                             data_config, label_names, epoch, batch_in_epoch, list(epoch_stats),
                                             global_step, best, history), output_dir / name)

    show_progress = rank == 0 and sys.stderr.isatty()
    for epoch in range(start_epoch, hp.epochs):
        train_loader.sampler.set_epoch(epoch, start_batch)
        train_model.train()
        criterion.train()
        (loss_sum, seen, skipped), tic = epoch_stats, time.perf_counter()
        epoch_stats, resumed_seen = (0.0, 0, 0), seen
        progress = _progress(len(train_loader), epoch, hp.epochs) if show_progress else None
        for batch_idx, (images, targets, num_skipped) in enumerate(train_loader, start=start_batch):
            skipped += num_skipped
            if images is None:  # every image of the batch was unreadable (skip_bad_images)
                continue
            images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            if hp.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            target = targets
            if mixup is not None:  # section 5.4: mix the batch with a permutation of itself
                images, target = mixup(images, targets)
            need_update = (batch_idx + 1) % hp.grad_accum_steps == 0 or batch_idx + 1 == batches_per_epoch
            sync = contextlib.nullcontext() if need_update or world_size == 1 else train_model.no_sync()
            with sync:
                with amp_autocast():
                    logits = train_model(images)
                    loss = criterion(logits, images, target) if hp.teacher else criterion(logits, target)
                if not torch.isfinite(loss):
                    raise NonFiniteLossError(
                        f'loss is {loss.item()} at epoch {epoch}, batch {batch_idx}, update {global_step + 1}: '
                        f'training stopped; the last good checkpoint in {output_dir} is intact. Lower lr '
                        f'(now {optimizer.param_groups[0]["lr"]:.4g}) or check the data.')
                scaled = loss / hp.grad_accum_steps
                if loss_scaler is not None:
                    loss_scaler(scaled, optimizer, need_update=need_update)
                else:
                    scaled.backward()
                    if need_update:
                        optimizer.step()
            loss_sum += loss.item() * targets.shape[0]
            seen += targets.shape[0]
            if need_update:
                optimizer.zero_grad(set_to_none=True)
                global_step += 1
                scheduler.step_update(num_updates=global_step)
                if model_ema is not None:
                    model_ema.update(model, step=global_step)
                if hp.checkpoint_interval and global_step % hp.checkpoint_interval == 0 \
                        and batch_idx + 1 < batches_per_epoch:
                    save('last.pth.tar', epoch, batch_idx + 1, (loss_sum, seen, skipped))
            if progress is not None:
                progress.set_postfix(loss=f'{loss.item():.3f}',
                                     img_s=f'{(seen - resumed_seen) / (time.perf_counter() - tic):.0f}')
                progress.update()
        if progress is not None:
            progress.close()
        start_batch = 0
        images_per_second = (seen - resumed_seen) * world_size / (time.perf_counter() - tic)

        train_loss = torch.tensor([loss_sum, seen, skipped], dtype=torch.float64)
        if world_size > 1:
            dist.all_reduce(train_loss)
        loss_sum, seen, skipped = train_loss.tolist()
        if world_size > 1:  # each rank's BN running stats are EMAs of its own batches: make them one
            timm.utils.distribute_bn(model, world_size, reduce=True)
        metrics = evaluate(model, val_loader, device, amp_autocast, world_size, hp.channels_last)
        row = {'epoch': epoch, 'train_loss': loss_sum / max(seen, 1),
               **{f'eval_{k}': metrics[k] for k in ('loss', 'top1', 'top5')}}
        if model_ema is not None:
            ema_metrics = evaluate(model_ema, val_loader, device, amp_autocast, world_size, hp.channels_last)
            row.update({f'eval_ema_{k}': ema_metrics[k] for k in ('loss', 'top1', 'top5')})
        row['lr'] = optimizer.param_groups[0]['lr']
        history.append(row)
        _logger.info(f'epoch {epoch + 1}/{hp.epochs}: train loss {row["train_loss"]:.4f}, val loss '
                     f'{metrics["loss"]:.4f}, top-1 {metrics["top1"]:.2f}%, top-5 {metrics["top5"]:.2f}%, '
                     f'lr {row["lr"]:.4g}, {images_per_second:.0f} img/s'
                     + (f', {int(skipped)} unreadable images skipped' if skipped else ''))
        is_best = metrics['top1'] > best['top1']
        if is_best:
            best = {'top1': metrics['top1'], 'epoch': epoch}
        save('last.pth.tar', epoch + 1, 0)
        if rank == 0:
            if is_best:
                save('model_best.pth.tar', epoch + 1, 0)
            write_summary(history, output_dir / 'summary.csv')
            if hp.plots:
                lrs = [scheduler._get_values(k, on_epoch=False)[0] for k in range(hp.epochs * updates_per_epoch)]
                plot_lr(lrs, updates_per_epoch, output_dir / 'lr.png', f'{hp.sched} schedule, {lr_message}')
                plot_curves(history, output_dir / 'curves.png')

    if rank == 0:
        _logger.info(f'best top-1 {best["top1"]:.2f}% (epoch {best["epoch"] + 1}). Checkpoints: '
                     f'{output_dir / "last.pth.tar"}, {output_dir / "model_best.pth.tar"}; summary: '
                     f'{output_dir / "summary.csv"}' + (f'; plots: {output_dir / "lr.png"}, '
                                                        f'{output_dir / "curves.png"}' if hp.plots else ''))
        if hp.export_dir or hp.push_to_hub:
            export_checkpoint(output_dir / 'model_best.pth.tar', hp.export_dir or output_dir / 'hub',
                              push_to_hub=hp.push_to_hub, use_ema=hp.export_ema, overwrite=True)
    if world_size > 1:
        dist.destroy_process_group()
    return 0


def _warn_resume_overrides(saved: dict[str, Any], hp: TrainHparams, cli_keys: set[str]) -> None:
    """--resume restores the optimizer and schedule of the checkpoint: say so when the command line asks otherwise."""
    restored = ('lr', 'lr_base', 'epochs', 'sched', 'warmup_epochs', 'decay_milestones', 'decay_rate', 'batch_size',
                'grad_accum_steps', 'opt', 'momentum', 'weight_decay')
    ignored = sorted(k for k in restored if k in cli_keys and k in saved and saved[k] != getattr(hp, k))
    if ignored:
        _logger.warning("--resume: the checkpoint's optimizer and lr schedule are restored, so the new values of "
                        f'{", ".join(ignored)} do not take effect (start a new run to change them).')


def _progress(total: int, epoch: int, epochs: int):
    from tqdm import tqdm
    return tqdm(total=total, desc=f'epoch {epoch + 1}/{epochs}', leave=False, dynamic_ncols=True)


def run(argv: list[str] | None = None) -> int:
    """``main`` with the errors a user can fix turned into one clear line and a non-zero exit code."""
    try:
        return main(argv)
    except NonFiniteLossError as e:
        print(f'error: {e}', file=sys.stderr)
        return 3
    except BadImageError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    except (ExportError, HubPushError) as e:  # training finished; checkpoints (and the export folder) are intact
        print(f'error: {e}', file=sys.stderr)
        return 1 if isinstance(e, HubPushError) else 2


if __name__ == '__main__':
    sys.exit(run())
