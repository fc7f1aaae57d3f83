#!/usr/bin/env python3
"""Train any timm model with the refinements of *Bag of Tricks for Image Classification* (He et al., 2019).

    python train.py --hparams hparams/quickstart.yaml [--KEY VALUE ...]
    python train.py --resume output/quickstart/digits-resnet18d_tiny        # a run folder or a checkpoint
    torchrun --nproc_per_node 2 train.py --hparams hparams/cifar10.yaml --data_dir /data/cifar10
    torchrun --nproc_per_node 8 --max-restarts 3 train.py --hparams R.yaml --experiment NAME --resume auto

SIGTERM, SIGUSR1 and SIGINT (Ctrl-C) finish the current update, write last.pth.tar there and exit; with
`--resume auto` the same command continues the run. Exit codes: 0 done, 1 Hub push failed (export kept), 2 bad
input (one line, nothing written), 3 non-finite loss or weights, 128 + N stopped by signal N with a checkpoint
(130 SIGINT, 138 SIGUSR1, 143 SIGTERM).
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import timm
import timm.data
import timm.utils
import torch
import torch.distributed as dist
import yaml
from timm.scheduler.scheduler import Scheduler
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import timm_bot
from timm_bot.amp import create_amp
from timm_bot.batch_augment import BatchNormalize, BatchPaperAugment, ImageWithParams
from timm_bot.checkpoint import (
    create_pretrained_model,
    link_checkpoint,
    load_checkpoint,
    resolve_architecture,
    save_checkpoint,
)
from timm_bot.data import BadImageError, check_same_classes, collate_skip_bad, create_image_dataset
from timm_bot.distill import DistillationLoss, load_teacher
from timm_bot.distributed import ProcessInfo, all_gather, all_reduce_sum, any_rank, init_distributed, resolve_device
from timm_bot.evaluate import evaluate
from timm_bot.export import ExportError, HubPushError, check_export_destination, check_repo_id, export_checkpoint
from timm_bot.graceful_stop import GracefulStop, ignore_stop_signals
from timm_bot.hparams import TrainHparams, build_parser, check_resume_changes, load_hparams, resume_target
from timm_bot.loggers import MetricsLogger, check_logger_extras
from timm_bot.loss import BatchMixup, SmoothedCrossEntropy
from timm_bot.models import paper_init_
from timm_bot.optim import create_paper_optimizer, resolve_lr
from timm_bot.plots import plot_curves, plot_lr
from timm_bot.sampler import ResumableSampler, SeededTransformDataset, rng_state, set_rng_state
from timm_bot.scheduler import create_paper_scheduler
from timm_bot.transforms import create_paper_eval_transform, create_paper_train_transform
from timm_bot.wds import WdsImageDataset

_logger = logging.getLogger('train')
RUN_FILES = ('args.yaml', 'lr.png')  # what a run writes before its first checkpoint


class TrainingStopped(RuntimeError):
    """The loss or the weights became NaN/inf; the last checkpoint on disk is left as it was."""


@dataclasses.dataclass
class RunInfo:
    """What every checkpoint records beside the weights: architecture, classes, eval preprocessing, hparams."""
    arch: str
    model_args: dict
    source: str | None
    num_classes: int
    label_names: list[str]
    data_config: dict
    args: dict
    world_size: int


@dataclasses.dataclass
class Run:
    """One run as :func:`setup` resolves it from the command line, before anything is written."""
    hp: TrainHparams
    process: ProcessInfo
    device: torch.device
    info: RunInfo
    resume: dict | None  # the checkpoint this run continues
    output_dir: Path | None  # None: a new folder under hp.output, chosen at the start
    train_set: Dataset
    val_set: Dataset
    model: torch.nn.Module
    criterion: torch.nn.Module
    lr_message: str
    init_message: str


@dataclasses.dataclass
class Training:
    """What trains the model: optimizer (2, 3.1), schedule (3.1, 5.1), AMP (3.2), mixup (5.4), EMA, DDP/compile."""
    model: torch.nn.Module  # the bare model: evaluated, checkpointed, averaged by the EMA
    train_model: torch.nn.Module  # what the loop calls: the model under DDP and/or torch.compile
    criterion: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Scheduler
    updates_per_epoch: int
    autocast: Callable
    loss_scaler: timm.utils.NativeScaler | None
    model_ema: timm.utils.ModelEmaV3 | None
    mixup: BatchMixup | None
    last_checkpoint: str = 'none written yet'


@dataclasses.dataclass
class Data:
    """The loaders, and the device side of the split augmentation (section 2 steps 4-6 and evaluation's
    normalization run on the batch, on the training device) or None when the loader does it per image."""
    train: DataLoader
    val: DataLoader
    train_augment: BatchPaperAugment | None
    val_normalize: BatchNormalize | None

    @property
    def order(self) -> ResumableSampler | WdsImageDataset:
        """What sets the epoch and the batch to start from: the sampler, or streamed shards themselves."""
        return self.train.dataset if isinstance(self.train.dataset, WdsImageDataset) else self.train.sampler


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


def setup(argv: list[str] | None) -> Run:
    """Everything that can fail on bad input, before any file is written: hparams, resume, device, data, model."""
    args = build_parser(__doc__).parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k != 'hparams'}
    resume_path = resume_target(args.hparams, overrides)
    resume = dict(load_checkpoint(resume_path), path=str(resume_path)) if resume_path else None
    if resume and ('optimizer' not in resume or 'args' not in resume):
        raise ValueError(f'--resume {resume_path}: not a train.py checkpoint (no optimizer state)')
    hp = load_hparams(args.hparams, overrides, base=resume and {'device_augment': False, **resume['args']})  # < 0.3
    if hp.push_to_hub:
        check_repo_id(hp.push_to_hub)
    if hp.export_dir:  # refused now, not after the whole run
        check_export_destination(Path(hp.export_dir), Path(hp.output), overwrite=True)
    process = ProcessInfo.from_env()
    device = resolve_device(hp.device, process.local_rank, process.world_size)
    check_logger_extras(hp.log_tensorboard, hp.log_wandb)
    sources = dict(skip_bad_images=hp.skip_bad_images, input_key=hp.input_key, target_key=hp.target_key,
                   class_map=hp.class_map)
    train_set = create_image_dataset(hp.data_dir, hp.train_split, **sources)
    val_set = create_image_dataset(hp.data_dir, hp.val_split, **sources)
    labels = list(train_set.classes)
    check_same_classes(labels, val_set.classes, f'the {hp.val_split} split')
    lr, lr_message = resolve_lr(hp.lr, hp.batch_size, process.world_size, hp.grad_accum_steps, hp.lr_base,
                                hp.lr_base_size)
    if resume:
        check_resumable(resume, hp, lr, labels, process)
        if isinstance(train_set, WdsImageDataset) and hp.workers != resume['args']['workers']:
            _logger.warning(f'workers {resume["args"]["workers"]} -> {hp.workers}: streamed shards are dealt to the '
                            'workers, so the rest of this epoch is read in another order (not bit-exact)')
    arch = (resume['arch'], resume['model_args'], resume['source']) if resume else resolve_architecture(hp.model)
    timm.utils.random_seed(hp.seed, process.rank)
    model, init_message = create_model(hp, len(labels), resume)
    data_cfg = timm.data.resolve_data_config(model=model)
    mean, std = list(hp.mean or data_cfg['mean']), list(hp.std or data_cfg['std'])
    criterion = SmoothedCrossEntropy(hp.smoothing, hp.smoothing_mode)  # section 5.2, mixup-aware (5.4)
    if hp.teacher:  # section 5.3
        teacher, t_cfg = load_teacher(hp.teacher, num_classes=len(labels), label_names=labels, use_ema=hp.teacher_ema)
        criterion = DistillationLoss(teacher, criterion, hp.temperature, mean, std, t_cfg['mean'], t_cfg['std'])
    data_config = {'input_size': [3, hp.img_size, hp.img_size], 'crop_pct': hp.crop_pct, 'mean': mean, 'std': std,
                   'interpolation': hp.interpolation, 'crop_mode': 'center'}
    saved_args = dict(dataclasses.asdict(hp), lr=lr, resume='auto' if hp.resume == 'auto' else None)
    info = RunInfo(arch[0], arch[1], arch[2], len(labels), labels, data_config, saved_args, process.world_size)
    output_dir = Path(resume['path']).parent if resume else \
        Path(hp.output) / hp.experiment if hp.resume == 'auto' else None
    return Run(hp, process, device, info, resume, output_dir, train_set, val_set, model, criterion, lr_message,
               init_message)


def check_resumable(resume: dict, hp: TrainHparams, lr: float, labels: list[str], process: ProcessInfo) -> None:
    """Refuse, in one line, a resume that would not continue the same run: data, hparams, length, process count."""
    check_same_classes(resume['label_names'], labels, f'{hp.data_dir} (the data of --resume {resume["path"]})')
    check_resume_changes(resume['args'], hp, lr)
    if hp.epochs < resume['epoch'] + (resume['batch_in_epoch'] > 0):
        raise ValueError(f'hparams: epochs={hp.epochs} but the run already trained {resume["epoch"]} epochs')
    saved = resume.get('world_size', 1)
    if saved != process.world_size:
        raise ValueError(f'--resume {resume["path"]}: the run was trained by {saved} process(es), this is '
                         f'{process.world_size}: the data order and the global batch would change; resume it with '
                         f'{saved} (torchrun --nproc_per_node)')


def create_loaders(run: Run) -> Data:
    """Paper augmentation (section 2) seeded per sample for exact resume; eval: resize, center crop (data_config).
    Map-style sources go through :class:`ResumableSampler`; streamed WebDataset shards order and seed themselves.
    ``device_augment``: the loader ships uint8 crops and each sample's parameters, the device does the rest."""
    hp, process, data_config = run.hp, run.process, run.info.data_config
    train_tf = create_paper_train_transform(
        hp.img_size, scale=hp.scale, ratio=hp.ratio, hflip=hp.hflip, color_jitter=hp.color_jitter,
        hue_jitter=hp.hue_jitter, pca_lighting=hp.pca_lighting, mean=data_config['mean'], std=data_config['std'],
        interpolation=hp.interpolation, device_augment=hp.device_augment)
    val_tf = create_paper_eval_transform(**data_config, device_augment=hp.device_augment)  # what validate.py uses
    augment = normalize = None
    if hp.device_augment:  # the loader ships uint8 crops: steps 4-6 and normalization run on the device
        (train_tf, augment), (val_tf, normalize) = train_tf, val_tf
    run.val_set.transform = val_tf
    # A private generator: the loader's base seed must not come from the global RNG that mixup draws from.
    pin_memory = run.device.type == 'cuda' if hp.pin_memory is None else hp.pin_memory
    common = dict(batch_size=hp.batch_size, num_workers=hp.workers, collate_fn=collate_skip_bad,
                  persistent_workers=hp.workers > 0, pin_memory=pin_memory, worker_init_fn=ignore_stop_signals,
                  generator=torch.Generator().manual_seed(hp.seed))
    ranks = dict(rank=process.rank, world_size=process.world_size)
    device_side = [m.to(run.device) if m is not None else None for m in (augment, normalize)]
    if isinstance(run.train_set, WdsImageDataset):
        run.train_set.transform = train_tf
        return Data(DataLoader(run.train_set.configure(hp.batch_size, hp.seed, training=True, **ranks), **common),
                    DataLoader(run.val_set.configure(hp.batch_size, **ranks), **common), *device_side)
    train_sampler = ResumableSampler(len(run.train_set), hp.batch_size, hp.seed, **ranks)
    val_sampler = ResumableSampler(len(run.val_set), hp.batch_size, hp.seed, shuffle=False, drop_last=False, **ranks)
    return Data(DataLoader(SeededTransformDataset(run.train_set, train_tf), sampler=train_sampler, **common),
                DataLoader(run.val_set, sampler=val_sampler, **common), *device_side)


