"""The package's exceptions: one base class, one subclass per kind of failure.

Library code raises these and never exits; the CLI turns them into a one-line message and a
non-zero exit status. Each message names the problem and how to fix it.
"""
from __future__ import annotations


class DkktError(Exception):
    """Base class of every error raised on purpose by dkkt-plugin."""


class ConfigError(DkktError, ValueError):
    """A bad argument or configuration value (wrong shape, out-of-range number, ...)."""


class DatasetError(DkktError):
    """A dataset is missing, corrupt, or cannot provide what was asked (e.g. pipc too large)."""


class PluginError(DkktError):
    """A registered component could not be found or loaded."""


class UnknownComponentError(PluginError, LookupError):
    """A name that no entry point of the group provides."""


class CheckpointError(DkktError):
    """A checkpoint is corrupt, or belongs to a different run than the one resuming it."""


class NonFiniteLossError(DkktError, FloatingPointError):
    """A loss became NaN or infinite; the last good state has been kept."""
