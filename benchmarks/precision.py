"""Does bf16 (or another backend) change the results? DM sets evaluated both ways.

On real Fashion-MNIST (pipc all, ``--ipc`` images per class, ``--iterations`` DM steps from the
same real initialisation and seed), two synthetic sets are distilled: one with precision fp32,
one with precision bf16 (:mod:`dkkt_plugin.runtime`; for DM that is the real-image embedding).
Their DM loss curves are compared, and the sets are evaluated by the dm protocol (scaled to
``--eval-epochs``) over the same ``--num-eval`` evaluation seeds on ``--test-per-class`` test
images per class (the first ones of each class): the fp32 set trained in fp32 (the baseline),
the bf16 set trained in fp32 (what bf16 DM changes) and the bf16 set trained in bf16 (what bf16
training changes on top). Output: ``precision.json`` and ``precision.md`` with mean ± std per
cell, and the paired differences (same evaluation seeds, hence the same initial weights and
minibatch/augmentation draws) with a paired t-test: bf16 training against fp32 training of the
same set, and the bf16 set against the fp32 set, both trained in fp32.

``--compare compile`` instead distils only the bf16 set and trains it in bf16 eagerly and with
``--backend compile`` (each training chunk through ``torch.compile``), paired the same way.

``--compare backend`` distils two bf16 sets, one with the fused CPU kernels (``--backend cpu``,
the default: set ``bf16``: DM's real embedding and its synthetic images' forward and backward)
and one through torch's ops (``--backend torch``: set ``bf16-torch``), and evaluates them with
bf16 training through torch's ops (``bf16+torch``) and the ``bf16`` set also with the fused
blocks (``bf16``, the default), paired the same way: what the fused kernels change in
distillation, and what they change in training.

``--compare dkkt`` distils sets with a method that has the DKKT term (``--method dm_dkkt``, the
default here, or ``dsv``; the packaged Fashion-MNIST edge model) at precision fp32 (set
``dkkt-fp32``), at precision bf16 (set ``dkkt-bf16``: the edge model's feature pass, and DM+DKKT's
real embedding, in bf16) and, as a control, at fp32 through torch's ops instead of the fused
blocks (``--backend torch``: set ``dkkt-fp32-torch``, the same arithmetic up to float rounding:
how far rounding alone moves the result of a long, chaotic run such as DSV's), and evaluates
them with the default (bf16, fused) training, paired the same way; the method's loss difference
is reported as for fp32 vs bf16.

Training cells: ``fp32`` / ``bf16`` (the precision; backend cpu, the default), ``+compile``
(backend compile), ``+torch`` (backend torch).

Usage::

    python -m benchmarks.precision [--ipc 10] [--iterations 100] [--eval-epochs 300] [--num-eval 3]
        [--compare precision|compile|backend|dkkt] [--method dm|dm_dkkt|dsv] [--out DIR]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

if __package__ in (None, ""):  # `python benchmarks/precision.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from scipy import stats  # noqa: E402

from dkkt_plugin import runtime  # noqa: E402
from dkkt_plugin.data import load_fashion_mnist  # noqa: E402
from dkkt_plugin.demo import packaged_edge_model  # noqa: E402
from dkkt_plugin.engine import build_config, load_distill_data, method_class  # noqa: E402
from dkkt_plugin.evaluation import evaluate_synthetic, get_protocol  # noqa: E402

from dkkt_plugin.provenance import cpu_model, versions  # noqa: E402

# per --compare: the sets to distil (keys of SETS), the (distilled with, trained with) cells,
# and (what is compared, changed cell, baseline cell), paired by evaluation seed; training
# "bf16+compile" is bf16 training through the compiled step
COMPARISONS = {
    "precision": (("fp32", "bf16"), (("fp32", "fp32"), ("bf16", "fp32"), ("bf16", "bf16")),
                  (("bf16 training (bf16 set)", ("bf16", "bf16"), ("bf16", "fp32")),
                   ("bf16 DM embedding (fp32 training)", ("bf16", "fp32"), ("fp32", "fp32")))),
    "compile": (("bf16",), (("bf16", "bf16"), ("bf16", "bf16+compile")),
                (("compiled training step (bf16 set, bf16 training)", ("bf16", "bf16+compile"), ("bf16", "bf16")),)),
    "backend": (("bf16-torch", "bf16"), (("bf16-torch", "bf16+torch"), ("bf16", "bf16+torch"), ("bf16", "bf16")),
                (("fused kernels in DM (bf16 training, torch ops)", ("bf16", "bf16+torch"),
                  ("bf16-torch", "bf16+torch")),
                 ("fused training blocks (bf16 set, bf16 training)", ("bf16", "bf16"), ("bf16", "bf16+torch")))),
    "dkkt": (("dkkt-fp32", "dkkt-bf16", "dkkt-fp32-torch"),
             (("dkkt-fp32", "bf16"), ("dkkt-bf16", "bf16"), ("dkkt-fp32-torch", "bf16")),
             (("bf16 DKKT feature pass (bf16 training)", ("dkkt-bf16", "bf16"), ("dkkt-fp32", "bf16")),
              ("control: float rounding only, torch's ops instead of the fused blocks (fp32)",
               ("dkkt-fp32-torch", "bf16"), ("dkkt-fp32", "bf16")))),
}
# the speed settings each set is distilled with (dkkt_plugin.runtime.use)
SETS = {"fp32": {"precision": "fp32"}, "bf16": {"precision": "bf16"},
        "bf16-torch": {"precision": "bf16", "backend": "torch"},
        "dkkt-fp32": {"precision": "fp32"}, "dkkt-bf16": {"precision": "bf16"},
        "dkkt-fp32-torch": {"precision": "fp32", "backend": "torch"}}
TRAINING_BACKENDS = {"compile": "compile", "torch": "torch"}  # a training cell's "+..." suffix -> its backend
DKKT_METHODS = ("dm_dkkt", "dsv")  # the methods with a DKKT term (and an edge model)


def paired(changed: list[float], baseline: list[float]) -> dict:
    """Mean and std of the per-seed differences and the paired t-test's p-value (``nan`` for
    one seed or identical runs)."""
    d = [a - b for a, b in zip(changed, baseline)]
    p = float(stats.ttest_rel(changed, baseline).pvalue) if len(d) > 1 and any(d) else float("nan")
    return {"mean_difference": statistics.mean(d), "std_difference": statistics.pstdev(d), "p_value": p,
            "differences": d}


def distil(name: str, *, ipc: int, iterations: int, seed: int, data_root: Optional[str], train,
           method: str = "dm") -> dict:
    """``method`` on Fashion-MNIST under the speed settings of set ``name`` of ``SETS`` (the
    packaged edge model for the DKKT methods); images, labels, losses, s/it."""
    edge = {"edge_model": str(packaged_edge_model())} if method in DKKT_METHODS else {}
    cfg = build_config(method, dataset="fashion_mnist", data_root=data_root, ipc=ipc, pipc="all",
                       iterations=iterations, seed=seed, **edge)
    data = load_distill_data(cfg, train=train)
    with runtime.use(**SETS[name]):
        method = method_class(method)(cfg, data, device="cpu")
        losses, t0 = [], time.perf_counter()
        for it in range(iterations):
            losses.append(method.step(it)["loss"])
    return {"images": method.images.detach().clone(), "labels": method.labels.clone(), "losses": losses,
            "seconds_per_iteration": (time.perf_counter() - t0) / max(iterations, 1)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.precision", description=__doc__.split("\n\n")[0])
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--eval-epochs", type=int, default=300)
    p.add_argument("--num-eval", type=int, default=3)
    p.add_argument("--test-per-class", type=int, default=1000, help="test images per class (1000: all)")
    p.add_argument("--seed", type=int, default=0, help="distillation seed; evaluation seeds are 0..num_eval-1")
    p.add_argument("--compare", choices=sorted(COMPARISONS), default="precision",
                   help="precision: bf16 vs fp32 (DM embedding and training); compile: compiled vs eager "
                        "training; backend: the fused CPU kernels vs torch's ops in DM and in training; dkkt: "
                        "the DKKT term's feature pass in bf16 vs fp32")
    p.add_argument("--method", choices=("dm", *DKKT_METHODS), default=None,
                   help="the distillation method (default: dm, or dm_dkkt with --compare dkkt)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", default="benchmarks/results/precision-cpu")
    args = p.parse_args(argv)
    method = args.method or ("dm_dkkt" if args.compare == "dkkt" else "dm")
    if args.compare == "dkkt" and method not in DKKT_METHODS:
        p.error(f"--compare dkkt needs a method with the DKKT term: --method {' or '.join(DKKT_METHODS)}")
    if args.compare != "dkkt" and method != "dm":
        p.error(f"--compare {args.compare} compares DM's options: --method dm")
    argv_list = list(sys.argv[1:] if argv is None else argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    train = load_fashion_mnist(args.data_root, train=True)
    test = load_fashion_mnist(args.data_root, train=False)
    keep = torch.cat([(test.targets == c).nonzero().flatten()[: args.test_per_class]
                      for c in range(test.num_classes)])
    x_test, y_test = test.images[keep], test.targets[keep]
    load_start = os.getloadavg()[0]
    set_names, cell_specs, pairs = COMPARISONS[args.compare]
    sets = {}
    for name in set_names:
        sets[name] = distil(name, ipc=args.ipc, iterations=args.iterations, seed=args.seed,
                            data_root=args.data_root, train=train, method=method)
        print(f"distilled set {name}: final loss {sets[name]['losses'][-1]:.3f}, "
              f"{sets[name]['seconds_per_iteration']:.2f} s/it", flush=True)
    base_losses = sets[set_names[0]]["losses"]  # the baseline set comes first
    loss_rel = {name: [abs(x - y) / abs(x) for x, y in zip(base_losses, sets[name]["losses"])]
                for name in set_names[1:]}
    proto = get_protocol("dm", args.eval_epochs)  # its training precision and backend: per cell below
    cells = []
    for set_prec, train_prec in cell_specs:
        precision, _, suffix = train_prec.partition("+")
        with runtime.use(precision=precision, backend=TRAINING_BACKENDS.get(suffix, "cpu")):
            r = evaluate_synthetic(sets[set_prec]["images"], sets[set_prec]["labels"], x_test, y_test,
                                   protocol=proto, num_eval=args.num_eval, seed=0, desc=f"{set_prec}/{train_prec}")
        accs = [100 * v for v in r.accuracies]
        cells.append({"distilled": set_prec, "trained": train_prec, "accuracies": accs,
                      "mean": statistics.mean(accs), "std": statistics.pstdev(accs), "seeds": r.seeds,
                      "seconds": r.seconds, "load_after": os.getloadavg()[0]})
        print(f"set {set_prec}, training {train_prec}: {cells[-1]['mean']:.2f} ± {cells[-1]['std']:.2f} % "
              f"({r.seconds:.0f} s)", flush=True)
    by_cell = {(c["distilled"], c["trained"]): c["accuracies"] for c in cells}
    comparisons = [{"what": what, "changed": list(new), "baseline": list(old), **paired(by_cell[new], by_cell[old])}
                   for what, new, old in pairs]
    for c in comparisons:
        print(f"{c['what']}: {c['mean_difference']:+.2f} ± {c['std_difference']:.2f} points (paired t-test p "
              f"{c['p_value']:.2f})", flush=True)
    report = {"command": "python -m benchmarks.precision " + " ".join(shlex.quote(x) for x in argv_list),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()},
              "versions": versions(), "load_start": load_start, "load_end": os.getloadavg()[0],
              "settings": {"method": method, "ipc": args.ipc, "pipc": "all", "iterations": args.iterations, "distill_seed": args.seed,
                           "eval_epochs": args.eval_epochs, "num_eval": args.num_eval, "protocol": proto.describe("fp32"),
                           "speed": {"sets": {k: SETS[k] for k in set_names}},
                           "test_images": int(y_test.numel())},
              "distillation": {k: {"losses": v["losses"], "seconds_per_iteration": v["seconds_per_iteration"]}
                               for k, v in sets.items()},
              "compare": args.compare,
              "loss_relative_difference": {  # each set against the first, per iteration
                  name: {"max": max(r), "median": statistics.median(r), "first": r[0]} for name, r in loss_rel.items()},
              "evaluation": cells, "comparisons": comparisons}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "precision.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    title = {"precision": "bf16 vs fp32", "compile": "Compiled vs eager training step",
             "backend": "Fused CPU kernels vs torch's ops (DM's passes, training)",
             "dkkt": f"The DKKT term's feature pass in bf16 vs fp32 ({method})"}[args.compare]
    lines = [f"# {title} on real Fashion-MNIST", "", f"- command: `{report['command']}`",
             f"- date {report['date']}; {report['machine']['cpu_model']}, {report['machine']['torch_threads']} torch "
             f"thread(s); torch {report['versions']['torch']}; load average {load_start:.2f} at start, "
             f"{report['load_end']:.2f} at end",
             f"- {method}: ipc {args.ipc}, pipc all, {args.iterations} iterations, seed {args.seed}; evaluation: "
             f"{proto.describe('fp32')} (training precision: per row), {args.num_eval} seeds (0..{args.num_eval - 1}), {y_test.numel()} test images "
             f"(the first {args.test_per_class} of each class)", ""]
    for name, r in loss_rel.items():
        lines += [f"{method} loss, relative difference of set {name} vs set {set_names[0]} (same seed, same "
                  "draws): first iteration "
                  f"{r[0]:.2e}, median {statistics.median(r):.2e}, max {max(r):.2e} "
                  "(the trajectories drift apart as the images do)", ""]
    lines += ["| set distilled with | evaluation training | accuracy (%) | s (all runs) | runs |", "|---|---|---|---|---|"]
    for c in cells:
        lines.append(f"| {c['distilled']} | {c['trained']} | {c['mean']:.2f} ± {c['std']:.2f} | {c['seconds']:.0f} | "
                     + ", ".join(f"{v:.2f}" for v in c["accuracies"]) + " |")
    lines += ["", "Paired by evaluation seed (same initial weights and draws), changed minus baseline:", "",
              "| what changes | changed (set/training) | baseline | difference (points), mean ± std | paired t-test p |",
              "|---|---|---|---|---|"]
    for c in comparisons:
        lines.append(f"| {c['what']} | {'/'.join(c['changed'])} | {'/'.join(c['baseline'])} | "
                     f"{c['mean_difference']:+.2f} ± {c['std_difference']:.2f} | {c['p_value']:.2f} |")
    (out / "precision.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {out / 'precision.json'} and {out / 'precision.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