def create_training(run: Run, batches: int) -> Training:
    """NAG, no bias decay, linear scaling (2, 3.1), warmup + cosine (5.1) or step (2), FP16/BF16 (3.2), mixup (5.4)."""
    hp, model, device = run.hp, run.model, run.device
    memory_format = torch.channels_last if hp.channels_last else torch.preserve_format
    model.to(device, memory_format=memory_format)
    criterion = run.criterion.to(device, memory_format=memory_format)  # the teacher in the student's format
    train_model = model
    if run.process.distributed:  # DDP first, then compile: torch's order for overlapping communication
        train_model = DistributedDataParallel(model, device_ids=[device] if device.type == 'cuda' else None)
    train_model = torch.compile(train_model) if hp.torchcompile else train_model
    optimizer = create_paper_optimizer(model, hp.opt, run.info.args['lr'], hp.weight_decay, hp.momentum,
                                       hp.no_bias_decay)
    decayed, not_decayed = ([p for g in optimizer.param_groups if (g['weight_decay'] > 0) == d for p in g['params']]
                            for d in (True, False))  # section 3.1's split, as the optimizer holds it
    _logger.info(f'{run.lr_message}; global batch {hp.batch_size * run.process.world_size * hp.grad_accum_steps}; '
                 f'weight decay {hp.weight_decay:g} on {len(decayed)} tensors, none on {len(not_decayed)}')
    updates_per_epoch = math.ceil(batches / hp.grad_accum_steps)
    scheduler = create_paper_scheduler(optimizer, hp.sched, hp.epochs, updates_per_epoch, hp.warmup_epochs,
                                       hp.decay_milestones, hp.decay_rate)
    autocast, loss_scaler = create_amp(device, hp.amp, hp.amp_dtype, off_if_slow=hp.device == 'auto')
    model_ema = timm.utils.ModelEmaV3(model, decay=hp.model_ema_decay) if hp.model_ema else None
    mixup = BatchMixup(hp.mixup) if hp.mixup > 0 else None
    return Training(model, train_model, criterion, optimizer, scheduler, updates_per_epoch, autocast, loss_scaler,
                    model_ema, mixup)


