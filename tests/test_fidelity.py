"""Fidelity measures: the spectrum's high-frequency share and transfer accuracy."""
import numpy as np
import pytest
import torch
from torch import nn

from dkkt_plugin.fidelity import fidelity, high_frequency_share, radial_power_spectrum, transfer_accuracy


def test_radial_power_spectrum_separates_low_and_high_frequencies():
    yy, xx = np.mgrid[0:32, 0:32]
    smooth = np.cos(2 * np.pi * xx / 32)[None, None]  # 1 cycle per image: radius 1
    freqs, power = radial_power_spectrum(smooth)
    assert freqs[0] == 0 and freqs[-1] == 0.5 and int(np.argmax(power)) == 1
    assert high_frequency_share(smooth) < 0.01
    stripes = (xx % 2).astype(float)[None, None]
    assert high_frequency_share(stripes) == pytest.approx(1.0)
    noise = np.random.default_rng(0).normal(size=(20, 3, 32, 32))
    assert high_frequency_share(noise) == pytest.approx(9 / 16, abs=0.05)  # flat: rings 8..16 of 1..16
    assert high_frequency_share(torch.as_tensor(noise)) == pytest.approx(high_frequency_share(noise))


def test_smoothing_lowers_the_share():
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    blurred = torch.nn.functional.avg_pool2d(x, 5, stride=1, padding=2)
    assert high_frequency_share(blurred) < 0.5 * high_frequency_share(x)


def test_transfer_accuracy_and_record():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]]))
        model[1].bias.zero_()
    x = torch.tensor([1.0, -1.0, 2.0, -3.0])[:, None, None, None].expand(4, 1, 2, 2).clone()
    y = torch.tensor([0, 1, 1, 1])  # the third is wrong
    model.train()
    assert transfer_accuracy(model, x, y) == 0.75 and model.training  # mode restored
    rec = fidelity(x, y, edge_model=model, transfer_model=model)
    assert rec["edge_accuracy"] == rec["transfer_accuracy"] == 0.75
    assert np.isnan(rec["high_frequency_share"])  # constant images have no spectrum beyond DC
