"""Evaluation protocols and evaluate_synthetic on a tiny problem whose answer is known."""
import json

import numpy as np
import pytest
import torch

from dkkt_plugin import runtime
from dkkt_plugin.errors import ConfigError
from dkkt_plugin.evaluation import PROTOCOLS, EvalProtocol, EvalResult, evaluate_synthetic, get_protocol
from dkkt_plugin.training import TrainConfig

DSA = "color_crop_cutout_flip_scale_rotate"
NET = dict(width=4, depth=1)
TINY = EvalProtocol("tiny", TrainConfig(epochs=30, lr=0.05, augment=""))  # SGD, no augmentation


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny nets run ~20x faster on one thread when the cores are shared with other jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def fp32():
    """These tests' known answers are for fp32 training (tests of the precision set their own)."""
    with runtime.use(precision="fp32"):
        yield


@pytest.fixture(scope="module")
def problem():
    """3 classes of 8x8 one-channel images: a random prototype per class plus noise."""
    g = torch.Generator().manual_seed(0)
    protos = torch.randn(3, 1, 8, 8, generator=g)  # (3, 1, 8, 8)
    test_labels = torch.arange(3).repeat_interleave(60)  # (180,)
    test_images = protos[test_labels] + 0.5 * torch.randn(180, 1, 8, 8, generator=g)
    noise = torch.randn(30, 1, 8, 8, generator=g)
    noise_labels = torch.randint(0, 3, (30,), generator=g)
    return protos, test_images, test_labels, noise, noise_labels


def test_dm_protocol_settings():
    t = get_protocol("dm").train
    settings = (t.optimizer, t.lr, t.momentum, t.weight_decay, t.batch_size, t.epochs)
    assert settings == ("sgd", 0.01, 0.9, 5e-4, 256, 1000)
    assert (t.augment, t.lr_schedule) == (DSA, "step")
    with runtime.use(precision="auto"):  # the protocols train at the process-wide precision
        described = get_protocol("dm").describe()
    assert described == ("dm protocol: SGD lr 0.01 momentum 0.9 wd 5e-4 batch 256, "
                                             "1000 epochs with DSA, lr x0.1 at epoch 500, bf16 autocast training "
                                             "where the device has native bf16, else fp32")


@pytest.mark.parametrize("precision", ["fp32", "bf16", "auto"])
def test_result_states_the_precision_used(precision, monkeypatch):
    # "auto" resolves on the device: bf16 where native, fp32 elsewhere; the result says which ran
    import dkkt_plugin.training as training

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 1, 8, 8, generator=g), torch.tensor([0, 1, 2] * 2)
    tiny = EvalProtocol("tiny", TrainConfig(epochs=1, lr=0.01))
    seen = []
    real_step = training._step
    monkeypatch.setattr(training, "_step", lambda *a, **k: seen.append(a[6]) or real_step(*a, **k))  # bf16
    for native in (True, False):
        monkeypatch.setattr(runtime, "native_bf16", lambda device, n=native: n)
        seen.clear()
        with runtime.use(precision=precision, backend="torch"):
            r = evaluate_synthetic(x, y, x, y, protocol=tiny, num_eval=1, width=4, depth=1)
        ran = precision if precision != "auto" else ("bf16" if native else "fp32")
        assert seen and all(b == (ran == "bf16") for b in seen)
        assert r.protocol.endswith(", bf16 autocast training") == (ran == "bf16")
        assert "where the device" not in r.protocol
        assert r.runtime == {"precision": precision, "backend": "torch",
                             "training": {"precision": ran, "backend": "torch", "not_supported": []}}
        assert r.as_dict()["runtime"] == r.runtime


def test_result_records_where_the_cpu_backend_applies():
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 0, 1])
    with runtime.use(precision="fp32", backend="cpu"):
        fused = evaluate_synthetic(x, y, x, y, protocol=TINY, num_eval=1, width=4, depth=1)
        pooled = evaluate_synthetic(x, y, x, y, protocol=TINY, num_eval=1, width=4, depth=1, arch="convnet_bn")
    assert fused.runtime["training"] == {"precision": "fp32", "backend": "cpu", "not_supported": []}
    assert pooled.runtime["training"]["backend"] == "torch"
    assert pooled.runtime["training"]["not_supported"][0].startswith("features.1 is BatchNorm2d")