def refinements(hp: TrainHparams, training: Training) -> str:
    """One log line: which of the paper's refinements (sections 3-5) this run uses."""
    parts = [f'{hp.sched} lr' + (f' after {hp.warmup_epochs:g} warmup epochs' if hp.warmup_epochs else ''),
             f'label smoothing {hp.smoothing:g} ({hp.smoothing_mode})' if hp.smoothing else 'no label smoothing',
             f'mixup alpha {hp.mixup:g}' if hp.mixup else 'no mixup',
             f'distillation from {hp.teacher} at T={hp.temperature:g}' if hp.teacher else 'no distillation',
             f'{hp.amp_dtype} AMP' if training.autocast is not contextlib.nullcontext else 'float32',
             f'EMA {hp.model_ema_decay:g}' if hp.model_ema else 'no EMA']
    return 'refinements: ' + ', '.join(parts)


def to_device(images: torch.Tensor | ImageWithParams, augment: Callable | None, device: torch.device) -> torch.Tensor:
    """A loader batch on the device; split augmentation: uint8 over the bus (4x fewer bytes), steps 4-6 there."""
    if augment is None:
        return images.to(device, non_blocking=True)
    return augment(images.image.to(device, non_blocking=True), images.params)


def read_loss(loss: torch.Tensor, stop: GracefulStop, run: Run) -> tuple[float, bool]:
    """``(loss, stop now)`` with one device read per batch; under DDP every rank gets the same verdict, so a
    non-finite loss or a stop signal on one rank stops all ranks at the same batch instead of hanging the others."""
    stopping = stop.signal is not None
    if not run.process.distributed:
        return loss.item(), stopping
    local = torch.stack([loss.detach().double(), loss.new_tensor(float(stopping), dtype=torch.float64)])
    value, _, total, stops = torch.cat([local, all_reduce_sum(local, run.device)]).tolist()
    return value if math.isfinite(total) else total, stops > 0


