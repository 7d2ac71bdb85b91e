"""proxopt's optimizers: the latent-weight engine and the methods built on it."""
from .bop import Bop
from .engine import LatentOptimizer, WrappedOptimizer
from .mirror_descent import MirrorDescent
from .proxconnect import ProxConnect, ProxConnectPP
from .proxquant import ProxQuant

__all__ = ["Bop", "LatentOptimizer", "WrappedOptimizer", "ProxConnectPP", "ProxConnect", "MirrorDescent", "ProxQuant"]
