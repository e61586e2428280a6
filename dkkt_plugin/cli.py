"""The ``dkkt`` command line: ``pretrain``, ``distill``, ``evaluate``, ``demo`` and ``plugins``.

Every subcommand is a function ``(args) -> int``; :func:`main` parses, dispatches, and turns the
package's own errors (and argparse's) into ONE line on stderr with exit status 2. Library code
never exits. Config flags are generated from the typed dataclass configs
(:mod:`dkkt_plugin.settings`, walked by :mod:`dkkt_plugin.config`): ``dkkt distill --method M
--help`` lists every setting of method M with its help and real default, the essential ones
first.

Parsing imports no torch (the configs are plain dataclasses), so every ``--help`` answers at
once; torch is imported by the commands that compute (pretrain, distill, evaluate, demo), which
run with the thread count of ``--threads`` (:func:`dkkt_plugin.provenance.use_threads`) and the
speed settings of ``--precision`` and ``--backend`` (:mod:`dkkt_plugin.runtime`). Flags are
never abbreviated: ``--iteration`` is an error that suggests ``--iterations``.
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import re
import shlex
import sys
from typing import Any, Callable, Iterator, NoReturn, Optional, Sequence

from . import __version__, registry
from . import config as configs
from .errors import ConfigError, DkktError, UnknownComponentError
from .settings import EvalConfig

DEFAULT_METHOD = "dm_dkkt"
EVALUATE_DEFAULTS = EvalConfig(num_eval=5)  # `dkkt evaluate` runs five evaluations unless told
# The settings `dkkt distill --help` lists first, in this order ("--method" stands for that flag).
ESSENTIALS = ("dataset", "data_root", "ipc", "pipc", "--method", "edge_model", "iterations")


class _Parser(argparse.ArgumentParser):
    """argparse without abbreviated flags, whose usage errors are one line (``dkkt distill:
    error: ...``, with "did you mean" where a close name exists) and exit 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {_suggest_choice(message)} (see {self.prog} --help)\n")


def _suggest_choice(message: str) -> str:
    """argparse's "invalid choice: 'distil' (choose from ...)" with "; did you mean distill?"."""
    found = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
    if found:
        close = difflib.get_close_matches(found.group(1), re.findall(r"'([^']*)'", found.group(2)), n=1)
        if close:
            return f"{message}; did you mean {close[0]}?"
    return message


def _unrecognized(extras: Sequence[str], parser: argparse.ArgumentParser, command: Optional[str]) -> str:
    """The error for arguments no flag takes, naming the closest flag of ``parser`` for each
    mistyped one (or the methods that have it, for a setting of another method)."""
    from .runtime import RETIRED_FLAGS

    options = sorted({s for action in parser._actions for s in action.option_strings if s.startswith("--")})
    hints: list[str] = []
    elsewhere: list[str] = []
    for arg in extras:
        if not arg.startswith("--"):
            continue
        flag = arg.split("=", 1)[0]
        if flag in RETIRED_FLAGS:
            continue  # named below with the flag that replaced it
        close = difflib.get_close_matches(flag, options, n=1, cutoff=0.7)
        if close:
            hints.append(close[0])
        elif command == "distill":
            owners = _methods_with_flag(flag)
            if owners:
                elsewhere.append(f"{flag} is a setting of --method {' or '.join(owners)}")
    elsewhere += [f"speed is one setting for every pass: use {RETIRED_FLAGS[flag]} instead of {flag}"
                  for flag in dict.fromkeys(a.split("=", 1)[0] for a in extras) if flag in RETIRED_FLAGS]
    text = f"unrecognized arguments: {' '.join(extras)}"
    if hints:
        text += f"; did you mean {' or '.join(dict.fromkeys(hints))}?"
    return "; ".join([text, *elsewhere])


def _methods_with_flag(flag: str) -> list[str]:
    """The built-in methods whose settings include the flag ``flag``."""
    from .settings import METHOD_CONFIGS

    return [name for name, cls in sorted(METHOD_CONFIGS.items())
            if any(spec.flag == flag for spec in configs.config_fields(cls))]