def train_one_epoch(epoch: int, data: Data, run: Run, training: Training, state: TrainState,
                    stop: GracefulStop, save: Callable, metrics: MetricsLogger) -> tuple[float, float] | None:
    """One epoch from ``state.batch_in_epoch`` on; ``state`` is current after every batch. Returns (images/s, lr of
    its last batch), or None when a stop signal ended it after an update (``last.pth.tar`` saved there)."""
    hp, device = run.hp, run.device
    model, criterion, optimizer = training.train_model, training.criterion, training.optimizer
    model.train()
    criterion.train()
    loss_sum, seen, skipped = state.epoch_stats
    batches = len(data.train) + state.batch_in_epoch
    bar = tqdm(total=batches, initial=state.batch_in_epoch, desc=f'epoch {epoch + 1}/{hp.epochs}', leave=False,
               disable=not sys.stderr.isatty() or not _logger.isEnabledFor(logging.INFO))  # else log lines
    tic, seen_at_start, lr = time.perf_counter(), seen, optimizer.param_groups[0]['lr']
    for batch_idx, (images, targets, num_skipped) in enumerate(data.train, start=state.batch_in_epoch):
        skipped += num_skipped
        # unreadable images, or a single readable one (BatchNorm needs two): under DDP every rank skips the batch
        if any_rank(images is None, device) if run.process.distributed and hp.skip_bad_images else images is None:
            continue
        images, targets = to_device(images, data.train_augment, device), targets.to(device, non_blocking=True)
        if hp.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        images, target = training.mixup(images, targets) if training.mixup else (images, targets)  # section 5.4
        update = (batch_idx + 1) % hp.grad_accum_steps == 0 or batch_idx + 1 == batches
        lr = optimizer.param_groups[0]['lr']
        with contextlib.nullcontext() if update or not hasattr(model, 'no_sync') else model.no_sync():
            with training.autocast():
                logits = model(images)
                loss = criterion(logits, images, target) if hp.teacher else criterion(logits, target)
            loss_value, stopping = read_loss(loss, stop, run)
            if not math.isfinite(loss_value):
                raise TrainingStopped(f'the loss is {loss_value} at epoch {epoch + 1}, batch {batch_idx + 1}, update '
                                      f'{state.global_step + 1}; the last checkpoint ({training.last_checkpoint}) is '
                                      f'intact. Lower lr (now {lr:.4g}) or check data.')
            if training.loss_scaler is not None:
                training.loss_scaler(loss / hp.grad_accum_steps, optimizer, need_update=update)
            else:
                (loss / hp.grad_accum_steps).backward()
                if update:
                    optimizer.step()
        loss_sum, seen = loss_sum + loss_value * targets.shape[0], seen + targets.shape[0]
        if update:
            optimizer.zero_grad(set_to_none=True)
            state.global_step += 1
            training.scheduler.step_update(num_updates=state.global_step)
            if training.model_ema is not None:
                training.model_ema.update(training.model, step=state.global_step)
        state.batch_in_epoch, state.epoch_stats = batch_idx + 1, [loss_sum, seen, skipped]
        if update and batch_idx + 1 < batches and (stopping or hp.checkpoint_interval and
                                                   state.global_step % hp.checkpoint_interval == 0):
            save('last.pth.tar')
            if stopping:
                bar.close()
                return None
        rate = (seen - seen_at_start) / (time.perf_counter() - tic)
        if update and hp.log_interval and state.global_step % hp.log_interval == 0:
            metrics.log(state.global_step, {'train/loss': loss_value, 'train/lr': lr, 'train/images_per_second': rate})
        bar.set_postfix(loss=f'{loss_value:.3f}', img_s=f'{rate:.0f}', refresh=False)
        bar.update()
        if bar.disable and hp.log_interval and (batch_idx + 1) % hp.log_interval == 0:
            eta = datetime.timedelta(seconds=round((batches - batch_idx - 1) * hp.batch_size / max(rate, 1e-9)))
            _logger.info(f'epoch {epoch + 1}/{hp.epochs} [{batch_idx + 1}/{batches}] loss {loss_value:.4f} '
                         f'lr {lr:.4g} {rate:.0f} img/s ETA {eta}')
    bar.close()
    return (seen - seen_at_start) / (time.perf_counter() - tic), lr


