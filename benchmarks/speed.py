"""Speed benchmark: our DM, DM+DKKT and evaluation steps against the reference's loops.

Everything is measured in ONE process, interleaved (reference, ours, reference, ours, ...), so
a busy shared machine slows every variant alike; the ratios of adjacent measurements are the
numbers to read.

DM steps (Fashion-MNIST shape ``1x28x28``, 10 classes, ``--batch-real`` real images per class,
the full DSA strategy, a width-128 ConvNet), one ``step()`` each:

- ``reference``: a re-statement of DatasetCondensation's ``main_DM.py`` ConvNet branch (see
  :class:`ReferenceDM`): a fresh ConvNet with the reference's layers per iteration, then per
  class one real forward (``batch_real`` images, no gradient) and one synthetic forward, each
  class's real and synthetic batch sharing one DSA draw, fp32;
- ``dm``: ``dkkt distill --method dm``'s step with the default speed settings (precision ``auto``:
  the real embedding in bf16 where the CPU has native bf16; backend ``cpu``: that embedding
  through the fused CPU kernels of :mod:`dkkt_plugin.cpu`, the synthetic images' forward and
  backward with the blocks fused; chunked batched forward);
- ``dm_torch``: ``dm`` with ``--backend torch`` (torch's ops only: the real embedding under
  torch's bf16 autocast);
- ``dm_fp32``: ``dm`` with ``--precision fp32`` (the real embedding exact, through torch);
- ``dm_compiled``: ``dm`` with ``--backend compile`` (the real embedding through
  ``torch.compile``; its one-off compile falls in the untimed warm-up, once per thread count);
- ``dm_dkkt``: a DM+DKKT step with its defaults (DKKT defaults, a random width-128 edge ConvNet;
  the fused kernels on both terms' passes; the DKKT term's feature pass and DM's real embedding
  in bf16 where the CPU has native bf16);
- ``dm_dkkt_fp32``: ``dm_dkkt`` with ``--precision fp32`` (every pass of the step in fp32).

Each variant is built and run under its speed settings (:func:`dkkt_plugin.runtime.use`;
:data:`SPEED` lists them, and the report records them). FLOPs are counted on the torch path of
each variant (``--backend torch``, eager): the fused kernels' work is invisible to the counter
and compiled code runs eagerly under it.

Evaluation (``--eval-epochs`` epochs of training a fresh ConvNet on 100 synthetic images with
DSA, batch 256, SGD lr 0.01 momentum 0.9 wd 5e-4):

- ``eval_reference``: a re-statement of the reference ``evaluate_synset`` / ``epoch('train')``
  loop (:func:`reference_train`); ``eval``: ``dkkt_plugin.training.train_classifier`` with the
  dm protocol's settings and the default speed settings (precision ``auto``: bf16 autocast where
  the CPU has native bf16, else fp32; backend ``cpu``: the blocks fused); ``eval_torch``: ``eval``
  with ``--backend torch``; ``eval_fp32``: ``eval`` with ``--precision fp32``; ``eval_compiled``:
  ``eval`` with ``--backend compile`` (each chunk's forward and loss through ``torch.compile``;
  compiled in the untimed warm-up, FLOPs counted on an eager ``eval``).

Per variant: median seconds over ``--rounds`` timed runs (after one warm-up), the conv/linear
FLOPs one run does (``torch.utils.flop_counter``, forward and backward as executed; bf16 FLOPs
count the same), the achieved GFLOP/s against the machine's peak, and the peak resident memory
above the process's RSS before the run (psutil, sampled every 2 ms). Every measurement records
the 1-minute load average before and after it.

Usage::

    python -m benchmarks.speed [--ipc 1 10 50] [--threads 1 2] [--rounds 3] [--eval-epochs 10]
        [--variants ...] [--eval-variants ...] [--out DIR]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

if __package__ in (None, ""):  # `python benchmarks/speed.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from dkkt_plugin import runtime  # noqa: E402
from dkkt_plugin.augment import DSA  # noqa: E402
from dkkt_plugin.engine import build_config, method_class  # noqa: E402
from dkkt_plugin.methods.base import DistillData  # noqa: E402
from dkkt_plugin.nets import AvgPool2x2, ConvNet  # noqa: E402
from dkkt_plugin.evaluation import get_protocol  # noqa: E402
from dkkt_plugin.training import train_classifier  # noqa: E402

from dkkt_plugin.provenance import cpu_model, versions  # noqa: E402
from dkkt_plugin.settings import DSA_STRATEGY  # noqa: E402

SHAPE = (1, 28, 28)  # Fashion-MNIST
NUM_CLASSES = 10
DM_VARIANTS = ("reference", "dm", "dm_torch", "dm_fp32", "dm_compiled", "dm_dkkt", "dm_dkkt_fp32")
EVAL_VARIANTS = ("eval_reference", "eval", "eval_torch", "eval_fp32", "eval_compiled")
# each variant's speed settings (dkkt_plugin.runtime.use); the others run the defaults
SPEED = {"dm_torch": {"backend": "torch"}, "dm_fp32": {"precision": "fp32"}, "dm_compiled": {"backend": "compile"},
         "dm_dkkt_fp32": {"precision": "fp32"}, "eval_torch": {"backend": "torch"},
         "eval_fp32": {"precision": "fp32"}, "eval_compiled": {"backend": "compile"}}
COUNTING = {"backend": "torch"}  # FLOPs are counted on torch's ops, eagerly


# ---- the reference's loops, re-stated ----------------------------------------------------------
def reference_convnet(generator: torch.Generator, width: int = 128, device: Any = "cpu") -> ConvNet:
    """A fresh ConvNet with the reference's layers: nn.AvgPool2d instead of our faster pool."""
    net = ConvNet(SHAPE[0], NUM_CLASSES, SHAPE[1], width=width, generator=generator, device=device)
    for i, m in enumerate(net.features):
        if isinstance(m, AvgPool2x2):
            net.features[i] = nn.AvgPool2d(2)
    return net


