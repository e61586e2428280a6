"""Typed dataclass configs: the ``pipc`` type, one field walker, overrides and command-line flags.

Every setting of dkkt-plugin (and of a third-party method) lives in a frozen dataclass whose
fields carry a type hint and a help text in their metadata::

    lr_img: float = field(default=1.0, metadata={"help": "learning rate of the images' SGD"})

One walker, :func:`config_fields`, turns such a class into :class:`FieldSpec` leaves with dotted
paths (nested dataclasses become ``dkkt.distance``), a parser derived from the type hint, the
real default and the help (``metadata["help"]``; empty for a field without one). The same leaves
serve three uses:

- :func:`build` makes a config from overrides keyed by dotted path (``{"dkkt.alpha": 0.1}``);
- ``--set KEY=VALUE`` parses strings with the field's own parser;
- :func:`add_arguments` generates command-line flags (``--lr-img``, ``--dkkt.distance``).

Example:
    >>> from dkkt_plugin.settings import DKKTMethodConfig
    >>> [f.path for f in config_fields(DKKTMethodConfig)][:3]
    ['dataset', 'data_root', 'ipc']
    >>> spec = {f.path: f for f in config_fields(DKKTMethodConfig)}["dkkt.distance"]
    >>> spec.flag, spec.choices
    ('--dkkt.distance', ('l1', 'l2', 'cos'))
    >>> cfg = build(DKKTMethodConfig, {"dkkt.alpha": "0.1", "pipc": "all"})
    >>> cfg.dkkt.alpha, cfg.pipc
    (0.1, 'all')
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import numbers
import typing
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, Optional, Union

from .errors import ConfigError

Pipc = Union[int, Literal["all"]]
"""Real images per class the server may see: a positive int, or ``"all"``."""

NONE_WORDS = ("none", "auto")  # how an Optional field is set back to None from a string


def parse_pipc(value: Any) -> Pipc:
    """The one place where a pipc is checked: ``10`` / ``"10"`` -> 10, ``"all"`` -> ``"all"``.

    Example:
        >>> parse_pipc("ALL"), parse_pipc("50")
        ('all', 50)
    """
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "all":
            return "all"
        if text.isdigit():
            value = int(text)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ConfigError(f"pipc must be a positive integer or 'all', got {value!r} (e.g. 10, 50 or all)")
    return int(value)


def parse_bool(value: Any) -> bool:
    """``true/false``, ``yes/no``, ``on/off``, ``1/0`` (any case) -> bool."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"expected true or false, got {value!r}")


@dataclass(frozen=True)
class FieldSpec:
    """One leaf setting of a config class."""

    path: str  # dotted path from the root config, e.g. "dkkt.distance"
    type: Any  # the resolved type hint
    default: Any  # the real default (default_factory called)
    help: str  # the field's metadata["help"] ("" without one)
    parse: Callable[[Any], Any]  # str (or value) -> checked value of the right type
    choices: Optional[tuple] = None  # from a Literal hint

    @property
    def flag(self) -> str:
        """``--lr-img`` for ``lr_img``, ``--dkkt.tv-weight`` for ``dkkt.tv_weight``."""
        return "--" + self.path.replace("_", "-")

    def describe_default(self) -> str:
        if self.default is None:
            return "auto" if "auto" in self.help else "none"
        if isinstance(self.default, tuple):
            return ",".join(map(str, self.default))
        return str(self.default) if self.default != "" else "''"


# -- types -> parsers ----------------------------------------------------------------------------
def _parser(hint: Any, where: str) -> tuple[Callable[[Any], Any], Optional[tuple]]:
    if hint is Pipc or hint == Pipc:
        return parse_pipc, None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union and type(None) in args:  # Optional[X]
        inner = [a for a in args if a is not type(None)]
        inner_hint = inner[0] if len(inner) == 1 else Union[tuple(inner)]
        parse, choices = _parser(inner_hint, where)

        def optional(value: Any) -> Any:
            if value is None or (isinstance(value, str) and value.strip().lower() in NONE_WORDS):
                return None
            return parse(value)

        return optional, choices
    if origin is Literal:
        choices = tuple(args)

        def literal(value: Any) -> Any:
            if value not in choices:
                raise ConfigError(f"{where} must be one of {', '.join(map(str, choices))}; got {value!r}")
            return value

        return literal, choices
    if origin is tuple:
        item = args[0] if args else str
        parse_item, _ = _parser(item, where)

        def as_tuple(value: Any) -> tuple:
            if isinstance(value, str) and value.strip().lower() in ("", "none"):
                return ()
            items = value.split(",") if isinstance(value, str) else value
            return tuple(parse_item(v.strip() if isinstance(v, str) else v) for v in items if v != "")

        return as_tuple, None
    if hint is bool:
        return parse_bool, None
    if hint in (int, float):
        def number(value: Any) -> Any:
            if isinstance(value, bool):
                raise ConfigError(f"{where} must be a number, got {value!r}")
            try:
                out = hint(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{where} must be {'an integer' if hint is int else 'a number'}, "
                                  f"got {value!r}") from None
            if hint is int and not isinstance(value, str) and out != value:
                raise ConfigError(f"{where} must be an integer, got {value!r}")
            return out

        return number, None
    if hint is str:
        return str, None
    return (lambda value: value), None  # anything else is taken as given


