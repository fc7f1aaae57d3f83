"""The paper's ResNet family, registered into timm's model factory on import."""
from .init import WEIGHT_INITS, xavier_init_, zero_gamma_
from .resnet_bot import PAPER_MEAN, PAPER_STD, BotResNet, BottleneckV1

__all__ = ['BotResNet', 'BottleneckV1', 'PAPER_MEAN', 'PAPER_STD', 'WEIGHT_INITS', 'xavier_init_', 'zero_gamma_']
