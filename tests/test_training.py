"""Training: chunked forward/backward gives the unchunked step; bf16 autocast stays close."""
import pytest
import torch

from dkkt_plugin.errors import ConfigError
from dkkt_plugin.nets import ConvNet
from dkkt_plugin.training import TrainConfig, accuracy, train_classifier


def _train(chunk_size, precision="fp32", augment="color_crop_cutout_flip_scale_rotate", norm="instancenorm"):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 1, 28, 28, generator=g), torch.arange(20) % 4
    net = ConvNet(1, 4, 28, width=8, norm=norm, generator=torch.Generator().manual_seed(1))
    cfg = TrainConfig(epochs=3, batch_size=12, lr=0.05, augment=augment, chunk_size=chunk_size,
                      precision=precision)
    loss = train_classifier(net, x, y, cfg, generator=torch.Generator().manual_seed(2))
    return loss, net


@pytest.mark.parametrize("chunk_size", [1, 5])
def test_chunks_give_the_same_training(chunk_size):
    loss_a, a = _train(None)
    loss_b, b = _train(chunk_size)
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
    with pytest.raises(ConfigError, match="precision"):
        TrainConfig(precision="fp16")
    with pytest.raises(ConfigError, match="chunk_size"):
        TrainConfig(chunk_size=0)
