"""proxopt: neural-network quantization as a PyTorch optimizer.

Replace ``torch.optim.Adam`` with a proxopt optimizer and the model holds
quantized weights ``w = F(theta)`` while the optimizer keeps the latent
``theta`` in its state (THEORY.md §2).
"""
from . import distributed
from . import export
from . import groups
from . import levels
from . import mirror_maps
from . import native
from . import quantizers
from .groups import param_groups
from .optim import Bop
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
from .summary import summary
from .theory import PairCheck
from .theory import check_pair

__version__ = "0.1.0"

__all__ = [
    "AnnealScheduler",
    "Bop",
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
    "distributed",
    "export",
    "groups",
    "levels",
    "mirror_maps",
    "native",
    "optimizer",
    "param_groups",
    "quantizers",
    "summary",
    "__version__",
]