class ReferenceDM:
    """DatasetCondensation ``main_DM.py``, ConvNet branch, one iteration per :meth:`step`.

    Per iteration: a fresh network (``get_network``; parameters frozen, train mode), then for each
    class c: ``batch_real`` random real images of c (``get_images``), its ``ipc`` synthetic
    images, one Siamese DSA draw shared by both (``DiffAugment(..., seed=s)`` twice; here our DSA
    with one group), ``embed(real).detach()`` and ``embed(syn)``, and the squared distance of the
    means added to the loss; then SGD (lr 1, momentum 0.5) on the images. All fp32.
    """

    def __init__(self, real: torch.Tensor, labels: torch.Tensor, ipc: int, batch_real: int,
                 generator: torch.Generator, width: int = 128, device: Any = "cpu") -> None:
        self.real, self.batch_real, self.ipc, self.width = real.to(device), batch_real, ipc, width
        self.gen, self.device = generator, device
        self.indices_class = [(labels == c).nonzero().flatten() for c in range(NUM_CLASSES)]
        self.image_syn = torch.randn(NUM_CLASSES * ipc, *SHAPE, generator=generator).to(device).requires_grad_()
        self.optimizer = torch.optim.SGD([self.image_syn], lr=1.0, momentum=0.5)
        self.dsa = DSA(DSA_STRATEGY, generator=generator)

    def step(self, iteration: int = 0) -> dict[str, float]:
        net = reference_convnet(self.gen, self.width, self.device).train().requires_grad_(False)
        loss = torch.tensor(0.0, device=self.device)
        for c in range(NUM_CLASSES):
            idx = self.indices_class[c]
            img_real = self.real[idx[torch.randperm(idx.numel(), generator=self.gen)[: self.batch_real]]]
            img_syn = self.image_syn[c * self.ipc:(c + 1) * self.ipc]
            draw = self.dsa.sample(1, device=self.device)  # one draw, both batches (the reference's shared seed)
            img_real, img_syn = self.dsa(img_real, draw), self.dsa(img_syn, draw)
            output_real = net.embed(img_real).detach()  # (batch_real, 2048)
            output_syn = net.embed(img_syn)  # (ipc, 2048)
            loss = loss + ((output_real.mean(0) - output_syn.mean(0)) ** 2).sum()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item()}