def evaluate_epoch(epoch: int, lr: float, run: Run, training: Training, state: TrainState,
                   data: Data) -> dict[str, float]:
    """Reduce the epoch's statistics over ranks, evaluate the model (and its EMA) and record the epoch."""
    loss_sum, seen, skipped = all_reduce_sum(state.epoch_stats, run.device).tolist()  # on the device, for NCCL
    for model in (training.model, training.model_ema) if run.process.distributed else ():
        if model is not None:  # one set of BN statistics, as timm's train.py
            timm.utils.distribute_bn(model, run.process.world_size, reduce=True)
    row = {'epoch': epoch, 'train_loss': loss_sum / max(seen, 1)}
    for prefix, model in (('eval_', training.model), ('eval_ema_', training.model_ema)):
        if model is not None:
            metrics = evaluate(model, data.val, run.device, training.autocast, run.hp.channels_last,
                               normalize=data.val_normalize)
            row.update({prefix + k: metrics[k] for k in ('loss', 'top1', 'top5')})
    row['lr'] = lr  # the lr of the epoch's last batch
    state.history.append(row)
    state.epoch, state.batch_in_epoch, state.epoch_stats = epoch + 1, 0, [0.0, 0, 0]
    top1 = row['eval_ema_top1' if run.hp.export_ema else 'eval_top1']  # model_best: the weights to be exported
    if top1 > state.best['top1']:
        state.best = {'top1': top1, 'epoch': epoch}
    return dict(row, skipped=skipped)