def cmd_plugins(args: argparse.Namespace) -> int:
    """List every discovered component per group, loading each to report broken ones."""
    broken = 0
    groups = [args.group] if args.group else list(registry.GROUPS)
    for group in groups:
        found = registry.discover(group)
        print(f"{registry.PREFIX}{group} ({len(found)})")
        for name in sorted(found):
            comp = found[name]
            status = "not loaded"
            if not args.no_load:
                try:
                    comp.load()
                    status = "ok"
                except DkktError as exc:
                    broken += 1
                    cause = exc.__cause__
                    status = f"BROKEN: {type(cause).__name__}: {cause}" if cause else f"BROKEN: {exc}"
            print(f"  {name:<20} {comp.value:<55} [{comp.distribution}] {status}")
    if broken:
        print(f"{broken} plugin(s) failed to load; see above.", file=sys.stderr)
    return 1 if broken else 0


def _command_line(argv: Optional[Sequence[str]]) -> str:
    return "dkkt " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))


@contextlib.contextmanager
def _computing(args: argparse.Namespace) -> Iterator[None]:
    """The body of a command that computes: torch's threads set by ``--threads`` and the speed
    settings by ``--precision`` / ``--backend`` (both restored after)."""
    from . import runtime
    from .provenance import use_threads

    with use_threads(getattr(args, "threads", None)), \
            runtime.use(precision=getattr(args, "precision", None), backend=getattr(args, "backend", None)):
        yield


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .pretrain import PretrainConfig, pretrain
    from .provenance import resolve_device

    cfg = configs.build(PretrainConfig, configs.overrides_from_args(args))
    device = resolve_device(args.device)
    with _computing(args):
        meta = pretrain(cfg, args.out, device=device, command=args.command_line)
    print(f"edge model: {args.out} ({cfg.arch})  test accuracy {100 * meta['test_accuracy']:.2f} % "
          f"(train {100 * meta['train_accuracy']:.2f} %, {meta['train_seconds']:.0f} s on {meta['device']})")
    return 0


def _summary(record: dict) -> str:
    last = record["history"][-1] if record.get("history") else {}
    total = record.get("iterations", record["iterations_run"])
    now, seconds = record["iterations_run"], record["seconds"]
    this_time = record.get("invocation_seconds", seconds)
    if now == total:  # one invocation ran the whole run
        line = f"{record['method']}: {total} iterations in {seconds:.1f} s ({1000 * seconds / max(total, 1):.0f} ms/it)"
    elif now == 0:
        line = f"{record['method']}: already at iteration {total}, nothing ran; the run: {seconds:.1f} s"
    else:
        line = (f"{record['method']}: iterations {total - now}..{total}: {now} in {this_time:.1f} s "
                f"({1000 * this_time / now:.0f} ms/it); the run: {total} iterations in {seconds:.1f} s")
    line += f", final loss {last.get('loss', float('nan')):.4g}"
    fid = record.get("fidelity") or {}
    if fid:
        parts = [f"high-frequency share {fid['high_frequency_share']:.3f}"]
        parts += [f"{k.replace('_', ' ')} {100 * fid[k]:.0f} %" for k in ("edge_accuracy", "transfer_accuracy") if k in fid]
        line += "\nfidelity: " + ", ".join(parts)
    if "stationarity" in last:
        line += (f"\nDKKT: primal {last['primal']:.4g}, stationarity {last['stationarity']:.4g} = "
                 f"{last['stat_ratio']:.3f} x its floor {last['floor']:.4g}, edge-model accuracy on the "
                 f"synthetic set {100 * last['edge_accuracy']:.0f} %, multipliers min/median/max "
                 f"{last['lambda_min']:.3g}/{last['lambda_median']:.3g}/{last['lambda_max']:.3g} "
                 f"({last['lambda_zero']} zero)")
    return line


def _eval_config(args: argparse.Namespace, base: EvalConfig) -> EvalConfig:
    """The :class:`~dkkt_plugin.settings.EvalConfig` of the evaluation flags given, over ``base``
    (the command's defaults)."""
    return configs.build(EvalConfig, configs.overrides_from_args(args, EvalConfig), base=base)


def _protocol(eval_cfg: EvalConfig):
    """The evaluation protocol of the evaluation settings ``eval_cfg``."""
    from .evaluation import get_protocol

    return get_protocol(eval_cfg.eval_protocol, eval_cfg.eval_epochs)


