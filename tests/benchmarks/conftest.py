"""Fixtures of the benchmark-harness tests: a generated CIFAR-10 folder and one smoke grid run.

``benchmarks/`` is not an installed package: the repository root is put on ``sys.path`` so the
tests import it much as ``python -m benchmarks.run`` does from the root.
"""
import contextlib
import io
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # last: an installed dkkt_plugin still wins over the checkout


def _run_main(argv):
    """``benchmarks.run.main(argv)`` with its stdout captured: ``(exit status, stdout)``."""
    from benchmarks import run

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = run.main([str(a) for a in argv])
    return rc, buf.getvalue()


@pytest.fixture
def run_main():
    """Call the runner as the tox environments do; returns ``(exit status, stdout)``."""
    return _run_main


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory):
    """A CIFAR-10 folder in the real file format: 20 training images per class, 50 test images."""
    from dkkt_plugin.data import write_cifar10

    root = tmp_path_factory.mktemp("cifar")
    write_cifar10(root, num_train=200, num_test=50, seed=0)
    return root


@pytest.fixture(scope="session")
def smoke_run(cifar_root, tmp_path_factory):
    """The smoke preset end to end on the generated CIFAR-10, as `tox -e bench-cifar10 -- --preset smoke`."""
    out = tmp_path_factory.mktemp("smoke")
    rc, stdout = _run_main(["--preset", "smoke", "--dataset", "cifar10", "--data-root", cifar_root,
                           "--out", out, "--threads", 1])
    return rc, stdout, out