def _hints(cls: type) -> dict[str, Any]:
    # each class of the MRO resolves its annotations in its own module (globalns=None)
    return typing.get_type_hints(cls, localns={"Pipc": Pipc})


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def config_fields(cls: type, prefix: str = "") -> list[FieldSpec]:
    """Every leaf setting of the dataclass ``cls``, nested dataclasses flattened with dots."""
    if not dataclasses.is_dataclass(cls):
        raise ConfigError(f"{getattr(cls, '__name__', cls)!r} is not a dataclass config")
    hints = _hints(cls)
    out: list[FieldSpec] = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        hint = hints.get(f.name, Any)
        path = prefix + f.name
        if dataclasses.is_dataclass(hint):
            out += config_fields(hint, path + ".")
            continue
        parse, choices = _parser(hint, path)
        out.append(FieldSpec(path, hint, _default(f), f.metadata.get("help", ""), parse, choices))
    return out


# -- overrides -----------------------------------------------------------------------------------
def resolve_key(cls: type, key: str) -> str:
    """``key`` itself when it is a full dotted path of ``cls`` (``dkkt.alpha``); one spelling per
    setting, so a last segment alone (``alpha``) is an error that names the full path."""
    paths = [f.path for f in config_fields(cls)]
    key = key.replace("-", "_")
    if key in paths:
        return key
    tails = [p for p in paths if p.rsplit(".", 1)[-1] == key]
    close = tails or difflib.get_close_matches(key, paths, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ConfigError(f"{cls.__name__} has no setting {key!r}{hint}; its settings: {', '.join(paths)}")


def build(cls: type, overrides: Mapping[str, Any] = (), base: Any = None) -> Any:
    """``cls`` (or ``base``, an instance) with ``overrides`` keyed by dotted path.

    String values are parsed with the field's type (``"0.1"`` -> 0.1, ``"all"`` -> ``"all"``);
    other values are checked against it. Unknown keys raise ConfigError naming the settings.
    """
    specs = {f.path: f for f in config_fields(cls)}
    nested: dict[str, Any] = {}
    for key, value in dict(overrides).items():
        path = resolve_key(cls, key)
        spec = specs[path]
        if not (value is None and spec.default is None):
            value = spec.parse(value)
        node = nested
        *parents, leaf = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return _instantiate(cls, nested, base)


def _instantiate(cls: type, values: dict[str, Any], base: Any) -> Any:
    hints = _hints(cls)
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if isinstance(value, dict) and dataclasses.is_dataclass(hint):
            inner_base = getattr(base, name) if base is not None else None
            value = _instantiate(hint, value, inner_base)
        kwargs[name] = value
    try:
        return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"bad settings for {cls.__name__}: {exc}") from None


def flatten(config: Any) -> dict[str, Any]:
    """``{dotted path: value}`` of every leaf of a config instance."""
    out = {}
    for spec in config_fields(type(config)):
        value = config
        for part in spec.path.split("."):
            value = getattr(value, part)
        out[spec.path] = value
    return out


def parse_set(items: Optional[list[str]]) -> dict[str, str]:
    """``["a.b=1", "c=x"]`` (``--set`` values) -> ``{"a.b": "1", "c": "x"}``."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE (e.g. --set dkkt.alpha=0.1), got {item!r}")
        out[key.strip()] = value
    return out


# -- command line --------------------------------------------------------------------------------
DEST = "cfg:"  # argparse dest prefix of generated flags


def add_arguments(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = (),
                  title: Optional[str] = None, base: Any = None) -> None:
    """One flag per leaf of ``cls`` (``--lr-img``, ``--dkkt.distance``), help from its metadata
    and its real default, in a group titled ``title``; only flags given on the command line
    become overrides. Leaves whose path is in ``skip`` get no flag here. ``base``, an instance of
    ``cls``, supplies the defaults the help states (a command whose defaults differ from the
    class's builds its config with the same ``base``)."""
    group = parser.add_argument_group(title or f"{cls.__name__} settings")
    defaults = flatten(base) if base is not None else {}
    for spec in config_fields(cls):
        if spec.path not in skip:
            if spec.path in defaults:
                spec = dataclasses.replace(spec, default=defaults[spec.path])
            add_argument(group, spec)


def add_argument(parser: Any, spec: FieldSpec, *, help: Optional[str] = None,
                 metavar: Optional[str] = None) -> None:
    """The flag of one leaf ``spec`` on ``parser`` (a parser or an argument group); ``help`` and
    ``metavar`` replace the field's help and name. Its value becomes an override only when given."""
    metavar = metavar or ("{" + ",".join(map(str, spec.choices)) + "}" if spec.choices else _metavar(spec))
    text = help or spec.help or spec.path.replace("_", " ")
    parser.add_argument(spec.flag, dest=DEST + spec.path, default=None, type=_argparse_type(spec),
                        metavar=metavar,
                        help=f"{text} (default: {spec.describe_default()})".replace("%", "%%"))  # argparse formats help


def _metavar(spec: FieldSpec) -> str:
    if spec.parse is parse_pipc:
        return "N|all"
    if spec.type is bool:
        return "BOOL"
    return spec.path.rsplit(".", 1)[-1].upper()


def _argparse_type(spec: FieldSpec) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return spec.parse(text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def overrides_from_args(args: argparse.Namespace, cls: Optional[type] = None) -> dict[str, Any]:
    """The generated flags that were given, as ``{dotted path: value}``; with ``cls``, only the
    settings of ``cls`` (a command with flags of two configs reads each one's apart)."""
    given = {k[len(DEST):]: v for k, v in vars(args).items() if k.startswith(DEST) and v is not None}
    if cls is None:
        return given
    paths = {spec.path for spec in config_fields(cls)}
    return {k: v for k, v in given.items() if k in paths}
