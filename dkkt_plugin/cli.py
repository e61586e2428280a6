"""The ``dkkt`` command line: ``pretrain``, ``distill``, ``evaluate``, ``demo`` and ``plugins``.

Every subcommand is a function ``(args) -> int``; :func:`main` parses, dispatches, and turns the
package's own errors into a one-line message with exit status 2. Library code never exits.
"""
from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from typing import Any, Callable, Optional, Sequence

from . import __version__, registry
from .errors import ConfigError, DkktError


def cmd_plugins(args: argparse.Namespace) -> int:
    """List every discovered component per group, loading each to report broken ones."""
    broken = 0
    groups = [args.group] if args.group else list(registry.GROUPS)
    for group in groups:
        found = registry.discover(group)
        print(f"{registry.PREFIX}{group} ({len(found)})")
        for name in sorted(found):
            comp = found[name]
            status = "ok"
            if not args.no_load:
                try:
                    comp.load()
                except DkktError as exc:
                    broken += 1
                    status = f"BROKEN: {exc.__cause__.__class__.__name__}: {exc.__cause__}"
            print(f"  {name:<20} {comp.value:<55} [{comp.distribution}] {status}")
    if broken:
        print(f"{broken} plugin(s) failed to load; see above.", file=sys.stderr)
    return 1 if broken else 0


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _command_line(argv: Optional[Sequence[str]]) -> str:
    return "dkkt " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))


def _pipc(value: str) -> Any:
    return value if value.lower() == "all" else int(value)


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig(dataset=args.dataset, root=args.data_root, width=args.width, depth=args.depth,
                         epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         weight_decay=args.weight_decay, seed=args.seed,
                         refit_classifier=args.refit_classifier)
    meta = pretrain(cfg, args.out, device=_device(args.device), command=args.command_line)
    print(f"edge model: {args.out}  test accuracy {100 * meta['test_accuracy']:.2f} % "
          f"(train {100 * meta['train_accuracy']:.2f} %, {meta['train_seconds']:.0f} s on {meta['device']})")
    return 0


def _field_type(f: dataclasses.Field) -> Callable[[str], Any]:
    if f.name == "pipc":
        return _pipc
    text = str(f.type)
    for name, conv in (("bool", _bool), ("int", int), ("float", float)):
        if name in text:
            return conv
    return str


def _bool(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {value!r}")


def _method_options(args: argparse.Namespace) -> dict[str, Any]:
    flags = args.config_flags
    opts = {name: getattr(args, name) for name in flags if getattr(args, name) is not None}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        f = flags.get(key)
        opts[key] = _field_type(f)(value) if f else value
    return opts


def _summary(record: dict) -> str:
    last = record["history"][-1] if record.get("history") else {}
    line = (f"{record['method']}: {record['iterations_run']} iterations in {record['seconds']:.1f} s "
            f"({1000 * record['seconds_per_iteration']:.0f} ms/it), final loss {last.get('loss', float('nan')):.4g}")
    if "stationarity" in last:
        line += (f"\nDKKT: primal {last['primal']:.4g}, stationarity {last['stationarity']:.4g} = "
                 f"{last['stat_ratio']:.3f} x its floor {last['floor']:.4g}, edge-model accuracy on the "
                 f"synthetic set {100 * last['edge_accuracy']:.0f} %, multipliers min/median/max "
                 f"{last['lambda_min']:.3g}/{last['lambda_median']:.3g}/{last['lambda_max']:.3g} "
                 f"({last['lambda_zero']} zero)")
    return line


def cmd_distill(args: argparse.Namespace) -> int:
    from .distill import build_config, run_distillation, write_record

    if args.model.lower() != "convnet":
        raise ConfigError(f"--model {args.model}: only ConvNet is available")
    cfg = build_config(args.method, **_method_options(args))
    device = _device(args.device)
    result = run_distillation(args.method, cfg, args.out, device=device, resume=args.resume,
                              checkpoint_every=args.checkpoint_every, command=args.command_line)
    print(_summary(result.record))
    if args.num_eval > 0:
        ev = _evaluate(result.images, result.labels, cfg.dataset, cfg.data_root, args, device)
        result.record["evaluation"] = ev.as_dict()
        write_record(result.out_dir, result.record)
        print(f"accuracy: {ev}")
    print(f"wrote {result.out_dir}/synthetic.pt, synthetic.png, record.json")
    return 0


def _evaluate(images, labels, dataset: str, root, args: argparse.Namespace, device: str):
    from .evaluate import evaluate_synthetic, get_protocol

    test = registry.load("datasets", dataset)(root, train=False)
    protocol = get_protocol(args.eval_protocol, args.eval_epochs)
    return evaluate_synthetic(images, labels, test.images, test.targets, protocol=protocol,
                              num_eval=args.num_eval, seed=args.eval_seed, device=device)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .distill import load_synthetic

    syn = load_synthetic(args.synthetic)
    cfg = syn.get("config", {})
    dataset = args.dataset or cfg.get("dataset")
    if not dataset:
        raise ConfigError("the synthetic set does not name its dataset: pass --dataset")
    ev = _evaluate(syn["images"], syn["labels"], dataset, args.data_root or cfg.get("data_root"),
                   args, _device(args.device))
    print(f"{args.synthetic}: {ev}")
    if args.json:
        import json

        with open(args.json, "w") as fh:
            json.dump({"synthetic": str(args.synthetic), "command": args.command_line, **ev.as_dict()}, fh, indent=1)
    return 0


def _add_eval_flags(p: argparse.ArgumentParser, num_eval: int) -> None:
    p.add_argument("--num-eval", type=int, default=num_eval, help="evaluation runs (fresh ConvNets)")
    p.add_argument("--eval-protocol", default="dm", help="dm (SGD, 1000 epochs) or paper (SAM, 5000 epochs)")
    p.add_argument("--eval-epochs", type=int, default=None, help="scale the protocol down to this many epochs")
    p.add_argument("--eval-seed", type=int, default=0)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import DemoConfig, run_demo

    cfg = DemoConfig(iterations=args.iterations, eval_epochs=args.eval_epochs, num_eval=args.num_eval,
                     seed=args.seed)
    run_demo(args.out, cfg, device=_device(args.device), command=args.command_line)
    return 0


def _add_demo(sub) -> None:
    from .demo import DemoConfig

    d = DemoConfig()
    p = sub.add_parser("demo", help="DM vs DM+DKKT vs DSV on Fashion-MNIST (CPU-sized, no download)")
    p.add_argument("--out", default="dkkt-demo", help="where the runs and image grids go")
    p.add_argument("--iterations", type=int, default=d.iterations)
    p.add_argument("--eval-epochs", type=int, default=d.eval_epochs)
    p.add_argument("--num-eval", type=int, default=d.num_eval)
    p.add_argument("--seed", type=int, default=d.seed)
    _add_common(p)
    p.set_defaults(func=cmd_demo)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda when available)")


