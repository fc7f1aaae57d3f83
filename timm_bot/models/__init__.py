"""The paper's ResNet family (registered into timm's factory on import) and its initialization helpers."""
from .init import paper_init_, xavier_init_, zero_gamma_
from .resnet_bot import PAPER_MEAN, PAPER_STD, BottleneckV1

__all__ = ['BottleneckV1', 'PAPER_MEAN', 'PAPER_STD', 'paper_init_', 'xavier_init_', 'zero_gamma_']
