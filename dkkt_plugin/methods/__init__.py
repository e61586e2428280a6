"""Distillation methods, registered in the ``dkkt_plugin.methods`` entry-point group."""
from .base import DistillConfig, DistillData, Method, check_finite
from .dkkt import DMDKKT, DSV, DKKTMethodConfig, DSVMethodConfig
from .dm import DM, DMStar
from .gm import DC, DSAMethod, GMConfig

__all__ = ["DistillConfig", "DistillData", "Method", "check_finite", "DM", "DMStar", "DC", "DSAMethod",
           "GMConfig", "DSV", "DMDKKT", "DKKTMethodConfig", "DSVMethodConfig"]
