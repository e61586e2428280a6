"""A small registry of components, fed by Python entry points.

Every component is declared as an entry point in one of the groups below, by this package in
its ``setup.cfg`` and by any third-party distribution in its own metadata. Nothing is imported
until a component is asked for: listing reads package metadata only. Loading checks the object
against its group's protocol (:data:`PROTOCOLS`), so a plugin of the wrong kind fails with a
:class:`~dkkt_plugin.errors.PluginError` that names it, not deep inside a method.

- ``losses``: a loss class or factory; the methods build theirs through this group (the config
  fields ``dm_loss``, ``dkkt_loss``, ``matching_loss`` name them).
- ``initializers``: ``init(ipc, *, num_classes, image_shape, dataset, model, generator, device)
  -> (images, labels)``.
- ``datasets``: loaders ``load(root, train=True) -> ImageDataset``.
- ``subsets``: wrappers ``Subset(dataset, pipc, *, seed)`` that restrict a dataset (the
  practical setting).
- ``augmentations``: ``make(strategy, *, generator) -> aug`` with ``aug.sample(num_groups, *,
  device, shared_family)`` and ``aug(x, draw, groups)`` (Siamese: one draw per group).
- ``methods``: subclasses of :class:`dkkt_plugin.methods.Method`.
- ``models``: network factories ``f(channels, num_classes, image_size, *, generator=None, **kw)
  -> nn.Module`` (edge models, evaluation networks: :mod:`dkkt_plugin.models`).

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

import inspect
import os
import sys
import warnings
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable, Optional

from .errors import PluginError, UnknownComponentError

PREFIX = "dkkt_plugin."
GROUPS = ("losses", "initializers", "datasets", "subsets", "augmentations", "methods", "models")
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
        """Import and return the object, checked against its group's protocol; any import-time
        failure or wrong kind of object becomes a PluginError naming the plugin."""
        try:
            obj = self.entry_point.load()
        except Exception as exc:  # a broken plugin may raise anything at import time
            raise PluginError(
                f"plugin {self.name!r} in group {PREFIX + self.group!r} (target {self.value!r}, "
                f"from distribution {self.distribution!r}) failed to load: "
                f"{type(exc).__name__}: {exc}. Fix or uninstall {self.distribution!r}, or set "
                f"{AUTOLOAD_ENV}=1 to use only dkkt-plugin's own components."
            ) from exc
        problem = PROTOCOLS[self.group](obj)
        if problem:
            raise PluginError(
                f"plugin {self.name!r} in group {PREFIX + self.group!r} (target {self.value!r}, from "
                f"distribution {self.distribution!r}) is not a {self.group[:-1]} component: {problem}. "
                f"Fix or uninstall {self.distribution!r}."
            )
        return obj


# -- group protocols: each returns None when the object fits, else what is wrong ---------------
def _signature(obj: Any) -> Optional[inspect.Signature]:
    try:
        return inspect.signature(obj)
    except (TypeError, ValueError):  # some builtins have none: nothing to check
        return None


def _accepts(obj: Any, positional: int, keywords: tuple[str, ...] = ()) -> Optional[str]:
    """None when ``obj`` can be called with ``positional`` positional and these keyword args."""
    if not callable(obj):
        return f"{obj!r} is not callable"
    sig = _signature(obj)
    if sig is None:
        return None
    try:
        sig.bind(*range(positional), **{k: None for k in keywords})
    except TypeError as exc:
        return f"{getattr(obj, '__qualname__', obj)}{sig} cannot be called as the group requires ({exc})"
    return None


def _is_method(obj: Any) -> Optional[str]:
    # The methods import this module, so this one imports none of them: a class can subclass
    # Method only once dkkt_plugin.methods.base has been imported, so it is looked up there.
    base = sys.modules.get(__name__.rsplit(".", 1)[0] + ".methods.base")
    Method = getattr(base, "Method", None)
    if Method is None or not (isinstance(obj, type) and issubclass(obj, Method)):
        return f"{obj!r} is not a subclass of dkkt_plugin.methods.Method"
    import dataclasses

    if not dataclasses.is_dataclass(obj.config_class):
        return f"{obj.__name__}.config_class {obj.config_class!r} is not a dataclass"
    return None


PROTOCOLS: dict[str, Callable[[Any], Optional[str]]] = {
    "losses": lambda obj: None if callable(obj) else f"{obj!r} is not a class or factory",
    "initializers": lambda obj: _accepts(obj, 1, ("num_classes", "image_shape", "dataset", "model",
                                                   "generator", "device")),
    "datasets": lambda obj: _accepts(obj, 1, ("train",)),
    "subsets": lambda obj: _accepts(obj, 2, ("seed",)),
    "augmentations": lambda obj: _accepts(obj, 1, ("generator",)),
    "methods": _is_method,
    "models": lambda obj: _accepts(obj, 3, ("generator",)),
}


# What to do instead when a name of the second group is asked for in the first.
WRONG_GROUP = {
    ("datasets", "subsets"): "a subset wrapper restricts a dataset to a few images per class instead of "
                             "loading one; pass a dataset (--dataset cifar10 or fashion_mnist) and the "
                             "number of real images per class with --pipc N",
}


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
        old = found.get(ep.name)
        if old is not None and old.distribution != dist:
            kept, ignored = (dist, old.distribution) if builtin else (old.distribution, dist)
            warnings.warn(f"{ignored!r} declares {ep.name!r} in group {PREFIX + group!r}, which {kept!r} "
                          f"already provides; {ignored!r}'s is ignored. Rename it in that distribution's "
                          "entry points.", stacklevel=2)
            if not builtin:
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
        elsewhere = [g for g in GROUPS if g != group and name in discover(g)]
        if elsewhere:
            hint = (f"{name!r} is a {elsewhere[0][:-1]} component (group {PREFIX + elsewhere[0]!r}), not a "
                    f"{group[:-1]} one" + (f": {WRONG_GROUP[group, elsewhere[0]]}"
                                           if (group, elsewhere[0]) in WRONG_GROUP else ""))
        else:
            hint = "check the spelling, or install the distribution that provides it"
        raise UnknownComponentError(f"no component {name!r} in group {PREFIX + group!r} (known names: {known}); "
                                    f"{hint}.")
    return found[name]


def load(group: str, name: str) -> Any:
    """Import and return the component ``name`` of ``group`` (class or function)."""
    return get(group, name).load()


def create(group: str, name: str, *args: Any, **kwargs: Any) -> Any:
    """Load the component and call it with the given arguments (instantiate a class, run a factory)."""
    return load(group, name)(*args, **kwargs)
