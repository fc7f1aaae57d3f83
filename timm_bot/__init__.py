"""timm-bot: *Bag of Tricks for Image Classification with Convolutional Neural Networks* (He et al., CVPR 2019,
arXiv:1812.01187) as a timm plugin. ``import timm_bot`` registers the paper's models into timm's factories."""
from .models import PAPER_MEAN, PAPER_STD, BotResNet, BottleneckV1, xavier_init_, zero_gamma_

__version__ = '0.1.0'
__all__ = ['BotResNet', 'BottleneckV1', 'PAPER_MEAN', 'PAPER_STD', 'xavier_init_', 'zero_gamma_']
