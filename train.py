#!/usr/bin/env python3
"""Train any timm model with the refinements of *Bag of Tricks for Image Classification* (He et al., 2019).

    python train.py --hparams hparams/quickstart.yaml [--KEY VALUE ...]
    python train.py --resume output/quickstart/digits-resnet18d_tiny        # a run folder or a checkpoint
    torchrun --nproc_per_node 2 train.py --hparams hparams/cifar10.yaml --data_dir ../shared/data/cifar10

Exit codes: 0 done, 1 Hub push failed (export kept), 2 bad input (one line, nothing written), 3 non-finite loss or
weights, 130 interrupted.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import timm
import timm.data
import timm.utils
import torch
import torch.distributed as dist
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

import timm_bot
from timm_bot.amp import create_amp
from timm_bot.checkpoint import create_pretrained_model, load_checkpoint, resolve_architecture, save_checkpoint
from timm_bot.data import BadImageError, check_same_classes, collate_skip_bad, create_image_dataset
from timm_bot.distill import DistillationLoss, load_teacher
from timm_bot.evaluate import evaluate
from timm_bot.export import ExportError, HubPushError, check_repo_id, export_checkpoint
from timm_bot.hparams import TrainHparams, build_parser, check_resume_changes, load_hparams, resolve_device
from timm_bot.loss import BatchMixup, SmoothedCrossEntropy
from timm_bot.models import paper_init_
from timm_bot.optim import create_paper_optimizer, resolve_lr
from timm_bot.plots import plot_curves, plot_lr
from timm_bot.sampler import ResumableSampler, SeededTransformDataset, rng_state, set_rng_state
from timm_bot.scheduler import create_paper_scheduler
from timm_bot.transforms import create_paper_train_transform

_logger = logging.getLogger('train')


class TrainingStopped(RuntimeError):
    """The loss or the weights became NaN/inf; the last checkpoint on disk is left as it was."""


@dataclasses.dataclass
class TrainState:
    """Where the run is; saved under these names in every checkpoint, beside the model, optimizer and RNG states."""
    epoch: int = 0
    batch_in_epoch: int = 0
    global_step: int = 0
    best: dict = dataclasses.field(default_factory=lambda: {'top1': -1.0, 'epoch': -1})
    history: list = dataclasses.field(default_factory=list)
    epoch_stats: list = dataclasses.field(default_factory=lambda: [0.0, 0, 0])  # loss sum, images, skipped


def create_model(hp: TrainHparams, num_classes: int, resume: dict | None) -> tuple[torch.nn.Module, str]:
    """Any timm model with the paper's init (sections 2, 3.1), or a resumed run's architecture; (model, log line)."""
    if resume:  # weights come from the checkpoint
        return timm.create_model(resume['arch'], **dict(resume['model_args'], num_classes=num_classes)), ''
    kwargs = dict(num_classes=num_classes, **({'drop_rate': hp.drop_rate} if hp.drop_rate else {}))
    if hp.pretrained:
        return create_pretrained_model(hp.model, **kwargs), 'pretrained: weight_init and zero_init_last not applied'
    model = timm.create_model(hp.model, **kwargs)
    return model, paper_init_(model, hp.weight_init, hp.zero_init_last)


def setup(argv: list[str] | None) -> dict[str, Any]:
    """Everything that can fail on bad input, before any file is written: hparams, resume, device, data, model."""
    args = build_parser(__doc__).parse_args(argv)
    resume, resume_path = None, None
    if args.resume:
        resume_path = Path(args.resume) / 'last.pth.tar' if Path(args.resume).is_dir() else Path(args.resume)
        resume = dict(load_checkpoint(resume_path), path=str(resume_path))
        if 'optimizer' not in resume or 'args' not in resume:
            raise ValueError(f'--resume {resume_path}: not a train.py checkpoint (no optimizer state)')
    hp = load_hparams(args.hparams, {k: v for k, v in vars(args).items() if k not in ('hparams', 'resume')},
                      base=resume and resume['args'])
    if hp.push_to_hub:
        check_repo_id(hp.push_to_hub)
    world_size, rank = int(os.environ.get('WORLD_SIZE', 1)), int(os.environ.get('RANK', 0))
    device = resolve_device(hp.device)
    if device.type == 'cuda' and world_size > 1:
        device = torch.device('cuda', int(os.environ.get('LOCAL_RANK', 0)))
    train_set = create_image_dataset(hp.data_dir, hp.train_split, skip_bad_images=hp.skip_bad_images)
    val_set = create_image_dataset(hp.data_dir, hp.val_split, skip_bad_images=hp.skip_bad_images)
    labels = list(train_set.classes)
    check_same_classes(labels, val_set.classes, f'the {hp.val_split} split')
    lr, lr_message = resolve_lr(hp.lr, hp.batch_size, world_size, hp.grad_accum_steps, hp.lr_base, hp.lr_base_size)
    if resume:
        check_same_classes(resume['label_names'], labels, f'{hp.data_dir} (the data of --resume {resume_path})')
        check_resume_changes(resume['args'], hp, lr)
        if hp.epochs < resume['epoch'] + (resume['batch_in_epoch'] > 0):
            raise ValueError(f'hparams: epochs={hp.epochs} but the run already trained {resume["epoch"]} epochs')
    arch = (resume['arch'], resume['model_args'], resume['source']) if resume else resolve_architecture(hp.model)
    timm.utils.random_seed(hp.seed, rank)
    model, init_message = create_model(hp, len(labels), resume)
    data_cfg = timm.data.resolve_data_config(model=model)
    mean, std = list(hp.mean or data_cfg['mean']), list(hp.std or data_cfg['std'])
    criterion = SmoothedCrossEntropy(hp.smoothing, hp.smoothing_mode)  # section 5.2, mixup-aware (5.4)
    if hp.teacher:  # section 5.3
        teacher, t_cfg = load_teacher(hp.teacher, num_classes=len(labels), label_names=labels)
        criterion = DistillationLoss(teacher, criterion, hp.temperature, mean, std, t_cfg['mean'], t_cfg['std'])
    meta = dict(arch=arch[0], model_args=arch[1], source=arch[2], num_classes=len(labels), label_names=labels,
                data_config={'input_size': [3, hp.img_size, hp.img_size], 'crop_pct': hp.crop_pct, 'mean': mean,
                             'std': std, 'interpolation': hp.interpolation, 'crop_mode': 'center'},
                args=dict(dataclasses.asdict(hp), lr=lr))
    return dict(hp=hp, resume=resume, rank=rank, world_size=world_size, device=device, train_set=train_set,
                val_set=val_set, model=model, criterion=criterion, lr_message=lr_message, init_message=init_message,
                meta=meta)


def create_loaders(hp: TrainHparams, train_set, val_set, data_config: dict, rank: int, world_size: int):
    """Paper augmentation (section 2) seeded per sample for exact resume; eval: resize, center crop (data_config)."""
    transform = create_paper_train_transform(
        hp.img_size, scale=tuple(hp.scale), ratio=tuple(hp.ratio), hflip=hp.hflip, color_jitter=hp.color_jitter,
        hue=hp.color_jitter if hp.hue_jitter else 0.0, pca_lighting=hp.pca_lighting, mean=data_config['mean'],
        std=data_config['std'], interpolation=hp.interpolation)
    val_set.transform = timm.data.create_transform(**data_config, is_training=False)  # what validate.py uses
    # A private generator: the loader's base seed must not come from the global RNG that mixup draws from.
    common = dict(batch_size=hp.batch_size, num_workers=hp.workers, collate_fn=collate_skip_bad,
                  persistent_workers=hp.workers > 0, pin_memory=hp.pin_memory,
                  generator=torch.Generator().manual_seed(hp.seed))
    train_sampler = ResumableSampler(len(train_set), hp.batch_size, hp.seed, rank, world_size)
    val_sampler = ResumableSampler(len(val_set), hp.batch_size, hp.seed, rank, world_size, False, False)
    return (DataLoader(SeededTransformDataset(train_set, transform), sampler=train_sampler, **common),
            DataLoader(val_set, sampler=val_sampler, **common))


def create_training(hp: TrainHparams, r: dict[str, Any], batches: int) -> dict[str, Any]:
    """NAG, no bias decay, linear scaling (2, 3.1), warmup + cosine (5.1) or step (2), FP16/BF16 (3.2), mixup (5.4)."""
    model, device, world_size = r['model'], r['device'], r['world_size']
    model.to(device, memory_format=torch.channels_last if hp.channels_last else torch.preserve_format)
    train_model = torch.compile(model) if hp.torchcompile else model
    if world_size > 1:
        train_model = DistributedDataParallel(train_model, device_ids=[device] if device.type == 'cuda' else None)
    optimizer = create_paper_optimizer(model, hp.opt, r['meta']['args']['lr'], hp.weight_decay, hp.momentum,
                                       hp.no_bias_decay)
    decayed, not_decayed = ([p for g in optimizer.param_groups if (g['weight_decay'] > 0) == d for p in g['params']]
                            for d in (True, False))  # section 3.1's split, as the optimizer holds it
    _logger.info(f'{r["lr_message"]}; global batch {hp.batch_size * world_size * hp.grad_accum_steps}; weight decay '
                 f'{hp.weight_decay:g} on {len(decayed)} tensors, none on {len(not_decayed)}')
    updates_per_epoch = math.ceil(batches / hp.grad_accum_steps)
    scheduler = create_paper_scheduler(optimizer, hp.sched, hp.epochs, updates_per_epoch, hp.warmup_epochs,
                                       hp.decay_milestones, hp.decay_rate)
    autocast, loss_scaler = create_amp(device, hp.amp, hp.amp_dtype)
    return dict(model=model, train_model=train_model, criterion=r['criterion'].to(device), optimizer=optimizer,
                scheduler=scheduler, updates_per_epoch=updates_per_epoch, loss_scaler=loss_scaler, autocast=autocast,
                model_ema=timm.utils.ModelEmaV3(model, decay=hp.model_ema_decay) if hp.model_ema else None,
                mixup=BatchMixup(hp.mixup) if hp.mixup > 0 else None, device=device, last_checkpoint='none written yet')


def train_one_epoch(epoch: int, loader: DataLoader, t: dict[str, Any], state: TrainState, hp: TrainHparams,
                    save: Any) -> float:
    """One epoch from ``state.batch_in_epoch`` on; ``state`` is current after every batch. Returns images/s."""
    model, criterion, optimizer = t['train_model'], t['criterion'], t['optimizer']
    model.train()
    criterion.train()
    loss_sum, seen, skipped = state.epoch_stats
    batches = len(loader.sampler) // hp.batch_size + state.batch_in_epoch
    bar = tqdm(total=batches, initial=state.batch_in_epoch, desc=f'epoch {epoch + 1}/{hp.epochs}', leave=False,
               disable=not sys.stderr.isatty() or not _logger.isEnabledFor(logging.INFO))  # else log lines
    tic, seen_at_start = time.perf_counter(), seen
    for batch_idx, (images, targets, num_skipped) in enumerate(loader, start=state.batch_in_epoch):
        skipped += num_skipped
        if images is None:  # unreadable images, or a single readable one (BatchNorm needs two)
            continue
        images, targets = images.to(t['device'], non_blocking=True), targets.to(t['device'], non_blocking=True)
        if hp.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        images, target = t['mixup'](images, targets) if t['mixup'] else (images, targets)  # section 5.4
        update = (batch_idx + 1) % hp.grad_accum_steps == 0 or batch_idx + 1 == batches
        with contextlib.nullcontext() if update or not hasattr(model, 'no_sync') else model.no_sync():
            with t['autocast']():
                logits = model(images)
                loss = criterion(logits, images, target) if hp.teacher else criterion(logits, target)
            loss_value = loss.item()  # the one host read of the loss per batch
            if not math.isfinite(loss_value):
                raise TrainingStopped(f'the loss is {loss_value} at epoch {epoch + 1}, batch {batch_idx + 1}, update '
                                      f'{state.global_step + 1}; the last checkpoint ({t["last_checkpoint"]}) is '
                                      f'intact. Lower lr (now {optimizer.param_groups[0]["lr"]:.4g}) or check data.')
            if t['loss_scaler'] is not None:
                t['loss_scaler'](loss / hp.grad_accum_steps, optimizer, need_update=update)
            else:
                (loss / hp.grad_accum_steps).backward()
                if update:
                    optimizer.step()
        loss_sum, seen = loss_sum + loss_value * targets.shape[0], seen + targets.shape[0]
        if update:
            optimizer.zero_grad(set_to_none=True)
            state.global_step += 1
            t['scheduler'].step_update(num_updates=state.global_step)
            if t['model_ema'] is not None:
                t['model_ema'].update(t['model'], step=state.global_step)
        state.batch_in_epoch, state.epoch_stats = batch_idx + 1, [loss_sum, seen, skipped]
        if update and hp.checkpoint_interval and state.global_step % hp.checkpoint_interval == 0 and \
                batch_idx + 1 < batches:
            save('last.pth.tar')
        rate = (seen - seen_at_start) / (time.perf_counter() - tic)
        bar.set_postfix(loss=f'{loss_value:.3f}', img_s=f'{rate:.0f}', refresh=False)
        bar.update()
        if bar.disable and hp.log_interval and (batch_idx + 1) % hp.log_interval == 0:
            eta = datetime.timedelta(seconds=round((batches - batch_idx - 1) * hp.batch_size / max(rate, 1e-9)))
            _logger.info(f'epoch {epoch + 1}/{hp.epochs} [{batch_idx + 1}/{batches}] loss {loss_value:.4f} '
                         f'lr {optimizer.param_groups[0]["lr"]:.4g} {rate:.0f} img/s ETA {eta}')
    bar.close()
    return (seen - seen_at_start) / (time.perf_counter() - tic)


def evaluate_epoch(epoch: int, t: dict[str, Any], state: TrainState, hp: TrainHparams, val_loader: DataLoader,
                   world_size: int) -> dict[str, float]:
    """Reduce the epoch's statistics over ranks, evaluate the model (and its EMA) and record the epoch."""
    totals = torch.tensor(state.epoch_stats, dtype=torch.float64)
    if world_size > 1:
        dist.all_reduce(totals)
        timm.utils.distribute_bn(t['model'], world_size, reduce=True)  # one set of BN running stats
    row = {'epoch': epoch, 'train_loss': totals[0].item() / max(totals[1].item(), 1)}
    for prefix, model in (('eval_', t['model']), ('eval_ema_', t['model_ema'])):
        if model is not None:
            metrics = evaluate(model, val_loader, t['device'], t['autocast'], world_size, hp.channels_last)
            row.update({prefix + k: metrics[k] for k in ('loss', 'top1', 'top5')})
    row['lr'] = t['optimizer'].param_groups[0]['lr']
    state.history.append(row)
    state.epoch, state.batch_in_epoch, state.epoch_stats = epoch + 1, 0, [0.0, 0, 0]
    if row['eval_top1'] > state.best['top1']:
        state.best = {'top1': row['eval_top1'], 'epoch': epoch}
    return dict(row, skipped=totals[2].item())


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    try:
        r = setup(argv)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    hp, resume, model, device, world_size, rank, meta = (r[k] for k in ('hp', 'resume', 'model', 'device',
                                                                         'world_size', 'rank', 'meta'))
    if world_size > 1:
        dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo',
                                timeout=datetime.timedelta(seconds=hp.dist_timeout))
    logging.getLogger().setLevel(logging.INFO if rank == 0 else logging.WARNING)
    if device.type == 'cuda':
        torch.cuda.set_device(device)
    if device.type == 'cpu' and hp.workers > 0:  # loader workers need cores too
        torch.set_num_threads(max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) - hp.workers)))
    torch.use_deterministic_algorithms(hp.deterministic)
    _logger.info(f'device {device} ({world_size} process(es), {torch.get_num_threads()} threads each); {hp.model}: '
                 f'{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, {meta["num_classes"]} classes'
                 + (f'; {r["init_message"]}' if r['init_message'] else ''))
    train_loader, val_loader = create_loaders(hp, r['train_set'], r['val_set'], meta['data_config'], rank, world_size)
    t = create_training(hp, r, len(train_loader))
    state = restore(t, resume, hp) if resume else TrainState()
    if resume:
        output_dir = Path(resume['path']).parent
        _logger.info(f'resuming at epoch {state.epoch + 1}, batch {state.batch_in_epoch} in {output_dir}')
    else:
        name = hp.experiment or f'{time.strftime("%Y%m%d-%H%M%S")}-{hp.model.replace("/", "_").replace(":", "_")}'
        output_dir = Path(timm.utils.get_outdir(hp.output, name, inc=True) if rank == 0 else Path(hp.output) / name)
        if rank == 0:
            (output_dir / 'args.yaml').write_text(yaml.safe_dump(meta['args'], sort_keys=False))
        _logger.info(f'writing to {output_dir}')

    def save(*names: str) -> None:
        ckpt = checkpoint_state(t, state, meta)  # raises before writing when the weights are not finite
        if rank == 0:
            for name in names:
                save_checkpoint(ckpt, output_dir / name)
            t['last_checkpoint'] = f'{output_dir / names[0]}, epoch {state.epoch + 1} batch {state.batch_in_epoch}'

    if rank == 0 and hp.plots:  # the whole schedule is known up front (section 3.1 warmup, 5.1 cosine / 2 step)
        per_epoch = t['updates_per_epoch']
        plot_lr(t['scheduler'].lr_per_batch(hp.epochs * per_epoch), per_epoch, output_dir / 'lr.png',
                f'{hp.sched} schedule, {r["lr_message"]}')
    if state.epoch == hp.epochs:
        _logger.info(f'the run already trained its {hp.epochs} epochs: nothing to do (--epochs N extends it)')
    try:
        for epoch in range(state.epoch, hp.epochs):
            train_loader.sampler.set_epoch(epoch, state.batch_in_epoch)
            images_per_second = train_one_epoch(epoch, train_loader, t, state, hp, save) * world_size
            row = evaluate_epoch(epoch, t, state, hp, val_loader, world_size)
            _logger.info(f'epoch {epoch + 1}/{hp.epochs}: train loss {row["train_loss"]:.4f}, val loss '
                         f'{row["eval_loss"]:.4f}, top-1 {row["eval_top1"]:.2f}%, top-5 {row["eval_top5"]:.2f}%'
                         + (f', EMA top-1 {row["eval_ema_top1"]:.2f}%' if hp.model_ema else '')
                         + f', lr {row["lr"]:.4g}, {images_per_second:.0f} img/s'
                         + (f', {row["skipped"]:.0f} images skipped (unreadable, or alone in a batch)'
                            if row['skipped'] else ''))
            save('last.pth.tar', *(['model_best.pth.tar'] if state.best['epoch'] == epoch else []))
            if rank == 0:
                write_summary(state.history, output_dir / 'summary.csv')
                if hp.plots:
                    plot_curves(state.history, output_dir / 'curves.png')
    except KeyboardInterrupt:
        print(f'interrupted at epoch {state.epoch + 1}/{hp.epochs}, batch {state.batch_in_epoch}; last checkpoint: '
              f'{t["last_checkpoint"]}; resume with: python train.py --resume {output_dir}', file=sys.stderr)
        return 130
    if rank == 0:
        _logger.info(f'best top-1 {state.best["top1"]:.2f}% (epoch {state.best["epoch"] + 1}); checkpoints, '
                     f'summary.csv and plots in {output_dir}')
        if hp.export_dir or hp.push_to_hub:
            export_checkpoint(output_dir / 'model_best.pth.tar', hp.export_dir or output_dir / 'hub',
                              push_to_hub=hp.push_to_hub, use_ema=hp.export_ema, overwrite=True)
    if world_size > 1:
        dist.destroy_process_group()
    return 0


