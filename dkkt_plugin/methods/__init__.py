"""Distillation methods, registered in the ``dkkt_plugin.methods`` entry-point group."""
from .base import AugmentConfig, AugmentedConfig, DistillConfig, DistillData, Method, check_finite
from .dkkt import DMDKKT, DSV, DKKTMethodConfig, DSVMethodConfig
from .dm import DM, DMConfig, DMStar
from .gm import DC, DSAConfig, DSAMethod, GMConfig
from .gm_dkkt import DCDKKT, DSADKKT, DSADKKTConfig, GMDKKTConfig

__all__ = ["DistillConfig", "AugmentConfig", "AugmentedConfig", "DistillData", "Method", "check_finite",
           "DM", "DMConfig", "DMStar", "DC", "DSAMethod", "GMConfig", "DSAConfig", "DSV", "DMDKKT",
           "DKKTMethodConfig", "DSVMethodConfig", "DCDKKT", "DSADKKT", "GMDKKTConfig", "DSADKKTConfig"]