def start_processes(run: Run) -> None:
    """Join the other ranks (they must agree on what they resume), then threads, determinism and cuDNN."""
    hp, device, process = run.hp, run.device, run.process
    if hp.deterministic and device.type == 'cuda':  # cuBLAS reads it when CUDA starts (older torch needs it)
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
    if process.distributed:
        init_distributed(device, process, hp.dist_timeout)
        resumes = all_gather(run.resume and (run.resume['path'], run.resume['global_step']), process.world_size)
        if len({str(r) for r in resumes}) > 1:
            raise ValueError(f'the ranks disagree on what to resume ({resumes}): is {hp.output} on a file system '
                             'every node shares?')
    elif device.type == 'cuda':
        torch.cuda.set_device(device)
    logging.getLogger().setLevel(logging.INFO if process.rank == 0 else logging.WARNING)
    torch.use_deterministic_algorithms(hp.deterministic, warn_only=True)  # torch warns about ops it cannot fix
    torch.backends.cudnn.deterministic = hp.deterministic
    torch.backends.cudnn.benchmark = device.type == 'cuda' and not hp.deterministic


def open_output_dir(run: Run) -> tuple[Path, bool]:
    """The run folder (rank 0 creates it; every rank learns its name) and whether this process created it."""
    hp, process = run.hp, run.process
    output_dir, created = run.output_dir, False
    if output_dir is None:  # a new run: a '-1', '-2' suffix if the name is taken
        name = hp.experiment or f'{time.strftime("%Y%m%d-%H%M%S")}-{hp.model.replace("/", "_").replace(":", "_")}'
        output_dir = Path(timm.utils.get_outdir(hp.output, name, inc=True)) if process.rank == 0 else None
        output_dir, created = Path(all_gather(str(output_dir), process.world_size)[0]), True
    elif run.resume is None:  # resume: auto, first start
        created = not output_dir.exists()
        if process.rank == 0:
            output_dir.mkdir(parents=True, exist_ok=True)
    if run.resume is None and process.rank == 0:
        (output_dir / 'args.yaml').write_text(yaml.safe_dump(run.info.args, sort_keys=False))
    return output_dir, created


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    try:
        run = setup(argv)
        start_processes(run)
        _logger.info(f'device {run.device} ({run.process.world_size} process(es), {torch.get_num_threads()} threads '
                     f'each); {run.hp.model}: {sum(p.numel() for p in run.model.parameters()) / 1e6:.2f}M params, '
                     f'{run.info.num_classes} classes' + (f'; {run.init_message}' if run.init_message else ''))
        data = create_loaders(run)
        training = create_training(run, len(data.train))
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    hp, process = run.hp, run.process
    _logger.info(refinements(hp, training))
    state = restore(run, training) if run.resume else TrainState()
    output_dir, created = open_output_dir(run)
    _logger.info(f'resuming at epoch {state.epoch + 1}, batch {state.batch_in_epoch} in {output_dir}' if run.resume
                 else f'writing to {output_dir}')
    resume_command = 'the same command (resume: auto)' if hp.resume == 'auto' else \
        f'python train.py --resume {output_dir}'
    try:
        if process.rank == 0 and hp.plots:  # the whole schedule is known up front (3.1 warmup, 5.1 cosine / 2 step)
            per_epoch = training.updates_per_epoch
            plot_lr(training.scheduler.lr_per_batch(hp.epochs * per_epoch), per_epoch, output_dir / 'lr.png',
                    f'{hp.sched} schedule, {run.lr_message}')
        with GracefulStop() as stop, contextlib.closing(MetricsLogger(
                output_dir, hp.log_tensorboard and process.rank == 0, hp.log_wandb and process.rank == 0,
                hp.wandb_project, hp.wandb_name, run.info.args, state.global_step if run.resume else None)) as metrics:
            if not train_epochs(run, training, state, data, output_dir, stop, metrics):
                return stopped(stop, state, hp, training, resume_command, process.rank)
    except KeyboardInterrupt:  # a second Ctrl-C
        return interrupted(state, hp, training, output_dir, created, resume_command, process.rank)
    if process.rank == 0:
        _logger.info(f'best top-1 {state.best["top1"]:.2f}%{" (EMA)" if hp.export_ema else ""} (epoch '
                     f'{state.best["epoch"] + 1}); checkpoints, summary.csv and plots in {output_dir}')
        if hp.export_dir or hp.push_to_hub:
            exported = export_checkpoint(output_dir / 'model_best.pth.tar', hp.export_dir or output_dir / 'hub',
                                         push_to_hub=hp.push_to_hub, use_ema=hp.export_ema, overwrite=True)
            _logger.info(f'exported to {exported}' + (f', pushed to {hp.push_to_hub}' if hp.push_to_hub else ''))
    if process.distributed:
        dist.destroy_process_group()
    return 0