def checkpoint_state(t: dict[str, Any], state: TrainState, meta: dict[str, Any]) -> dict[str, Any]:
    """Everything --resume, validate.py and export need, as plain containers (loads with weights_only=True)."""
    ckpt = dict(meta, **dataclasses.asdict(state), state_dict=timm.utils.unwrap_model(t['model']).state_dict(),
                **{k: t[k].state_dict() for k in ('optimizer', 'scheduler', 'loss_scaler') if t[k] is not None},
                rng=rng_state(), version=timm_bot.__version__)
    if t['model_ema'] is not None:
        ckpt['state_dict_ema'] = t['model_ema'].module.state_dict()
    if not all(w.isfinite().all() for w in ckpt['state_dict'].values() if w.is_floating_point()):
        raise TrainingStopped(f'the weights became NaN/inf by update {state.global_step} (epoch {state.epoch + 1}) and '
                              f'were not saved; the last checkpoint ({t["last_checkpoint"]}) is intact. Lower lr.')
    return ckpt


def restore(t: dict[str, Any], resume: dict[str, Any], hp: TrainHparams) -> TrainState:
    """The states of a ``--resume`` checkpoint; a new ``epochs`` rebuilds the schedule for the new length."""
    t['model'].load_state_dict(resume['state_dict'])
    for key in ('optimizer', 'loss_scaler'):  # a new amp setting starts a new loss scale
        if t[key] is not None and key in resume:
            t[key].load_state_dict(resume[key])
    if hp.epochs == resume['args']['epochs']:
        t['scheduler'].load_state_dict(resume['scheduler'])
    else:
        _logger.info(f'epochs {resume["args"]["epochs"]} -> {hp.epochs}: the {hp.sched} schedule is rebuilt for '
                     f'{hp.epochs} epochs and continues from update {resume["global_step"]}')
    if t['model_ema'] is not None:
        t['model_ema'].module.load_state_dict(resume['state_dict_ema'])
    t['scheduler'].step_update(num_updates=resume['global_step'])
    set_rng_state(resume['rng'])
    t['last_checkpoint'] = resume['path']
    return TrainState(**{f.name: resume[f.name] for f in dataclasses.fields(TrainState)})


def write_summary(history: list[dict], path: Path) -> None:
    """summary.csv in timm's format, rewritten whole from the history (a resumed run has no gaps)."""
    tmp = path.with_name(path.name + '.tmp')
    tmp.unlink(missing_ok=True)
    for row in history:
        evals = {k[len('eval_'):]: v for k, v in row.items() if k.startswith('eval_')}
        timm.utils.update_summary(row['epoch'], {'loss': row['train_loss']}, evals, tmp, lr=row['lr'])
    os.replace(tmp, path)


def run(argv: list[str] | None = None) -> int:
    """``main`` with the failures a user can fix as one line and an exit code."""
    try:
        return main(argv)
    except (TrainingStopped, BadImageError, ExportError, HubPushError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 3 if isinstance(e, TrainingStopped) else 1 if isinstance(e, HubPushError) else 2


if __name__ == '__main__':
    sys.exit(run())