def test_paper_protocol_settings():
    p = get_protocol("paper")
    t = p.train
    assert (t.optimizer, t.lr, t.sam_rho, t.epochs) == ("sam", 0.1, 0.001, 5000)
    assert (t.momentum, t.weight_decay, t.batch_size, t.augment, t.lr_schedule) == (0.9, 5e-4, 256, DSA, "step")
    text = p.describe()
    assert text.startswith("paper protocol: SAM rho 0.001 around SGD lr 0.1 momentum 0.9 wd 5e-4 batch 256, "
                           "5000 epochs with DSA, lr x0.1 at epoch 2500")
    assert "rho 0.001 is our reading" in text and "our choice" in text


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_scaled_keeps_all_but_epochs(name):
    full = get_protocol(name)
    small = get_protocol(name, epochs=50)
    assert small == full.scaled(50)
    assert small.train == TrainConfig(**{**full.train.__dict__, "epochs": 50})
    assert small.full_epochs == full.train.epochs and full.full_epochs is None
    text = small.describe()
    assert text.startswith(f"{name} protocol SCALED to 50 of {full.train.epochs} epochs: ")
    assert "50 epochs" in text and "lr x0.1 at epoch 25" in text
    assert small.scaled(10).full_epochs == full.train.epochs  # scaling twice keeps the true total
    assert "SCALED" not in small.scaled(full.train.epochs).describe()


def test_unknown_protocol():
    with pytest.raises(ConfigError, match="dm, paper"):
        get_protocol("nope")
    with pytest.raises(ConfigError):
        evaluate_synthetic(torch.zeros(2, 1, 8, 8), torch.tensor([0, 1]), torch.zeros(2, 1, 8, 8),
                           torch.tensor([0, 1]), protocol="nope", **NET)


def test_class_means_reach_high_accuracy(problem):
    protos, x_test, y_test, _, _ = problem
    r = evaluate_synthetic(protos, torch.arange(3), x_test, y_test, protocol=TINY, num_eval=2, **NET)
    assert r.mean > 0.9 and len(r.accuracies) == 2 and r.protocol == TINY.describe()


def test_wrong_labels_do_not(problem):
    protos, x_test, y_test, noise, noise_labels = problem
    shifted = evaluate_synthetic(protos, torch.tensor([1, 2, 0]), x_test, y_test, protocol=TINY, num_eval=2, **NET)
    assert shifted.mean < 0.1  # learnt the wrong mapping: the test labels really are compared
    random = evaluate_synthetic(noise, noise_labels, x_test, y_test, protocol=TINY, num_eval=3, **NET)
    # chance is 1/3; no lower bound: the arbitrary prototype -> class mapping learnt from noise may
    # as well be anti-correlated with the truth (it is for these seeds: about 0.09)
    assert random.mean < 0.6


def test_reproducible_seeds_and_std(problem):
    _, x_test, y_test, noise, noise_labels = problem
    proto = EvalProtocol("tiny", TrainConfig(epochs=3, lr=0.05, augment=""))
    a = evaluate_synthetic(noise, noise_labels, x_test, y_test, protocol=proto, num_eval=3, seed=5, **NET)
    b = evaluate_synthetic(noise, noise_labels, x_test, y_test, protocol=proto, num_eval=3, seed=5, **NET)
    assert a.accuracies == b.accuracies and a.seeds == b.seeds == [5, 6, 7]
    c = evaluate_synthetic(noise, noise_labels, x_test, y_test, protocol=proto, num_eval=1, seed=7, **NET)
    assert c.seeds == [7] and c.accuracies[0] == a.accuracies[2]  # run r is seeded with seed + r
    assert a.mean == pytest.approx(np.mean(a.accuracies)) and a.std == pytest.approx(np.std(a.accuracies))
    d = json.loads(json.dumps(a.as_dict()))
    assert d["accuracies"] == a.accuracies and d["num_eval"] == 3 and d["std"] == pytest.approx(a.std)
    assert str(a).startswith(f"{100 * a.mean:.2f} ± {100 * a.std:.2f} % (3 runs, tiny protocol")


def test_result_str_and_population_std():
    r = EvalResult(protocol="p", accuracies=[0.5, 0.7], seeds=[0, 1], seconds=1.0)
    assert r.std == pytest.approx(0.1) and str(r) == "60.00 ± 10.00 % (2 runs, p)"


@pytest.mark.parametrize("name,epochs", [("paper", 2), ("dm", 20)])
def test_standard_protocols_run_and_leave_state_alone(problem, name, epochs):
    protos, x_test, y_test, _, _ = problem
    images = protos.clone().requires_grad_(True)
    labels = torch.arange(3)
    before_images, before_test = images.detach().clone(), x_test.clone()
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    r = evaluate_synthetic(images, labels, x_test, y_test, protocol=name, epochs=epochs, num_eval=2, **NET)
    assert torch.equal(torch.get_rng_state(), rng), "evaluation touched torch's global RNG"
    assert len(r.accuracies) == 2 and r.seeds == [0, 1]
    assert r.mean > 0.6  # the prototypes are learnable: far above chance (1/3) on the noisy test set
    assert f"SCALED to {epochs} of" in r.protocol and r.protocol.startswith(name)
    assert torch.equal(images.detach(), before_images) and images.grad is None
    assert torch.equal(x_test, before_test) and torch.equal(labels, torch.arange(3))


