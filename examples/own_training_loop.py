#!/usr/bin/env python3
"""The paper's tricks in your own training loop, from timm_bot's public API only (what train.py does, in brief).

    python examples/own_training_loop.py [--data-dir digits] [--epochs 3] [--teacher RUN_OR_MODEL] [--max-batches N]
"""
import argparse
import math

import timm
import torch
from torch.utils.data import DataLoader

import timm_bot


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data-dir', default='digits', help="'digits' (embedded) or a folder with train/ and val/")
    parser.add_argument('--model', default='resnet18d_tiny_bot')
    parser.add_argument('--teacher', help='distill (5.3) from a run folder, a checkpoint or a timm model name')
    parser.add_argument('--epochs', type=int, default=3)
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--grad-accum-steps', type=int, default=1)
    parser.add_argument('--max-batches', type=int, default=0, help='stop after N batches, train and eval (0: all)')
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    # Section 2's augmentation (milder crops and no flips: digits fill the frame and are not flip-invariant).
    train_set = timm_bot.create_image_dataset(args.data_dir, 'train', timm_bot.create_paper_train_transform(
        32, scale=(0.5, 1.0), hflip=0.0))
    loader = DataLoader(train_set, args.batch_size, shuffle=True, drop_last=True)
    model = timm.create_model(args.model, num_classes=train_set.num_classes)
    print(timm_bot.paper_init_(model))  # Xavier init (2), zero-gamma (3.1)
    lr, lr_line = timm_bot.resolve_lr(None, args.batch_size, grad_accum_steps=args.grad_accum_steps, lr_base=0.4)
    optimizer = timm_bot.create_paper_optimizer(model, 'nag', lr, weight_decay=1e-4)  # NAG, no bias decay (2, 3.1)
    updates_per_epoch = math.ceil(len(loader) / args.grad_accum_steps)  # optimizer steps, not batches
    scheduler = timm_bot.create_paper_scheduler(optimizer, 'cosine', args.epochs, updates_per_epoch,
                                                warmup_epochs=1).as_lr_scheduler()  # torch LambdaLR, step per update
    criterion = timm_bot.SmoothedCrossEntropy(0.1)  # label smoothing (5.2), also on mixup's targets
    mixup = timm_bot.BatchMixup(0.2)  # section 5.4
    if args.teacher:  # the teacher sees the student's (mixed) batch, renormalized to its own mean/std
        teacher, teacher_cfg = timm_bot.load_teacher(args.teacher, train_set.num_classes, train_set.classes)
        data_cfg = timm.data.resolve_data_config(model=model)
        criterion = timm_bot.DistillationLoss(teacher, criterion, temperature=20.0, student_mean=data_cfg['mean'],
                                              student_std=data_cfg['std'], teacher_mean=teacher_cfg['mean'],
                                              teacher_std=teacher_cfg['std'])
    print(f'{lr_line}; {updates_per_epoch} updates per epoch')
    batches = 0
    for epoch in range(args.epochs):
        model.train()
        for i, (images, targets) in enumerate(loader):
            images, target = mixup(images, targets)
            logits = model(images)
            loss = criterion(logits, images, target) if args.teacher else criterion(logits, target)
            (loss / args.grad_accum_steps).backward()
            if (i + 1) % args.grad_accum_steps == 0 or i + 1 == len(loader):
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()  # after every optimizer step: warmup and cosine are per update (3.1, 5.1)
            batches += 1
            if batches == args.max_batches:
                break
        print(f'epoch {epoch + 1}: loss {loss.item():.4f}, lr {optimizer.param_groups[0]["lr"]:.4g}')
        if batches == args.max_batches:
            break
    val_set = timm_bot.create_image_dataset(args.data_dir, 'val', timm.data.create_transform(
        **timm.data.resolve_data_config(model=model)))  # timm's eval preprocessing: resize, center crop
    model.eval()
    correct = seen = 0
    with torch.no_grad():
        for i, (images, targets) in enumerate(DataLoader(val_set, 256)):
            correct, seen = correct + (model(images).argmax(-1) == targets).sum().item(), seen + len(targets)
            if i + 1 == args.max_batches:
                break
    print(f'val top-1 {100 * correct / seen:.2f}% ({seen} images)')


if __name__ == '__main__':
    main()
