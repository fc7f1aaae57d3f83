"""timm-bot: *Bag of Tricks for Image Classification with Convolutional Neural Networks* (He et al., CVPR 2019,
arXiv:1812.01187) as a timm plugin.

``import timm_bot`` registers the paper's ResNets (``resnet50d_bot``, ...) into ``timm.create_model`` and the paper's
NAG optimizer (``'nag'``) into ``timm.optim.create_optimizer_v2``. Each trick has one home:

=====================================  ==================================================  =====================
trick (paper section)                  public name                                          module
=====================================  ==================================================  =====================
ResNet-B/C/D tweaks (4)                ``timm.create_model('resnet50d_bot')``               ``timm_bot.models``
Xavier init (2), zero-gamma (3.1)      ``xavier_init_``, ``zero_gamma_``, ``zero_init_last``  ``timm_bot.models``
no bias decay, NAG (3.1, 2)            ``create_paper_optimizer``, ``decayed_parameter_names`` ``timm_bot.optim``
linear scaling (3.1)                   ``linear_scaled_lr``, ``resolve_lr``                 ``timm_bot.optim``
warmup (3.1), cosine (5.1), step (2)   ``create_paper_scheduler``                           ``timm_bot.scheduler``
label smoothing (5.2)                  ``SmoothedCrossEntropy``, ``label_smoothing_cross_entropy`` ``timm_bot.loss``
mixup (5.4)                            ``BatchMixup``, ``MixedTarget``                      ``timm_bot.mixup``
knowledge distillation (5.3)           ``DistillationLoss``, ``load_teacher``               ``timm_bot.distill``
baseline augmentation (2)              ``create_paper_train_transform``, ``PCALighting``     ``timm_bot.transforms``
=====================================  ==================================================  =====================
"""
from . import optim  # noqa: F401  (registers 'nag' in timm's optimizer registry)
from .checkpoint import create_model_from_checkpoint, load_checkpoint, save_checkpoint
from .distill import DistillationLoss, load_teacher
from .loss import MixedTarget, SmoothedCrossEntropy, label_smoothing_cross_entropy
from .mixup import BatchMixup
from .models import PAPER_MEAN, PAPER_STD, BotResNet, BottleneckV1, xavier_init_, zero_gamma_
from .optim import create_paper_optimizer, decayed_parameter_names, linear_scaled_lr, resolve_lr
from .scheduler import create_paper_scheduler
from .transforms import PCALighting, RandomHueScale, create_paper_train_transform

__version__ = '0.1.0'
__all__ = [
    'BotResNet', 'BottleneckV1', 'PAPER_MEAN', 'PAPER_STD', 'xavier_init_', 'zero_gamma_',
    'create_paper_optimizer', 'decayed_parameter_names', 'linear_scaled_lr', 'resolve_lr',
    'create_paper_scheduler',
    'SmoothedCrossEntropy', 'label_smoothing_cross_entropy', 'MixedTarget', 'BatchMixup',
    'DistillationLoss', 'load_teacher',
    'PCALighting', 'RandomHueScale', 'create_paper_train_transform',
    'load_checkpoint', 'save_checkpoint', 'create_model_from_checkpoint',
]