def _eval_options(eval_cfg: EvalConfig) -> dict[str, Any]:
    """The keyword arguments of ``evaluate()`` that the evaluation settings ``eval_cfg`` set."""
    return dict(num_eval=eval_cfg.num_eval, seed=eval_cfg.eval_seed, test_size=eval_cfg.test_size,
                test_seed=eval_cfg.test_seed)


def _check_test_size(eval_cfg: EvalConfig, dataset: str, data_root: Optional[str]) -> None:
    """Fail now, not after the distillation, when the test set cannot give ``--test-size``."""
    if eval_cfg.test_size is None:
        return
    if not eval_cfg.num_eval:
        raise ConfigError(f"--test-size {eval_cfg.test_size} sets the test images of the evaluation after distilling: "
                          "add --num-eval N (evaluation runs), or drop --test-size")
    from .evaluation import stratified_subset

    test = registry.load("datasets", dataset)(data_root, train=False)
    stratified_subset(test.targets, eval_cfg.test_size, seed=eval_cfg.test_seed)


def cmd_distill(args: argparse.Namespace) -> int:
    from .engine import build_config, distill_then_evaluate
    from .provenance import resolve_device

    overrides = {**configs.overrides_from_args(args, method_config_class(args.method)), **configs.parse_set(args.set)}
    cfg = build_config(args.method, overrides)
    device = resolve_device(args.device)
    eval_cfg = _eval_config(args, EvalConfig())
    protocol = _protocol(eval_cfg) if eval_cfg.num_eval else None
    budgets = sorted(set(args.eval_at or ()))
    if budgets and protocol is None:
        raise ConfigError("--eval-at evaluates the set at those iterations: add --num-eval N (evaluation runs)")
    if budgets and not 1 <= budgets[0] <= budgets[-1] <= cfg.iterations:
        raise ConfigError(f"--eval-at iterations must lie in 1..--iterations ({cfg.iterations}), got {budgets}")
    _check_test_size(eval_cfg, cfg.dataset, cfg.data_root)
    with _computing(args):
        data = None
        edge = _edge_spec(args)
        if edge is not None:  # an edge model that does not record everything itself
            from .engine import load_distill_data

            data = load_distill_data(cfg, device, edge=edge)
        transfer = None
        if args.transfer_model:
            from .pretrain import load_edge_model

            transfer, _ = load_edge_model(args.transfer_model, device=device)
        aug = getattr(cfg, "augment", None)

        def evaluate(images, labels):
            from .evaluation import evaluate

            return evaluate(images, labels, dataset=cfg.dataset, data_root=cfg.data_root, protocol=protocol,
                            device=device, augmentation=aug.name if aug is not None else None,
                            **_eval_options(eval_cfg))

        def report(stop) -> None:
            print(_summary(stop.run.record))
            if stop.evaluation is not None:
                print(f"accuracy at iteration {stop.iteration}: {stop.evaluation}")

        stops = distill_then_evaluate(args.method, cfg, args.out, evaluate=evaluate if protocol else None,
                                      stops=budgets, resume=args.resume, device=device,
                                      checkpoint_every=args.checkpoint_every, command=args.command_line,
                                      transfer_model=transfer, on_stop=report, data=data)
        result = stops[-1].run
    print(f"wrote {result.out_dir}/synthetic.pt, synthetic.png, loss.png, record.json"
          + (", evaluations.jsonl" if protocol is not None else "") + (", snapshots/" if budgets else ""))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .engine import append_evaluation
    from .evaluation import evaluate
    from .fileio import check_writable, write_atomic
    from .provenance import provenance, resolve_device

    eval_cfg = _eval_config(args, EVALUATE_DEFAULTS)
    if eval_cfg.num_eval < 1:
        raise ConfigError(f"--num-eval must be >= 1, got {eval_cfg.num_eval}")
    protocol = _protocol(eval_cfg)
    device = resolve_device(args.device)
    if args.json:
        check_writable(args.json, "--json")  # now, not after the evaluation
    archs = list(dict.fromkeys(args.arch or ["convnet"]))
    with _computing(args):  # the records below say the threads that ran
        from .models import resolve

        for arch in archs:  # every name now, not after the first architectures have trained
            resolve(arch, "--arch")
        results = []
        for arch in archs:
            ev = evaluate(args.synthetic, dataset=args.dataset, data_root=args.data_root, protocol=protocol,
                          device=device, augmentation=args.augmentation, arch=arch, **_eval_options(eval_cfg))
            print(f"{args.synthetic} [{arch}]: {ev}" if args.arch else f"{args.synthetic}: {ev}")
            run_dir = Path(args.synthetic)
            if run_dir.is_dir():
                append_evaluation(run_dir, ev.as_dict(), command=args.command_line, device=device)
            results.append(ev.as_dict())
        if args.json:
            import json

            body = results[0] if len(results) == 1 else {"evaluations": results}
            payload = {"synthetic": str(args.synthetic), **body, **provenance(command=args.command_line, device=device)}
            write_atomic(args.json, json.dumps(payload, indent=1).encode())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import DemoConfig, check_out, run_demo

    cfg = configs.build(DemoConfig, configs.overrides_from_args(args))
    for method in cfg.methods:  # every name now, not after the first methods have run
        registry.get("methods", method)
    check_out(args.out, cfg.methods, args.resume)  # before any work: a demo folder is never rewritten unasked
    from .provenance import resolve_device

    device = resolve_device(args.device)
    with _computing(args):
        run_demo(args.out, cfg, device=device, command=args.command_line, resume=args.resume)
    return 0