def train_epochs(run: Run, training: Training, state: TrainState, data: Data, output_dir: Path, stop: GracefulStop,
                 metrics: MetricsLogger) -> bool:
    """Train from ``state`` to the last epoch, saving every epoch; False when a stop signal ended it (saved)."""
    hp, rank = run.hp, run.process.rank

    def save(*names: str) -> None:
        ckpt = checkpoint_state(run, training, state)  # every rank: it gathers their RNG states
        if rank == 0:
            save_checkpoint(ckpt, output_dir / names[0])
            for name in names[1:]:  # model_best: the same file, not written twice
                link_checkpoint(output_dir / names[0], output_dir / name)
        training.last_checkpoint = f'{output_dir / names[0]}, epoch {state.epoch + 1} batch {state.batch_in_epoch}'

    if state.epoch == hp.epochs:
        _logger.info(f'the run already trained its {hp.epochs} epochs: nothing to do (--epochs N extends it)')
    for epoch in range(state.epoch, hp.epochs):
        data.order.set_epoch(epoch, state.batch_in_epoch)
        trained = train_one_epoch(epoch, data, run, training, state, stop, save, metrics)
        if trained is None:
            return False
        rank_images_per_second, lr = trained
        images_per_second = rank_images_per_second * run.process.world_size
        row = evaluate_epoch(epoch, lr, run, training, state, data)
        log_epoch(epoch, row, images_per_second, hp)
        metrics.log(state.global_step, epoch_metrics(row, images_per_second))
        save('last.pth.tar', *(['model_best.pth.tar'] if state.best['epoch'] == epoch else []))
        if rank == 0:
            write_summary(state.history, output_dir / 'summary.csv')
            if hp.plots:
                plot_curves(state.history, output_dir / 'curves.png')
        if epoch + 1 < hp.epochs and any_rank(stop.signal is not None, run.device):
            return False
    return True


def log_epoch(epoch: int, row: dict[str, float], images_per_second: float, hp: TrainHparams) -> None:
    _logger.info(f'epoch {epoch + 1}/{hp.epochs}: train loss {row["train_loss"]:.4f}, val loss {row["eval_loss"]:.4f}, '
                 f'top-1 {row["eval_top1"]:.2f}%, top-5 {row["eval_top5"]:.2f}%'
                 + (f', EMA top-1 {row["eval_ema_top1"]:.2f}%' if hp.model_ema else '')
                 + f', lr {row["lr"]:.4g}, {images_per_second:.0f} img/s'
                 + (f', {row["skipped"]:.0f} images skipped (unreadable, or alone in a batch)' if row['skipped']
                    else ''))


def epoch_metrics(row: dict[str, float], images_per_second: float) -> dict[str, float]:
    """An epoch's row as TensorBoard / W&B scalars: 'val/top1', 'val_ema/loss', 'epoch/train_loss', ..."""
    names = {f'{prefix}{k}': f'{group}/{k}' for prefix, group in (('eval_', 'val'), ('eval_ema_', 'val_ema'))
             for k in ('loss', 'top1', 'top5')}
    return {'epoch': row['epoch'] + 1, 'epoch/train_loss': row['train_loss'], 'epoch/lr': row['lr'],
            'epoch/images_per_second': images_per_second, **{names[k]: v for k, v in row.items() if k in names}}


def stopped(stop: GracefulStop, state: TrainState, hp: TrainHparams, training: Training, resume_command: str,
            rank: int) -> int:
    """The one line after a stop signal: where the checkpoint is and how to continue; exit 128 + signal."""
    if rank == 0:
        print(f'stopped by {stop.signal.name if stop.signal else "a signal on another rank"} at epoch '
              f'{state.epoch + 1}/{hp.epochs}, batch {state.batch_in_epoch} (update {state.global_step}); checkpoint: '
              f'{training.last_checkpoint}; resume with: {resume_command}', file=sys.stderr)
    return stop.exit_code if stop.signal else 128 + 15


