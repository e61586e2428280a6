"""Shared fixtures: a fake third-party distribution for plugin tests, a tiny Fashion-MNIST."""
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fashion_mnist(root: Path, per_class: int = 4) -> Path:
    """A tiny Fashion-MNIST folder in the real IDX format: per_class random images of each class,
    in the training and in the test split."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for prefix in ("train", "t10k"):
        n = 10 * per_class
        (root / f"{prefix}-images-idx3-ubyte").write_bytes(_idx(rng.integers(0, 256, (n, 28, 28))))
        (root / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx(np.arange(n) % 10))
    return root


@pytest.fixture(scope="session")
def tiny_fashion_mnist(tmp_path_factory) -> Path:
    """A Fashion-MNIST folder (4 images per class in each split) for fast command-line runs."""
    return write_fashion_mnist(tmp_path_factory.mktemp("data") / "fashion-mnist")


@pytest.fixture
def fake_distribution(tmp_path, monkeypatch):
    """A real installed-looking distribution (dist-info on sys.path) with a broken and a good plugin."""
    dist = tmp_path / "broken_dkkt_thing-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-dkkt-thing\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent("""
        [dkkt_plugin.losses]
        exploding = broken_dkkt_thing_mod:Loss
        [dkkt_plugin.initializers]
        fine = fine_dkkt_thing_mod:init
        dkkt_shadow = fine_dkkt_thing_mod:init
        [dkkt_plugin.augmentations]
        dsa = fine_dkkt_thing_mod:init
        [dkkt_plugin.methods]
        not_a_method = fine_dkkt_thing_mod:init
    """))
    (tmp_path / "broken_dkkt_thing_mod.py").write_text("raise RuntimeError('boom at import')\n")
    (tmp_path / "fine_dkkt_thing_mod.py").write_text("def init(*a, **k):\n    return 'fine'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for mod in ("broken_dkkt_thing_mod", "fine_dkkt_thing_mod"):
        sys.modules.pop(mod, None)




@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny networks run fastest on one thread, and CI's 2 cores may be shared."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def fit_weight_decayed():
    """Train a model to the minimum of mean CE + (wd/2)‖θ‖² (full batch, LBFGS): a KKT point."""
    import torch
    import torch.nn.functional as F

    def fit(model, x, y, wd):
        opt = torch.optim.LBFGS(model.parameters(), max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14)

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y) + 0.5 * wd * sum(p.pow(2).sum() for p in model.parameters())
            loss.backward()
            return loss

        opt.step(closure)
        return model

    return fit