def reference_train(images: torch.Tensor, labels: torch.Tensor, epochs: int, generator: torch.Generator,
                    width: int = 128, device: Any = "cpu") -> float:
    """DatasetCondensation ``evaluate_synset`` training (without its final test), re-stated.

    A fresh ConvNet; SGD lr 0.01, momentum 0.9, weight decay 5e-4; per epoch a shuffled
    DataLoader of batch 256; each minibatch augmented by unseeded DSA (per-image parameters,
    one family per call); forward, cross-entropy, the accuracy through ``.cpu().numpy()``,
    backward, step; lr x0.1 (a new optimiser) after epoch ``epochs // 2 + 1``, all as the
    reference (which runs ``epochs + 1`` epochs; here exactly ``epochs``, as ours).
    """
    net = reference_convnet(generator, width, device)
    images, labels = images.to(device), labels.to(device)
    lr = 0.01
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=0.0005)
    dsa = DSA(DSA_STRATEGY, generator=generator)
    net.train()
    loss_avg = 0.0
    for ep in range(epochs):
        order = torch.randperm(images.shape[0], generator=generator).to(device)
        loss_avg, num = 0.0, 0
        for start in range(0, images.shape[0], 256):
            idx = order[start:start + 256]
            img, lab = images[idx], labels[idx]
            img = dsa(img, dsa.sample(img.shape[0], shared_family=True, device=device),
                      torch.arange(img.shape[0], device=device))
            output = net(img)
            loss = F.cross_entropy(output, lab)
            _ = (output.detach().cpu().numpy().argmax(-1) == lab.cpu().numpy()).sum()
            loss_avg, num = loss_avg + loss.item() * lab.shape[0], num + lab.shape[0]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if ep == epochs // 2 + 1:
            lr *= 0.1
            optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=0.0005)
        loss_avg /= num
    return loss_avg


# ---- the measured variants --------------------------------------------------------------------
def generated_data(real_per_class: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised-looking random images, ``real_per_class`` per class: (K*n, 1, 28, 28), (K*n,)."""
    gen = torch.Generator().manual_seed(seed)
    real = torch.randn(NUM_CLASSES * real_per_class, *SHAPE, generator=gen)
    return real, torch.arange(NUM_CLASSES).repeat_interleave(real_per_class)


def dm_variant(name: str, ipc: int, real: torch.Tensor, labels: torch.Tensor, *, batch_real: int,
               width: int = 128, seed: int = 0, counting: bool = False, device: Any = "cpu") -> Callable[[], Any]:
    """A callable running one step of the DM variant ``name`` (see the module docstring);
    ``counting``: its torch path, eagerly, for the FLOP counter."""
    gen = torch.Generator().manual_seed(seed)
    if name == "reference":
        ref = ReferenceDM(real, labels, ipc, batch_real, gen, width, device)
        return ref.step
    edge = ConvNet(SHAPE[0], NUM_CLASSES, SHAPE[1], width=width, generator=gen, device=device).eval()
    data = DistillData(real, labels, NUM_CLASSES, (0.2861,), (0.3530,), edge)
    method = "dm_dkkt" if name.startswith("dm_dkkt") else "dm"
    # counting: the torch path, eagerly: FlopCounterMode sees neither C kernels nor compiled code
    speed = {**SPEED.get(name, {}), **(COUNTING if counting else {})}
    cfg = build_config(method, ipc=ipc, pipc="all", batch_real=batch_real, net_width=width, iterations=1,
                       init="noise", seed=seed)
    with runtime.use(**speed):
        m = method_class(method)(cfg, data, device=device)
    counter = iter(range(10 ** 9))

    def step() -> Any:
        with runtime.use(**speed):
            return m.step(next(counter))

    return step


def eval_variant(name: str, epochs: int, *, width: int = 128, seed: int = 0, device: Any = "cpu") -> Callable[[], Any]:
    """A callable training a fresh ConvNet on 100 synthetic images for ``epochs`` epochs."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(100, *SHAPE, generator=gen).to(device)
    labels = torch.arange(NUM_CLASSES).repeat_interleave(10).to(device)
    if name == "eval_reference":
        return lambda: reference_train(images, labels, epochs, gen, width, device)
    cfg = get_protocol("dm", epochs).train  # batch 256, SGD lr 0.01 momentum 0.9 wd 5e-4, DSA
    speed = SPEED.get(name, {})

    def train() -> Any:
        with runtime.use(**speed):  # read when training starts
            return train_classifier(ConvNet(SHAPE[0], NUM_CLASSES, SHAPE[1], width=width, generator=gen, device=device),
                                    images, labels, cfg, generator=gen)

    return train


# ---- measuring ---------------------------------------------------------------------------------
class PeakRSS:
    """Peak resident memory of a block above the RSS at its start, in MiB (psutil, every 2 ms)."""

    def __enter__(self) -> "PeakRSS":
        import psutil

        self._proc = psutil.Process()
        self.base = self._peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._peak = max(self._peak, self._proc.memory_info().rss)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self._peak, self._proc.memory_info().rss)
        self.above_mb = (self.peak - self.base) / 2 ** 20
        self.total_mb = self.peak / 2 ** 20


