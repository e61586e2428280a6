"""Initializers: noise, real practical images, and Deep Support Vectors."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dkkt_plugin import registry
from dkkt_plugin.data import PracticalSubset
from dkkt_plugin.errors import ConfigError, DatasetError
from dkkt_plugin.initializers import dsv_init, noise_init, real_init
from dkkt_plugin.config import build
from dkkt_plugin.methods import DSVMethodConfig
from dkkt_plugin.losses.kkt import margins


def dataset(n_per_class=8, classes=3, shape=(1, 6, 6)):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(classes).repeat(n_per_class)
    return torch.utils.data.TensorDataset(torch.randn(len(y), *shape, generator=g), y)


@pytest.mark.parametrize("name", ["noise", "real", "dsv"])
def test_common_signature_shapes_dtype_and_determinism(name):
    init = registry.load("initializers", name)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 3)).double()
    kwargs = dict(num_classes=3, image_shape=(1, 6, 6), dataset=PracticalSubset(dataset(), 4),
                  model=model, dtype=torch.float64)
    if name == "dsv":
        kwargs["config"] = DSVMethodConfig(iterations=3)
    a, la = init(2, generator=torch.Generator().manual_seed(5), **kwargs)
    b, lb = init(2, generator=torch.Generator().manual_seed(5), **kwargs)
    c, _ = init(2, generator=torch.Generator().manual_seed(6), **kwargs)
    assert a.shape == (6, 1, 6, 6) and a.dtype == torch.float64
    assert la.tolist() == [0, 0, 1, 1, 2, 2] and torch.equal(la, lb)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_real_images_come_from_their_class():
    ds = dataset()
    x, y = real_init(3, num_classes=3, image_shape=(1, 6, 6), dataset=ds)
    for img, lab in zip(x, y):
        match = [(img == ds.tensors[0][i]).all() for i in range(len(ds))]
        assert any(m and ds.tensors[1][i] == lab for i, m in enumerate(match))
    assert len({tuple(img.flatten().tolist()) for img in x}) == 9  # without replacement


def test_real_init_errors():
    with pytest.raises(DatasetError, match="class 0 has 4"):
        real_init(5, num_classes=3, image_shape=(1, 6, 6), dataset=PracticalSubset(dataset(), 4))
    with pytest.raises(ConfigError, match="needs dataset"):
        real_init(1, num_classes=3, image_shape=(1, 6, 6))
    with pytest.raises(ConfigError, match="ipc"):
        noise_init(0, num_classes=3, image_shape=(1, 6, 6))
    with pytest.raises(ConfigError, match="needs model"):
        dsv_init(1, num_classes=3, image_shape=(1, 6, 6))


def test_noise_leaves_global_rng_alone():
    state = torch.get_rng_state()
    noise_init(2, num_classes=3, image_shape=(1, 6, 6), generator=torch.Generator().manual_seed(1))
    assert torch.equal(state, torch.get_rng_state())


def _two_class_problem():
    """Two Gaussian blobs in 1x4x4 'images'; a small MLP trained with weight decay."""
    g = torch.Generator().manual_seed(0)
    n = 200
    y = torch.arange(n) % 2
    direction = torch.randn(16, generator=g)
    direction /= direction.norm()
    x = torch.randn(n, 16, generator=g) * 0.7 + (2 * y[:, None] - 1) * 1.5 * direction
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=5e-3)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(model(x.view(n, 1, 4, 4)), y).backward()
        opt.step()
    return model, x.view(n, 1, 4, 4), y


def test_dsvs_are_correctly_classified_support_vectors():
    model, x, y = _two_class_problem()
    assert (model(x).argmax(1) == y).float().mean() > 0.95
    # the authors' stationarity (L1 over every parameter) with Adam on the images
    cfg = build(DSVMethodConfig, {"iterations": 200, "image_optimizer": "adam", "lr_img": 0.05,
                                  "dkkt.distance": "l1", "dkkt.params": "all", "downscale": ()})  # 4x4 "images"
    images, labels = dsv_init(5, num_classes=2, image_shape=(1, 4, 4), model=model,
                              generator=torch.Generator().manual_seed(0), config=cfg)
    with torch.no_grad():
        assert torch.equal(model(images).argmax(1), labels)  # primal feasibility
    m_dsv = margins(model, images, labels)
    m_train = margins(model, x, y)
    assert m_dsv.median() < m_train.median()  # closer to the boundary than typical points
    assert m_dsv.median() < torch.quantile(m_train, 0.25)