def interrupted(state: TrainState, hp: TrainHparams, training: Training, output_dir: Path, created: bool,
                resume_command: str, rank: int) -> int:
    """A forced stop: name the last checkpoint, or say nothing can be resumed and remove the empty run folder."""
    if rank != 0:
        return 130
    if training.last_checkpoint == 'none written yet':
        if created and output_dir.is_dir() and {p.name for p in output_dir.iterdir()} <= set(RUN_FILES):
            shutil.rmtree(output_dir)
        print('interrupted before the first checkpoint: nothing to resume' + (f'; removed {output_dir}' if created
              and not output_dir.exists() else ''), file=sys.stderr)
    else:
        print(f'interrupted at epoch {state.epoch + 1}/{hp.epochs}, batch {state.batch_in_epoch}; last checkpoint: '
              f'{training.last_checkpoint}; resume with: {resume_command}', file=sys.stderr)
    return 130


def checkpoint_state(run: Run, training: Training, state: TrainState) -> dict:
    """Everything --resume, validate.py and export need, as plain containers (loads with weights_only=True);
    ``rank_states``: what differs between ranks (:func:`rank_state`), in rank order."""
    ckpt = dict(dataclasses.asdict(run.info), **dataclasses.asdict(state),
                state_dict=timm.utils.unwrap_model(training.model).state_dict(),
                **{k: getattr(training, k).state_dict() for k in ('optimizer', 'scheduler', 'loss_scaler')
                   if getattr(training, k) is not None},
                rank_states=all_gather(rank_state(run, training, state), run.process.world_size),
                version=timm_bot.__version__)
    if training.model_ema is not None:
        ckpt['state_dict_ema'] = training.model_ema.module.state_dict()
    finite = all(w.isfinite().all() for w in ckpt['state_dict'].values() if w.is_floating_point())
    if any_rank(not finite, run.device):
        raise TrainingStopped(f'the weights became NaN/inf by update {state.global_step} (epoch {state.epoch + 1}) and '
                              f'were not saved; the last checkpoint ({training.last_checkpoint}) is intact. Lower lr.')
    return ckpt


def rank_state(run: Run, training: Training, state: TrainState) -> dict:
    """What one rank needs to continue exactly and no other rank has: its RNG states (its own mixup draws and
    dropout), its share of the epoch's loss sums, and its EMA's BatchNorm statistics (DDP syncs only the model's)."""
    own = {'rng': rng_state(run.device), 'epoch_stats': list(state.epoch_stats)}
    if training.model_ema is not None:
        own['ema_buffers'] = {k: v.cpu() for k, v in training.model_ema.module.named_buffers()}
    return own


def restore(run: Run, training: Training) -> TrainState:
    """The states of the checkpoint ``run.resume``; a new ``epochs`` rebuilds the schedule for the new length."""
    resume, hp = run.resume, run.hp
    training.model.load_state_dict(resume['state_dict'])
    for key in ('optimizer', 'loss_scaler'):  # a new amp setting starts a new loss scale
        if getattr(training, key) is not None and key in resume:
            getattr(training, key).load_state_dict(resume[key])
    if hp.epochs == resume['args']['epochs']:
        training.scheduler.load_state_dict(resume['scheduler'])
    else:
        _logger.info(f'epochs {resume["args"]["epochs"]} -> {hp.epochs}: the {hp.sched} schedule is rebuilt for '
                     f'{hp.epochs} epochs and continues from update {resume["global_step"]}')
    if training.model_ema is not None:
        training.model_ema.module.load_state_dict(resume['state_dict_ema'])
    training.scheduler.step_update(num_updates=resume['global_step'])
    training.last_checkpoint = resume['path']
    state = TrainState(**{f.name: resume[f.name] for f in dataclasses.fields(TrainState)})
    own = resume['rank_states'][run.process.rank] if 'rank_states' in resume else {'rng': resume['rng']}  # < 0.3
    set_rng_state(own['rng'], run.device)
    state.epoch_stats = own.get('epoch_stats', state.epoch_stats)
    if training.model_ema is not None and 'ema_buffers' in own:
        training.model_ema.module.load_state_dict(own['ema_buffers'], strict=False)
    return state


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
    except KeyboardInterrupt:  # before training started
        print('interrupted before training started', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(run())
