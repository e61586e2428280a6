"""A small registry of components, fed by Python entry points.

Every component (loss, initializer, dataset, augmentation, method) is declared as an entry point
in one of the groups below, by this package in its ``setup.cfg`` and by any third-party
distribution in its own metadata. Nothing is imported until a component is asked for: listing
reads package metadata only.

Setting the environment variable ``DKKT_DISABLE_PLUGIN_AUTOLOAD=1`` restricts every group to the
components shipped by dkkt-plugin itself (like pytest's ``PYTEST_DISABLE_PLUGIN_AUTOLOAD``).

Example:
    >>> from dkkt_plugin import registry
    >>> sorted(registry.names("losses"))[:2]
    ['dkkt', 'dm']
    >>> registry.load("losses", "dkkt").__name__
    'DKKTLoss'
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from .errors import PluginError, UnknownComponentError

PREFIX = "dkkt_plugin."
GROUPS = ("losses", "initializers", "datasets", "augmentations", "methods")
DISTRIBUTION = "dkkt-plugin"
AUTOLOAD_ENV = "DKKT_DISABLE_PLUGIN_AUTOLOAD"


@dataclass(frozen=True)
class Component:
    """One discovered entry point: its name, target (``module:attr``) and distribution."""

    group: str
    name: str
    value: str
    distribution: str
    entry_point: metadata.EntryPoint

    def load(self) -> Any:
        """Import and return the object, wrapping any import-time failure in a PluginError."""
        try:
            return self.entry_point.load()
        except Exception as exc:  # a broken plugin may raise anything at import time
            raise PluginError(
                f"plugin {self.name!r} in group {PREFIX + self.group!r} (target {self.value!r}, "
                f"from distribution {self.distribution!r}) failed to load: "
                f"{type(exc).__name__}: {exc}. Fix or uninstall {self.distribution!r}, or set "
                f"{AUTOLOAD_ENV}=1 to use only dkkt-plugin's own components."
            ) from exc


def _check_group(group: str) -> str:
    if group not in GROUPS:
        raise UnknownComponentError(f"unknown component group {group!r}; known groups: {', '.join(GROUPS)}")
    return group


def _dist_name(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)  # set by importlib.metadata on Python >= 3.10
    return dist.metadata["Name"] if dist is not None else "<unknown>"


def _same_dist(name: str) -> bool:
    return name.replace("_", "-").lower() == DISTRIBUTION


def discover(group: str) -> dict[str, Component]:
    """All components of ``group`` (without the ``dkkt_plugin.`` prefix), keyed by name.

    Reads installed distributions' metadata; imports nothing. When two distributions declare the
    same name, dkkt-plugin's own wins over a third party's (a plugin cannot shadow a built-in).
    """
    _check_group(group)
    only_builtin = os.environ.get(AUTOLOAD_ENV, "").strip().lower() not in ("", "0", "false", "no")
    found: dict[str, Component] = {}
    for ep in metadata.entry_points(group=PREFIX + group):
        dist = _dist_name(ep)
        builtin = _same_dist(dist)
        if only_builtin and not builtin:
            continue
        if ep.name in found and not builtin:
            continue
        found[ep.name] = Component(group, ep.name, ep.value, dist, ep)
    return found


def names(group: str) -> list[str]:
    """Sorted names of the components of ``group``."""
    return sorted(discover(group))


def get(group: str, name: str) -> Component:
    """The component ``name`` of ``group``, not yet loaded; UnknownComponentError if absent."""
    found = discover(group)
    if name not in found:
        known = ", ".join(sorted(found)) or "none"
        raise UnknownComponentError(
            f"no component {name!r} in group {PREFIX + group!r}; known names: {known}. "
            "Check the spelling, or install the distribution that provides it."
        )
    return found[name]


def load(group: str, name: str) -> Any:
    """Import and return the component ``name`` of ``group`` (class or function)."""
    return get(group, name).load()


def create(group: str, name: str, *args: Any, **kwargs: Any) -> Any:
    """Load the component and call it with the given arguments (instantiate a class, run a factory)."""
    return load(group, name)(*args, **kwargs)