def _sync() -> None:
    """Wait for queued CUDA work (a no-op without CUDA), so that wall times cover it."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(run: Callable[[], Any]) -> dict[str, float]:
    """One timed run: seconds, peak memory and the load average around it."""
    load_before = os.getloadavg()[0]
    _sync()
    with PeakRSS() as mem:
        t0, c0 = time.perf_counter(), time.process_time()
        run()
        _sync()
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_mb_above": round(mem.above_mb, 1), "peak_rss_mb": round(mem.total_mb, 1),
            "load_before": load_before, "load_after": os.getloadavg()[0]}


def count_flops(run: Callable[[], Any]) -> float:
    """Conv/linear FLOPs of one run (forward and backward as executed)."""
    with FlopCounterMode(display=False) as counter:
        run()
    return float(counter.get_total_flops())


def interleave(variants: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[dict[str, float]]]:
    """One warm-up each, then ``rounds`` rounds; each round runs every variant once, the order
    rotating by one per round (A B C, B C A, ...), so no variant always follows the same one."""
    names = list(variants)
    for n in names:
        variants[n]()
    out: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            out[n].append(timed(variants[n]))
    return out


def matmul_gflops(seconds: float = 0.5, device: Any = "cpu") -> float:
    """Achieved fp32 GFLOP/s of a 1024x1024 matmul loop on ``device`` (the CPU: at the current
    thread count)."""
    a, b = torch.randn(1024, 1024, device=device), torch.randn(1024, 1024, device=device)
    a @ b
    _sync()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    _sync()
    return 2 * 1024 ** 3 * n / (time.perf_counter() - t0) / 1e9


def summarise(runs: list[dict[str, float]], flops: float, peak_gflops: float) -> dict[str, Any]:
    sec = statistics.median(r["seconds"] for r in runs)
    return {"seconds": sec, "all_seconds": [r["seconds"] for r in runs],
            "cpu_seconds": statistics.median(r["cpu_seconds"] for r in runs), "gflop": flops / 1e9,
            "gflops_per_s": flops / sec / 1e9, "fraction_of_peak": flops / sec / 1e9 / peak_gflops,
            "peak_mb_above": max(r["peak_mb_above"] for r in runs),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "load": [[r["load_before"], r["load_after"]] for r in runs]}


def paired_ratio(runs: dict[str, list[dict]], num: str, den: str, key: str = "seconds") -> float:
    """Median over rounds of num/den, each round's pair measured back to back (``key``: wall
    ``seconds`` or the process's ``cpu_seconds``, which a descheduled process does not accrue)."""
    return statistics.median(a[key] / b[key] for a, b in zip(runs[num], runs[den]))


