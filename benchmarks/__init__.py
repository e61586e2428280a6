"""Benchmark harness of dkkt-plugin: the practical paper's Table 1 grid, its report, speed probes.

Run from the repository root (see ``benchmarks/README.md``)::

    python -m benchmarks.run --dataset fashion_mnist --preset smoke
    python -m benchmarks.report benchmarks/results/fashion_mnist-smoke
    python -m benchmarks.speed --ipc 1 10

Not part of the installed package: ``benchmarks`` is imported from a checkout.
"""