# -- parsers ---------------------------------------------------------------------------------------
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _add_machine(p: argparse.ArgumentParser) -> None:
    from .provenance import THREADS_ENV, choose_threads

    g = p.add_argument_group("machine")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: auto = cuda when available)")
    default = choose_threads(None, environ={})
    g.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help=f"torch threads of the computation (default: ${THREADS_ENV}, else $OMP_NUM_THREADS, else "
                        f"min(cores, physical cores): {default.threads} here); a one-line note says when other work "
                        "keeps the cores busy")
    from .runtime import BACKEND_ENV, BACKENDS, PRECISION_ENV, PRECISIONS

    g.add_argument("--precision", default=None, choices=PRECISIONS,
                   help="precision of the passes that have a bf16 path (DM's real-image embedding, the DKKT term's "
                        "feature pass, network training): auto = bf16 where the device computes bf16 natively, else "
                        "fp32 (the dsv method and pretraining: fp32); bf16; fp32 "
                        f"(default: ${PRECISION_ENV}, else auto)")
    g.add_argument("--backend", default=None, choices=BACKENDS,
                   help="cpu: on the CPU, ConvNet blocks through the package's fused C kernels (built with the system "
                        "C compiler on first use) where they apply, torch's ops elsewhere; torch: torch's ops only; "
                        "compile: torch.compile for DM's real-image embedding and network training (a one-off compile "
                        f"per process) (default: ${BACKEND_ENV}, else cpu)")


def _add_eval_flags(p: argparse.ArgumentParser, base: EvalConfig, title: str = "evaluation") -> None:
    """The flags of :class:`~dkkt_plugin.settings.EvalConfig`, their defaults those of ``base``."""
    configs.add_arguments(p, EvalConfig, title=title, base=base)


def _edge_model_help() -> str:
    from .packaged import EDGE_MODELS

    names = "; ".join(f"{name}: {what}" for name, (_, what) in EDGE_MODELS.items())
    return (f"the pretrained edge model (methods that need one): a packaged model's name ({names}), the path "
            "of a checkpoint written by `dkkt pretrain`, a TorchScript file, or a state dict with --edge-arch")


def _add_edge_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("an edge model trained elsewhere (what its file does not record; a dkkt pretrain "
                             "checkpoint records all of it)")
    g.add_argument("--edge-arch", default=None, metavar="NAME",
                   help="architecture of a state-dict --edge-model: a model of `dkkt plugins --group models` "
                        "(convnet, mlp, lenet, alexnet, vgg11, resnet18, ...), module.path:factory, torchvision:NAME "
                        "or timm:NAME")
    g.add_argument("--edge-mean", type=float, nargs="+", default=None, metavar="M",
                   help="per-channel mean the edge model's training images were normalised with (default: the data's)")
    g.add_argument("--edge-std", type=float, nargs="+", default=None, metavar="S",
                   help="per-channel std of that normalisation (with --edge-mean)")
    g.add_argument("--edge-image-size", type=_positive_int, default=None, metavar="PX",
                   help="side of the images the edge model takes (default: the data's)")
    g.add_argument("--edge-num-classes", type=_positive_int, default=None, metavar="K",
                   help="classes of the edge model (default: the data's)")


