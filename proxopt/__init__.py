"""proxopt: neural-network quantization as a PyTorch optimizer.

Replace ``torch.optim.Adam`` with a proxopt optimizer and the model holds
quantized weights ``w = F(theta)`` while the optimizer keeps the latent
``theta`` in its state (THEORY.md §2).
"""
from . import levels
from . import mirror_maps
from . import quantizers
from .optim import LatentOptimizer
from .optim import MirrorDescent
from .optim import ProxConnect
from .optim import ProxConnectPP
from .optim import ProxQuant
from .optim import WrappedOptimizer
from .presets import available
from .presets import describe
from .presets import optimizer
from .schedules import AnnealScheduler
from .theory import PairCheck
from .theory import check_pair

__version__ = "0.1.0"

__all__ = [
    "AnnealScheduler",
    "LatentOptimizer",
    "MirrorDescent",
    "PairCheck",
    "ProxConnect",
    "ProxConnectPP",
    "ProxQuant",
    "WrappedOptimizer",
    "available",
    "check_pair",
    "describe",
    "levels",
    "mirror_maps",
    "optimizer",
    "quantizers",
    "__version__",
]
