"""Speed benchmark: seconds per iteration and peak memory of one step of each method.

Steps (one ``Method.step()`` each, on generated data, so no dataset is needed):

- ``dm``: DM with the batched all-class forward (``DMLoss(batched=True)``, the default);
- ``dm_per_class``: the same step with the reference's per-class loop (``DMLoss(batched=False)``);
- ``dkkt``: the DKKT loss alone (method ``dsv``); ``dm_dkkt``: DM+DKKT;
- ``dc``: one gradient-matching outer step (method ``dc`` with outer_loop 1: no inner training).

Shapes: Fashion-MNIST-like ``1x28x28`` and CIFAR-like ``3x32x32``, 10 classes, ``--batch-real``
real images per class (all of them used every step), a random width-``--width`` edge ConvNet.
Time: median of ``--repeats`` steps after ``--warmup`` (``torch.cuda.synchronize`` around each on
GPU). Memory: on GPU ``torch.cuda.max_memory_allocated`` above what was allocated before the
timed steps; on CPU the peak resident set size sampled by a psutil thread when psutil is
installed, else the increase of ``ru_maxrss`` (a high-water mark: 0 when an earlier step peaked
higher). Output: ``speed.json`` and ``speed.md`` with the batched / per-class speed-up and the
DM+DKKT / DM cost ratio.

Usage::

    python -m benchmarks.speed [--ipc 1 10 50] [--shapes fmnist cifar] [--device auto] [--out DIR]
"""
from __future__ import annotations

import argparse
import datetime
import json
import resource
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

from dkkt_plugin.engine import build_config, method_class  # noqa: E402
from dkkt_plugin.errors import DkktError  # noqa: E402
from dkkt_plugin.methods.base import DistillData  # noqa: E402
from dkkt_plugin.nets import ConvNet  # noqa: E402

from dkkt_plugin.provenance import machine_info, versions  # noqa: E402

SHAPES = {"fmnist": (1, 28, 28), "cifar": (3, 32, 32)}
STEPS = ("dm", "dm_per_class", "dkkt", "dm_dkkt", "dc")
STEP_METHOD = {"dm": ("dm", {}), "dm_per_class": ("dm", {}), "dkkt": ("dsv", {}),
               "dm_dkkt": ("dm_dkkt", {}), "dc": ("dc", {"outer_loop": 1, "inner_loop": 1})}