def _edge_spec(args: argparse.Namespace):
    """The ``--edge-*`` flags as a :class:`dkkt_plugin.pretrain.EdgeSpec`, or None when none is given."""
    values = {k: getattr(args, f"edge_{k}", None) for k in ("arch", "mean", "std", "image_size", "num_classes")}
    if all(v is None for v in values.values()):
        return None
    from .pretrain import EdgeSpec

    return EdgeSpec(**values)


def _add_pretrain(sub, argv: Sequence[str]) -> None:
    from .settings import PretrainConfig

    p = sub.add_parser("pretrain", help="train the edge ConvNet on a full training set")
    p.add_argument("--out", required=True, help="checkpoint path (.pt); checked to be writable before training")
    configs.add_arguments(p, PretrainConfig, title="pretraining settings")
    _add_machine(p)
    p.set_defaults(func=cmd_pretrain)


def _method_in(argv: Sequence[str]) -> str:
    """The ``--method`` value of a distill command line (before parsing, to add its flags)."""
    for i, arg in enumerate(argv):
        if arg == "--method" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--method="):
            return arg.split("=", 1)[1]
    return DEFAULT_METHOD


def _command_in(argv: Sequence[str]) -> Optional[str]:
    """The subcommand of a command line: its first argument that is not a flag."""
    return next((a for a in argv if not a.startswith("-")), None)


def method_config_class(method: str) -> type:
    """The config class of the registered method ``method``, without importing torch for a
    built-in method (:data:`dkkt_plugin.settings.METHOD_CONFIGS`); another's from its class."""
    from .settings import METHOD_CONFIGS

    comp = registry.get("methods", method)
    if method in METHOD_CONFIGS and comp.value.startswith("dkkt_plugin."):
        return METHOD_CONFIGS[method]
    return comp.load().config_class


def _add_distill(sub, argv: Sequence[str]) -> None:
    p = sub.add_parser("distill", help="distil a practical subset into a synthetic set",
                       usage="%(prog)s --out DIR [--dataset D] [--ipc N] [--pipc N|all] [--method M]\n"
                             + " " * len("usage: dkkt distill ")
                             + "[--edge-model NAME|PATH] [--iterations N] [--num-eval N] [options]",
                       description="Distil with --method: the essential settings first, then the evaluation of the "
                                   "result and the method's other settings (`dkkt distill --method M --help` lists "
                                   "another method's). Nested settings are dotted: --dkkt.distance l1.")
    specs: dict[str, configs.FieldSpec] = {}
    cls = None
    method = _method_in(argv)
    if _command_in(argv) == "distill":
        try:
            cls = method_config_class(method)
        except UnknownComponentError as exc:
            raise UnknownComponentError(f"--method {method}: {exc}") from None
        specs = {spec.path: spec for spec in configs.config_fields(cls)}
    main = p.add_argument_group("what to distil")
    for key in ESSENTIALS:
        if key == "--method":
            main.add_argument("--method", default=DEFAULT_METHOD,
                              help=f"registered method: {', '.join(registry.names('methods'))} "
                                   f"(default: {DEFAULT_METHOD})")
        elif key in specs:
            edge = key == "edge_model"
            configs.add_argument(main, specs[key], help=_edge_model_help() if edge else None,
                                 metavar="NAME|PATH" if edge else None)
    main.add_argument("--out", required=True, help="run directory")
    main.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    _add_edge_flags(p)
    _add_eval_flags(p, EvalConfig(), title="evaluation of the distilled set")
    _add_machine(p)
    if cls is not None:
        configs.add_arguments(p, cls, skip=ESSENTIALS, title=f"advanced: {method} settings ({cls.__name__})")
    run = p.add_argument_group("advanced: the run")
    run.add_argument("--checkpoint-every", type=int, default=50, help="iterations between checkpoints (default: 50)")
    run.add_argument("--eval-at", type=int, nargs="+", default=None, metavar="N",
                     help="also evaluate the set at these iterations of the same run (it stops at each, keeps the "
                          "set as snapshots/it<N>.pt and continues); needs --num-eval")
    run.add_argument("--transfer-model", default=None, metavar="NAME|PATH",
                     help="an independent classifier (a packaged model's name or a `dkkt pretrain` checkpoint of "
                          "another seed or width): its accuracy on the synthetic images is reported as transfer "
                          "accuracy")
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="any setting by dotted key, e.g. --set dkkt.alpha=0.1 (third-party methods too)")
    p.set_defaults(func=cmd_distill)