def _add_pretrain(sub) -> None:
    p = sub.add_parser("pretrain", help="train the edge ConvNet on a full training set")
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--data-root", default=None)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--refit-classifier", action="store_true",
                   help="solve the classifier layer exactly for the weight-decayed loss (a KKT point)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="checkpoint path (.pt)")
    _add_common(p)
    p.set_defaults(func=cmd_pretrain)


def _add_distill(sub) -> None:
    from .methods import DKKTMethodConfig, DSVMethodConfig, GMConfig

    p = sub.add_parser("distill", help="distil a practical subset into a synthetic set")
    p.add_argument("--method", default="dm_dkkt", help="dm, dm_star, dc, dsa, dsv, dm_dkkt or a plugin's")
    p.add_argument("--model", default="ConvNet")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any other config field")
    flags: dict[str, dataclasses.Field] = {}  # every built-in config field, parsed with its type
    for cls in (DKKTMethodConfig, DSVMethodConfig, GMConfig):
        for f in dataclasses.fields(cls):
            if f.name not in flags:
                flags[f.name] = f
                p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=_field_type(f),
                               default=None, help=f"(default {f.default!r})")
    _add_eval_flags(p, num_eval=0)
    _add_common(p)
    p.set_defaults(func=cmd_distill, config_flags=flags)


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="train fresh ConvNets on a synthetic set and test them")
    p.add_argument("--synthetic", required=True, help="synthetic.pt or its run directory")
    p.add_argument("--dataset", default=None, help="default: the one the set was distilled from")
    p.add_argument("--data-root", default=None)
    p.add_argument("--json", default=None, help="also write the result here")
    _add_eval_flags(p, num_eval=5)
    _add_common(p)
    p.set_defaults(func=cmd_evaluate)


def _add_plugins(sub) -> None:
    p = sub.add_parser("plugins", help="list the components found through entry points")
    p.add_argument("--group", choices=registry.GROUPS, help="only this group")
    p.add_argument("--no-load", action="store_true", help="read metadata only; import nothing")
    p.set_defaults(func=cmd_plugins)


# Subcommand builders; the engine adds its own here.
SUBCOMMANDS: list[Callable] = [_add_pretrain, _add_distill, _add_evaluate, _add_demo, _add_plugins]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dkkt", description="Practical dataset distillation with the Deep-KKT loss.")
    parser.add_argument("--version", action="version", version=f"dkkt-plugin {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``dkkt`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = _command_line(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except DkktError as exc:
        print(f"dkkt {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dkkt {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