ALLOCATOR_ENV = ("LD_PRELOAD", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
                 "MALLOC_CONF", "THP_MEM_ALLOC_ENABLE")


def allocator() -> dict[str, Any]:
    """What serves this process's large allocations: the allocator libraries mapped into it and
    the environment variables that tune glibc's malloc or PyTorch's CPU allocator. On a VM,
    page faults of freshly mapped large tensors can dominate large-batch code (the reference's
    per-class forwards) but barely touch cache-sized chunks, so ratios depend on this."""
    libs = set()
    try:
        for line in Path("/proc/self/maps").read_text().splitlines():
            name = line.rsplit("/", 1)[-1]
            if any(k in name for k in ("jemalloc", "tcmalloc", "mimalloc")):
                libs.add(name)
    except OSError:
        pass
    return {"preloaded": sorted(libs) or ["system malloc"],
            "env": {k: os.environ[k] for k in ALLOCATOR_ENV if k in os.environ}}


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# Speed: ours against the reference's loops ({report['device']})", "",
             f"- command: `{report['command']}`",
             f"- date {report['date']}; machine: {m['cpu_model']}, {m['cpu_count']} logical CPUs, "
             f"{m['platform']}; torch {report['versions']['torch']}, python {report['versions']['python']}",
             f"- allocator: {', '.join(report['allocator']['preloaded'])}; tuning environment: "
             f"{json.dumps(report['allocator']['env']) if report['allocator']['env'] else 'none'}",
             f"- load average (1 min) at start / end: {report['load_start']} / {report['load_end']}; "
             "each measurement's load is in speed.json",
             f"- settings: {json.dumps(report['settings'], sort_keys=True)}",
             "- fp32 peak: " + (f"{report['settings']['peak_gflops_per_core']} GFLOP/s per core (given)"
                                if report['settings']['peak_gflops_per_core'] else
                                "the measured 1024² fp32 matmul rate") + "; that rate per thread count: "
             + ", ".join(f"{t} thread(s) {v:.0f} GFLOP/s" for t, v in report["matmul_gflops"].items()), "",
             "Time: median over rounds; ratio: median of the per-round ratios (adjacent runs). "
             "GFLOP: conv/linear FLOPs of one run; % peak against the fp32 peak at that thread count "
             "(bf16 kernels can exceed it).", ""]
    lines += ["## DM step (Fashion-MNIST shape, batch_real %d, full DSA)" % report["settings"]["batch_real"], "",
              "| threads | ipc | variant | s/step | ratio to reference | GFLOP | GFLOP/s | % fp32 peak | "
              "peak MiB (above start) |", "|---|---|---|---|---|---|---|---|---|"]
    for c in report["dm"]:
        for v, s in c["variants"].items():
            ratio = c["ratios"].get(f"{v}/reference", "")
            lines.append(f"| {c['threads']} | {c['ipc']} | {v} | {s['seconds']:.3f} | "
                         f"{'' if ratio == '' else f'{ratio:.2f}'} | {s['gflop']:.1f} | {s['gflops_per_s']:.0f} | "
                         f"{100 * s['fraction_of_peak']:.0f} | {s['peak_mb_above']:.0f} |")
    lines += ["", "Ratios, wall clock (process CPU time in brackets: robust to being descheduled on a busy "
              "machine; with 2 threads it sums both):", "",
              "| threads | ipc | dm / reference | dm_fp32 / reference | dm_compiled / reference | dm_dkkt / dm | "
              "dm_dkkt_fp32 / dm |", "|---|---|---|---|---|---|---|"]
    for c in report["dm"]:
        r, rc = c["ratios"], c["cpu_ratios"]
        fmt = lambda k: f"{r[k]:.2f} ({rc[k]:.2f})" if k in r else ""  # noqa: E731
        lines.append(f"| {c['threads']} | {c['ipc']} | {fmt('dm/reference')} | {fmt('dm_fp32/reference')} | "
                     f"{fmt('dm_compiled/reference')} | {fmt('dm_dkkt/dm')} | {fmt('dm_dkkt_fp32/dm')} |")
    if report["eval"]:
        lines += ["", f"## Evaluation: {report['settings']['eval_epochs']} epochs on 100 images with DSA", "",
                  "| threads | variant | s/run | s per 100 epochs | ratio to reference (CPU time) | GFLOP/s | "
                  "% fp32 peak | peak MiB |", "|---|---|---|---|---|---|---|---|"]
        for c in report["eval"]:
            for v, s in c["variants"].items():
                key = f"{v}/eval_reference"
                ratio = f"{c['ratios'][key]:.2f} ({c['cpu_ratios'][key]:.2f})" if key in c["ratios"] else ""
                per100 = s["seconds"] * 100 / report["settings"]["eval_epochs"]
                lines.append(f"| {c['threads']} | {v} | {s['seconds']:.2f} | {per100:.1f} | "
                             f"{ratio} | {s['gflops_per_s']:.0f} | "
                             f"{100 * s['fraction_of_peak']:.0f} | {s['peak_mb_above']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--ipc", type=int, nargs="*", default=[1, 10, 50], help="DM cells (none: evaluation only)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--variants", nargs="+", choices=DM_VARIANTS, default=list(DM_VARIANTS))
    p.add_argument("--eval-variants", nargs="+", choices=EVAL_VARIANTS, default=list(EVAL_VARIANTS))
    p.add_argument("--batch-real", type=int, default=256, help="real images per class and step (DM: 256)")
    p.add_argument("--real-per-class", type=int, default=1000, help="generated real images per class")
    p.add_argument("--width", type=int, default=128, help="ConvNet width")
    p.add_argument("--rounds", type=int, default=3, help="timed runs per variant (after one warm-up)")
    p.add_argument("--eval-epochs", type=int, default=10, help="epochs per evaluation run (0: skip)")
    p.add_argument("--peak-gflops", type=float, default=None,
                   help="fp32 GFLOP/s per core (default: the measured 1024x1024 fp32 matmul rate)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu; --threads still sets the host's)")
    p.add_argument("--out", default="benchmarks/results/speed-cpu", help="output folder")
    args = p.parse_args(argv)
    device = args.device
    argv_list = list(sys.argv[1:] if argv is None else argv)
    real, labels = generated_data(args.real_per_class)
    start_load = os.getloadavg()[0]
    dm_cells, eval_cells, matmul, flops_cache = [], [], {}, {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        # inductor bakes the thread count into the CPU kernels it generates (compiled under one
        # thread they never parallelise); dynamo does not recompile when it changes, so the
        # compiled variants start afresh at each thread count
        torch._dynamo.reset()
        matmul[threads] = matmul_gflops(device=device)
        peak = args.peak_gflops * threads if args.peak_gflops else matmul[threads]
        for ipc in args.ipc:
            variants = {v: dm_variant(v, ipc, real, labels, batch_real=args.batch_real, width=args.width, device=device)
                        for v in args.variants}
            runs = interleave(variants, args.rounds)
            for v in variants:  # counted once per (variant, ipc) on a spare instance, untimed
                if (v, ipc) not in flops_cache:
                    # counted on the torch path, eagerly: this also keeps FlopCounterMode (a
                    # dispatch mode) away from torch.compile, which would then run that code
                    # eagerly for every later instance in this process
                    flops_cache[(v, ipc)] = count_flops(dm_variant(v, ipc, real, labels, batch_real=args.batch_real,
                                                                   width=args.width, seed=1, counting=True,
                                                                   device=device))
            cell = {"threads": threads, "ipc": ipc,
                    "variants": {v: summarise(runs[v], flops_cache[(v, ipc)], peak) for v in variants},
                    "ratios": {}, "cpu_ratios": {}, "runs": runs}
            for v in variants:
                if v != "reference" and "reference" in variants:
                    cell["ratios"][f"{v}/reference"] = paired_ratio(runs, v, "reference")
                    cell["cpu_ratios"][f"{v}/reference"] = paired_ratio(runs, v, "reference", "cpu_seconds")
            for v in ("dm_dkkt", "dm_dkkt_fp32"):
                if v in variants and "dm" in variants:
                    cell["ratios"][f"{v}/dm"] = paired_ratio(runs, v, "dm")
                    cell["cpu_ratios"][f"{v}/dm"] = paired_ratio(runs, v, "dm", "cpu_seconds")
            dm_cells.append(cell)
            print(f"threads {threads} ipc {ipc}: " + ", ".join(
                f"{v} {s['seconds']:.3f} s" for v, s in cell["variants"].items())
                + " | " + ", ".join(f"{k} {r:.2f}" for k, r in cell["ratios"].items())
                + f" | load {os.getloadavg()[0]:.2f}", flush=True)
        if args.eval_epochs > 0:
            variants = {v: eval_variant(v, args.eval_epochs, width=args.width, device=device)
                        for v in args.eval_variants}
            runs = interleave(variants, args.rounds)
            for v in variants:
                if (v, "eval") not in flops_cache:
                    counted = "eval" if v == "eval_compiled" else v  # as dm_compiled above
                    flops_cache[(v, "eval")] = count_flops(eval_variant(counted, args.eval_epochs, width=args.width,
                                                                        seed=1, device=device))
            ours = [v for v in variants if v != "eval_reference"] if "eval_reference" in variants else []
            cell = {"threads": threads,
                    "variants": {v: summarise(runs[v], flops_cache[(v, "eval")], peak) for v in variants},
                    "ratios": {f"{v}/eval_reference": paired_ratio(runs, v, "eval_reference") for v in ours},
                    "cpu_ratios": {f"{v}/eval_reference": paired_ratio(runs, v, "eval_reference", "cpu_seconds")
                                   for v in ours},
                    "runs": runs}
            eval_cells.append(cell)
            print(f"threads {threads} evaluation ({args.eval_epochs} epochs): " + ", ".join(
                f"{v} {s['seconds']:.2f} s" for v, s in cell["variants"].items())
                + " | " + ", ".join(f"{k} {r:.2f}" for k, r in cell["ratios"].items())
                + f" | load {os.getloadavg()[0]:.2f}", flush=True)
    machine = {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
               "host": platform.node()}
    if str(device).startswith("cuda"):
        machine["gpu"] = torch.cuda.get_device_name(torch.device(device))
    report = {"device": str(device), "machine": machine,
              "versions": versions(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": "python -m benchmarks.speed " + " ".join(shlex.quote(a) for a in argv_list),
              "settings": {"batch_real": args.batch_real, "real_per_class": args.real_per_class, "width": args.width,
                           "rounds": args.rounds, "eval_epochs": args.eval_epochs, "threads": args.threads,
                           "ipc": args.ipc, "peak_gflops_per_core": args.peak_gflops, "seeds": [0],
                           "dsa_strategy": DSA_STRATEGY, "classes": NUM_CLASSES, "shape": list(SHAPE),
                           "speed": {v: {**vars(runtime.settings()), **SPEED.get(v, {})}
                                     for v in (*args.variants, *args.eval_variants) if "reference" not in v}},
              "load_start": start_load, "load_end": os.getloadavg()[0], "matmul_gflops": matmul,
              "allocator": allocator(),
              "dm": dm_cells, "eval": eval_cells}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    (out / "speed.md").write_text(markdown(report), encoding="utf-8")
    print(f"wrote {out / 'speed.json'} and {out / 'speed.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