def _add_evaluate(sub, argv: Sequence[str]) -> None:
    p = sub.add_parser("evaluate", help="train fresh networks (ConvNets, or --arch) on a synthetic set and test them")
    p.add_argument("--synthetic", required=True, help="synthetic.pt or its run directory")
    p.add_argument("--dataset", default=None, help="default: the one the set was distilled from")
    p.add_argument("--data-root", default=None, help="dataset folder (default: the loader's default location)")
    p.add_argument("--augmentation", default=None,
                   help="registered augmentation applying the protocol's DSA strategy (default: dsa)")
    p.add_argument("--arch", nargs="+", default=None, metavar="NAME",
                   help="architectures of the evaluation networks, one result line (and one evaluations.jsonl line) "
                        "each: convnet (the default), convnet_bn, convnet_nn, convnet_d1..d4, mlp, lenet, alexnet, "
                        "alexnet_bn, vgg11, vgg11_bn, resnet18, resnet18_bn, a plugin's (`dkkt plugins --group "
                        "models`), module.path:factory, torchvision:NAME or timm:NAME")
    p.add_argument("--json", default=None,
                   help="also write the result here (several --arch: under 'evaluations', one per architecture)")
    _add_eval_flags(p, EVALUATE_DEFAULTS)
    _add_machine(p)
    p.set_defaults(func=cmd_evaluate)


def _add_demo(sub, argv: Sequence[str]) -> None:
    from .demo import DemoConfig

    p = sub.add_parser("demo", help="DM vs DM+DKKT vs DSV on Fashion-MNIST (CPU-sized, no download)")
    p.add_argument("--out", default="dkkt-demo", help="where the runs and image grids go (default: dkkt-demo)")
    p.add_argument("--resume", action="store_true",
                   help="continue the demo runs already in --out (without it, a folder that holds one is an error)")
    configs.add_arguments(p, DemoConfig, title="demo settings")
    _add_machine(p)
    p.set_defaults(func=cmd_demo)


def _add_plugins(sub, argv: Sequence[str]) -> None:
    p = sub.add_parser("plugins", help="list the components found through entry points")
    p.add_argument("--group", choices=registry.GROUPS, help="only this group")
    p.add_argument("--no-load", action="store_true", help="read metadata only; import nothing")
    p.set_defaults(func=cmd_plugins)


# Subcommand builders ``(subparsers, argv)``.
SUBCOMMANDS: list[Callable] = [_add_pretrain, _add_distill, _add_evaluate, _add_demo, _add_plugins]


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The ``dkkt`` parser; ``argv`` selects the method whose settings ``distill`` offers."""
    parser = _Parser(prog="dkkt", description="Practical dataset distillation with the Deep-KKT loss.")
    parser.add_argument("--version", action="version", version=f"dkkt-plugin {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for add in SUBCOMMANDS:
        add(sub, argv)
    return parser


def _one_line_warnings() -> Callable:
    """A ``warnings.showwarning`` that prints each distinct warning once, as one line."""
    seen: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = " ".join(str(message).split())
        if text not in seen:
            seen.add(text)
            print(f"dkkt: warning: {text}", file=sys.stderr)

    return show


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``dkkt`` console script; returns the exit status."""
    import warnings

    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command_in(argv) or "dkkt"
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warnings()
        return _main(argv, command)


def _main(argv: list[str], command: str) -> int:
    try:
        parser = build_parser(argv)
        args, extras = parser.parse_known_args(argv)
        if extras:
            chosen = getattr(args, "command", None)
            subparsers = parser._subparsers._group_actions[0].choices if parser._subparsers else {}
            target = subparsers.get(chosen, parser)
            target.error(_unrecognized(extras, target, chosen))
        args.command_line = _command_line(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except DkktError as exc:
        print(f"dkkt {command}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dkkt {command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
