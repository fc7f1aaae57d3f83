"""*Bag of Tricks for Image Classification* (He et al., CVPR 2019, arXiv:1812.01187) as a timm plugin: importing it
registers the paper's ResNets (``resnet50d_bot``, ...) and its NAG optimizer (``'nag'``) in timm's factories."""
from .batch_augment import AugmentParams, BatchNormalize, BatchPaperAugment
from .checkpoint import create_model_from_checkpoint, load_checkpoint, save_checkpoint
from .data import create_image_dataset
from .distill import DistillationLoss, load_teacher
from .loss import BatchMixup, MixedTarget, SmoothedCrossEntropy
from .models import PAPER_MEAN, PAPER_STD, BottleneckV1, paper_init_, xavier_init_, zero_gamma_
from .optim import create_paper_optimizer, resolve_lr
from .scheduler import create_paper_scheduler
from .transforms import PCALighting, RandomHueScale, create_paper_eval_transform, create_paper_train_transform

__version__ = '0.2.0'  # the package's one version number (pyproject reads it; checkpoints record it)
__all__ = [
    'BottleneckV1', 'PAPER_MEAN', 'PAPER_STD', 'paper_init_', 'xavier_init_', 'zero_gamma_', 'create_paper_optimizer',
    'resolve_lr', 'create_paper_scheduler', 'SmoothedCrossEntropy', 'MixedTarget', 'BatchMixup', 'DistillationLoss',
    'load_teacher', 'PCALighting', 'RandomHueScale', 'create_paper_train_transform', 'create_paper_eval_transform',
    'AugmentParams', 'BatchPaperAugment', 'BatchNormalize', 'create_image_dataset', 'load_checkpoint',
    'save_checkpoint', 'create_model_from_checkpoint',
]