NUM_CLASSES = 10


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _PeakMemory:
    """Peak memory of a block, in MiB, by the best means available on the device."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        try:
            import psutil

            self._proc = psutil.Process()
        except ImportError:
            self._proc = None
        if device.type == "cuda":
            self.method = "torch.cuda.max_memory_allocated above the allocation before the timed steps"
        elif self._proc is not None:
            self.method = "psutil RSS sampled every 2 ms, peak above the RSS before the timed steps"
        else:
            self.method = ("ru_maxrss increase (psutil not installed): a high-water mark of the process, "
                           "0 when an earlier measurement peaked higher")

    def __enter__(self) -> "_PeakMemory":
        self.peak_mb = 0.0
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        elif self._proc is not None:
            self._base = self._peak = self._proc.memory_info().rss
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        else:
            self._base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._peak = max(self._peak, self._proc.memory_info().rss)

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self._proc is not None:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, self._proc.memory_info().rss)
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.peak_mb = max(0.0, (peak - self._base) / 2 ** 20)


def make_step(step: str, shape: tuple[int, int, int], ipc: int, *, batch_real: int, width: int,
              device: torch.device) -> Callable[[int], dict]:
    """A ready method whose ``step`` is the measured operation, on generated data."""
    gen = torch.Generator().manual_seed(0)
    real = torch.randn(NUM_CLASSES * batch_real, *shape, generator=gen)  # (K * B, C, H, W)
    labels = torch.arange(NUM_CLASSES).repeat_interleave(batch_real)  # (K * B,)
    edge = ConvNet(shape[0], NUM_CLASSES, shape[1], width=width, generator=gen, device=device).eval()
    data = DistillData(real, labels, NUM_CLASSES, (0.5,) * shape[0], (0.5,) * shape[0], edge)
    method, extra = STEP_METHOD[step]
    cfg = build_config(method, ipc=ipc, pipc=batch_real, batch_real=batch_real, net_width=width,
                       iterations=1, init="noise", **extra)
    m = method_class(method)(cfg, data, device=device)
    if step == "dm_per_class":
        m.dm.batched = False
    return m.step


def measure(step: str, shape_name: str, ipc: int, *, batch_real: int, width: int, device: torch.device,
            warmup: int, repeats: int) -> dict[str, Any]:
    run = make_step(step, SHAPES[shape_name], ipc, batch_real=batch_real, width=width, device=device)
    for i in range(warmup):
        run(i)
    times = []
    with _PeakMemory(device) as mem:
        for i in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            run(warmup + i)
            _sync(device)
            times.append(time.perf_counter() - t0)
    return {"shape": shape_name, "ipc": ipc, "step": step, "seconds": statistics.median(times),
            "all_seconds": times, "peak_memory_mb": round(mem.peak_mb, 1), "memory_method": mem.method}


def ratios(results: Sequence[dict]) -> list[dict[str, Any]]:
    """Per (shape, ipc): per-class / batched DM time, and DM+DKKT, DKKT, DC relative to DM."""
    by = {(r["shape"], r["ipc"], r["step"]): r["seconds"] for r in results}
    out = []
    for shape, ipc in sorted({(r["shape"], r["ipc"]) for r in results}):
        dm = by.get((shape, ipc, "dm"))

        def rel(step: str) -> Optional[float]:
            v = by.get((shape, ipc, step))
            return None if v is None or not dm else v / dm

        out.append({"shape": shape, "ipc": ipc,
                    "dm_batched_speedup": (by[(shape, ipc, "dm_per_class")] / dm
                                           if dm and (shape, ipc, "dm_per_class") in by else None),
                    "dm_dkkt_over_dm": rel("dm_dkkt"), "dkkt_over_dm": rel("dkkt"), "dc_over_dm": rel("dc")})
    return out


def markdown(report: dict) -> str:
    steps = [s for s in STEPS if any(r["step"] == s for r in report["results"])]
    by = {(r["shape"], r["ipc"], r["step"]): r for r in report["results"]}
    lines = [f"# Speed: one step per method ({report['device']})", "",
             f"- torch {report['versions']['torch']}, dkkt_plugin {report['versions']['dkkt_plugin']}, "
             f"python {report['versions']['python']}; {report['threads']} torch thread(s); date {report['date']}",
             f"- machine: {json.dumps(report['machine'], sort_keys=True)}",
             f"- command: `{report['command']}`",
             f"- settings: {json.dumps(report['settings'], sort_keys=True)}",
             f"- time: median seconds per step; memory: {report['memory_method']}", "",
             "| shape | ipc | " + " | ".join(f"{s} ms/it | {s} MiB" for s in steps)
             + " | batched speed-up (per-class / batched) | DM+DKKT / DM |",
             "|---|---|" + "---|---|" * len(steps) + "---|---|"]
    for r in report["ratios"]:
        cells = []
        for s in steps:
            m = by.get((r["shape"], r["ipc"], s))
            cells += [f"{1000 * m['seconds']:.1f}", f"{m['peak_memory_mb']:.0f}"] if m else ["", ""]
        fmt = lambda v: "" if v is None else f"{v:.2f}x"  # noqa: E731
        lines.append(f"| {r['shape']} | {r['ipc']} | " + " | ".join(cells)
                     + f" | {fmt(r['dm_batched_speedup'])} | {fmt(r['dm_dkkt_over_dm'])} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--ipc", type=int, nargs="+", default=[1, 10, 50])
    p.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["fmnist", "cifar"])
    p.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS))
    p.add_argument("--batch-real", type=int, default=256, help="real images per class and step (DM: 256)")
    p.add_argument("--width", type=int, default=128, help="ConvNet width")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (auto: cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", default=None, help="output folder (default benchmarks/results/speed-<device>)")
    args = p.parse_args(argv)
    argv_list = list(sys.argv[1:] if argv is None else argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else Path("benchmarks") / "results" / f"speed-{device.type}"
    results = []
    try:
        for shape in args.shapes:
            for ipc in sorted(args.ipc):
                for step in args.steps:
                    r = measure(step, shape, ipc, batch_real=args.batch_real, width=args.width, device=device,
                                warmup=args.warmup, repeats=args.repeats)
                    print(f"{shape} ipc {ipc} {step}: {1000 * r['seconds']:.1f} ms/it, "
                          f"{r['peak_memory_mb']:.0f} MiB", flush=True)
                    results.append(r)
    except DkktError as exc:
        print(f"benchmarks.speed: error: {exc}", file=sys.stderr)
        return 2
    report = {"device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
              "threads": torch.get_num_threads(), "machine": machine_info(), "versions": versions(),
              "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "command": "python -m benchmarks.speed " + " ".join(shlex.quote(a) for a in argv_list),
              "settings": {"batch_real": args.batch_real, "width": args.width, "warmup": args.warmup,
                           "repeats": args.repeats, "classes": NUM_CLASSES},
              "memory_method": results[0]["memory_method"] if results else "",
              "results": results, "ratios": ratios(results)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    (out / "speed.md").write_text(markdown(report), encoding="utf-8")
    print(f"wrote {out / 'speed.json'} and {out / 'speed.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
