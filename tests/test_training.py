"""Training: chunked forward/backward gives the unchunked step; so do the fused blocks (backend
cpu); bf16 autocast stays close; the compiled step (backend compile) gives the eager one; the
speed settings are read when training starts."""
import pytest
import torch

from dkkt_plugin import runtime
from dkkt_plugin.errors import ConfigError
from dkkt_plugin.nets import ConvNet
from dkkt_plugin.training import TrainConfig, accuracy, train_classifier


def _train(chunk_size, precision="fp32", augment="color_crop_cutout_flip_scale_rotate", norm="instancenorm",
           backend="cpu"):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 1, 28, 28, generator=g), torch.arange(20) % 4
    net = ConvNet(1, 4, 28, width=8, norm=norm, generator=torch.Generator().manual_seed(1))
    cfg = TrainConfig(epochs=3, batch_size=12, lr=0.05, augment=augment, chunk_size=chunk_size)
    with runtime.use(precision=precision, backend=backend):
        loss = train_classifier(net, x, y, cfg, generator=torch.Generator().manual_seed(2))
    return loss, net


@pytest.mark.parametrize("chunk_size", [1, 5])
def test_chunks_give_the_same_training(chunk_size):
    loss_a, a = _train(None)
    loss_b, b = _train(chunk_size)
    assert abs(loss_a - loss_b) <= 1e-5 * abs(loss_a)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-6)


def test_fused_blocks_give_the_same_training(monkeypatch):
    # backend cpu (the default): each block's norm, ReLU and pooling, and block 1 whole, fused
    from dkkt_plugin.cpu import kernels

    calls = []
    monkeypatch.setattr(kernels.FirstBlock, "apply", lambda *a, _f=kernels.FirstBlock.apply: calls.append(1) or _f(*a))
    loss_a, a = _train(None, backend="torch")
    assert not calls
    loss_b, b = _train(None)
    assert calls
    assert abs(loss_a - loss_b) <= 1e-5 * abs(loss_a)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-6)


def test_batchnorm_in_training_is_never_chunked():
    # batch statistics depend on the whole minibatch: chunk_size must not change anything
    loss_a, a = _train(None, norm="batchnorm")
    loss_b, b = _train(1, norm="batchnorm")
    assert loss_a == loss_b and all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_bf16_training_stays_close_to_fp32():
    loss_32, a = _train(None)
    loss_16, b = _train(None, precision="bf16")
    assert loss_16 != loss_32  # bf16 really ran
    assert abs(loss_16 - loss_32) <= 0.05 * abs(loss_32)
    assert all(p.dtype == q.dtype == torch.float32 for p, q in zip(a.parameters(), b.parameters()))  # fp32 weights
    pa = torch.cat([p.detach().flatten() for p in a.parameters()])
    pb = torch.cat([p.detach().flatten() for p in b.parameters()])
    assert float((pa - pb).norm()) <= 0.02 * float(pa.norm())


def test_accuracy_batch_size_does_not_matter():
    _, net = _train(None)
    x, y = torch.randn(40, 1, 28, 28, generator=torch.Generator().manual_seed(5)), torch.arange(40) % 4
    assert accuracy(net, x, y) == accuracy(net, x, y, batch_size=7) == accuracy(net, x, y, batch_size=1024)


def test_bad_settings():
    with pytest.raises(ConfigError, match="chunk_size"):
        TrainConfig(chunk_size=0)
    with pytest.raises(TypeError, match="precision"):  # a speed setting is the process's, not the config's
        TrainConfig(precision="fp32")


@pytest.mark.parametrize("precision,native,bf16", [("auto", True, True), ("auto", False, False),
                                                   ("bf16", False, True), ("fp32", True, False)])
def test_the_precision_is_read_when_training_starts(precision, native, bf16, monkeypatch):
    import dkkt_plugin.training as training

    monkeypatch.setattr(runtime, "native_bf16", lambda device: native)
    seen = []
    real_step = training._step
    monkeypatch.setattr(training, "_step", lambda *a, **k: seen.append(a[6]) or real_step(*a, **k))  # its bf16
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 0, 1])
    net = ConvNet(1, 2, 8, width=4, depth=1)
    with runtime.use(precision=precision):
        train_classifier(net, x, y, TrainConfig(epochs=2, batch_size=4), generator=torch.Generator().manual_seed(0))
    assert seen == [bf16, bf16]


def _train_compiled(monkeypatch, compile_fn=None):
    import torch._dynamo

    torch._dynamo.reset()
    calls = []
    real_compile = torch.compile

    def counting(fn, **kwargs):
        calls.append(kwargs)
        return (compile_fn or real_compile)(fn, **kwargs)

    monkeypatch.setattr(torch, "compile", counting)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 1, 28, 28, generator=g), torch.arange(20) % 4
    out = []
    with torch._dynamo.config.patch(error_on_recompile=True):
        for backend in ("torch", "compile"):
            net = ConvNet(1, 4, 28, width=8, generator=torch.Generator().manual_seed(1))
            # minibatches of 12 and 8 in chunks of 5: each one's last chunk (2, 3 images) is padded
            cfg = TrainConfig(epochs=3, batch_size=12, lr=0.05, augment="color_crop_cutout_flip_scale_rotate",
                              chunk_size=5)
            with runtime.use(precision="fp32", backend=backend):
                out.append((train_classifier(net, x, y, cfg, generator=torch.Generator().manual_seed(2)), net))
    return out, calls


@pytest.mark.slow
def test_compiled_step_gives_the_same_training(monkeypatch, recwarn):
    # torch.compile of each chunk's forward and loss: the same training as eager, compiled once
    # for the padded chunk shape (a recompilation raises here, falls back and warns)
    [(loss_a, a), (loss_b, b)], calls = _train_compiled(monkeypatch)
    assert calls == [{"dynamic": False}]
    assert not [w for w in recwarn if "torch.compile failed" in str(w.message)]
    assert abs(loss_a - loss_b) <= 1e-4 * abs(loss_a)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, rtol=1e-3, atol=1e-5)


def test_compile_failure_warns_and_trains_eagerly(monkeypatch):
    def broken(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no C++ compiler found\nmore lines")
        return run

    with pytest.warns(RuntimeWarning, match=r"torch.compile failed \(RuntimeError: no C\+\+ compiler found\); "
                                            "training eagerly instead"):
        [(loss_a, a), (loss_b, b)], calls = _train_compiled(monkeypatch, broken)
    assert len(calls) == 1  # one failure, then eager for the rest of the run
    assert loss_a == loss_b and all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