@pytest.mark.parametrize("bad", [
    dict(images=torch.zeros(3, 8, 8)),  # no channel dim
    dict(images=torch.zeros(3, 3, 8, 8)),  # channels differ from the test set
    dict(images=torch.zeros(3, 1, 6, 6)),  # size differs from the test set
    dict(labels=torch.tensor([0, 1])),  # wrong length
    dict(labels=torch.tensor([0.0, 1.0, 2.0])),  # not long
    dict(test_labels=torch.zeros(5, dtype=torch.long)),  # test labels of wrong length
    dict(num_eval=0),
])
def test_bad_inputs(problem, bad):
    protos, x_test, y_test, _, _ = problem
    kw = dict(images=protos, labels=torch.arange(3), test_images=x_test, test_labels=y_test)
    kw.update(bad)
    num_eval = kw.pop("num_eval", 1)
    with pytest.raises(ConfigError, match="num_eval" if num_eval < 1 else r"images \("):
        evaluate_synthetic(**kw, protocol=TINY, num_eval=num_eval, **NET)


@pytest.mark.parametrize("backend", ["cpu", "torch", "compile"])
def test_the_backend_in_force_reaches_training(backend, monkeypatch):
    from dkkt_plugin import evaluation

    seen = []
    monkeypatch.setattr(evaluation, "train_classifier", lambda net, x, y, cfg, **kw: seen.append(
        runtime.settings().backend))
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 0, 1])
    with runtime.use(backend=backend):
        r = evaluate_synthetic(x, y, x, y, protocol=TINY, num_eval=2, width=4, depth=1)
    assert seen == [backend] * 2 and r.runtime["backend"] == backend


# -- stratified test subsets (--test-size) ----------------------------------------------------------
def test_stratified_subset_is_equal_per_class_and_set_by_its_seed():
    from dkkt_plugin.evaluation import stratified_subset

    labels = torch.arange(4).repeat_interleave(torch.tensor([30, 12, 50, 9]))  # unbalanced, (101,)
    a = stratified_subset(labels, 36, seed=1)
    assert torch.bincount(labels[a]).tolist() == [9, 9, 9, 9] and len(set(a.tolist())) == 36
    assert torch.equal(a, a.sort().values)
    assert torch.equal(a, stratified_subset(labels, 36, seed=1))  # deterministic by seed
    assert not torch.equal(a, stratified_subset(labels, 36, seed=2))
    state = torch.get_rng_state()
    stratified_subset(labels, 8, seed=0)
    assert torch.equal(torch.get_rng_state(), state)  # its own generator, not torch's global one
    for size, match in [(35, "positive multiple of the 4 classes.*e.g. 32 or 36"), (0, "e.g. 4"),
                        (40, "smallest class has 9: use at most 36")]:
        with pytest.raises(ConfigError, match=match):
            stratified_subset(labels, size)


def test_test_size_scores_on_the_subset_and_records_it(problem, monkeypatch):
    from dkkt_plugin import evaluation

    protos, x_test, y_test, _, _ = problem
    scored = []
    real_accuracy = evaluation.accuracy
    monkeypatch.setattr(evaluation, "accuracy", lambda net, x, y: scored.append(y.clone()) or real_accuracy(net, x, y))
    full = evaluate_synthetic(protos, torch.arange(3), x_test, y_test, protocol=TINY, num_eval=1, **NET)
    part = evaluate_synthetic(protos, torch.arange(3), x_test, y_test, protocol=TINY, num_eval=2, test_size=30,
                              test_seed=4, **NET)
    assert [len(y) for y in scored] == [180, 30, 30] and torch.bincount(scored[1]).tolist() == [10, 10, 10]
    assert torch.equal(scored[1], scored[2])  # every run scored on the same subset
    assert (full.test_size, full.test_total, full.test_seed) == (180, 180, None)
    assert (part.test_size, part.test_total, part.test_seed) == (30, 180, 4)
    d = json.loads(json.dumps(part.as_dict()))
    assert (d["test_size"], d["test_total"], d["test_seed"]) == (30, 180, 4)
    assert str(full).endswith("; tested on all 180 test images)")
    assert str(part).endswith("; tested on a stratified 30 of 180 test images (seed 4))")


def test_evaluate_takes_test_size(tiny_fashion_mnist):
    from dkkt_plugin.evaluation import evaluate

    images, labels = torch.randn(10, 1, 28, 28, generator=torch.Generator().manual_seed(0)), torch.arange(10)
    one_epoch = EvalProtocol("tiny", TrainConfig(epochs=1, lr=0.01, augment=""))
    r = evaluate(images, labels, dataset="fashion_mnist", data_root=str(tiny_fashion_mnist), protocol=one_epoch,
                 num_eval=1, device="cpu", test_size=20, test_seed=5)
    assert (r.test_size, r.test_total, r.test_seed) == (20, 40, 5)
