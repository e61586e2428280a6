"""Losses: DKKT (model knowledge), DM (data knowledge) and gradient matching (DC / DSA), and the
rule that weighs the DKKT term against a host loss (:class:`GradBalance`)."""
from .balance import BalanceStats, FixedScale, GradBalance
from .dkkt import DKKTConfig, DKKTLoss, DKKTTerms
from .dm import DMLoss
from .gradient_matching import GradientMatchingLoss, gradient_distance

__all__ = ["DKKTConfig", "DKKTLoss", "DKKTTerms", "DMLoss", "GradientMatchingLoss", "gradient_distance",
           "GradBalance", "FixedScale", "BalanceStats"]
