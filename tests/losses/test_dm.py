"""DM: batched all-class forward equals the per-class reference loop; gradients; the speed
settings (precision of the real embedding, the CPU and compile backends) read when it is built."""
import pytest
import torch

from dkkt_plugin import cpu, runtime
from dkkt_plugin.augment import DSA
from dkkt_plugin.errors import ConfigError
from dkkt_plugin.losses import DMLoss
from dkkt_plugin.nets import ConvNet


def batch(n_real=12, n_syn=6, classes=3, dtype=torch.float32, size=28):
    g = torch.Generator().manual_seed(1)
    real = torch.randn(n_real, 1, size, size, generator=g, dtype=dtype)
    syn = torch.randn(n_syn, 1, size, size, generator=g, dtype=dtype)
    return real, torch.arange(n_real) % classes, syn, torch.arange(n_syn) % classes


def make(batched, augment=True, seed=0, dtype=torch.float32, precision="fp32", backend="cpu", **kwargs):
    net = ConvNet(1, 3, 28, width=8).to(dtype)
    dsa = DSA(seed=seed) if augment else None
    with runtime.use(precision=precision, backend=backend):
        return DMLoss(net, augment=dsa, generator=torch.Generator().manual_seed(seed), batched=batched, **kwargs)


@pytest.mark.parametrize("augment", [False, True])
def test_batched_equals_per_class(augment):
    real, yr, syn, ys = batch()
    syn_a = syn.clone().requires_grad_()
    syn_b = syn.clone().requires_grad_()
    for _ in range(3):  # several steps: fresh networks and draws stay in lockstep
        a = make(True, augment)(real, yr, syn_a, ys)
        b = make(False, augment)(real, yr, syn_b, ys)
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    ga, = torch.autograd.grad(a, syn_a)
    gb, = torch.autograd.grad(b, syn_b)
    assert torch.allclose(ga, gb, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("chunk_size", [1, 5, None])
def test_chunk_size_does_not_change_the_fp32_loss(chunk_size):
    real, yr, syn, ys = batch()
    syn_a, syn_b = syn.clone().requires_grad_(), syn.clone().requires_grad_()
    a = make(True, chunk_size=chunk_size)(real, yr, syn_a, ys)
    b = make(False)(real, yr, syn_b, ys)
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    ga, = torch.autograd.grad(a, syn_a)
    gb, = torch.autograd.grad(b, syn_b)
    assert torch.allclose(ga, gb, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_bf16_real_embedding_within_tolerance_of_fp32(backend, monkeypatch):
    # The reference width (128) and batch shape of DM: bf16 real class means change the loss by
    # ~1e-4 relative and the image gradient by ~4e-3 (measured, torch autocast; the fused kernels,
    # block 1 in fp32, are closer); bound them at 1e-3 and 2e-2.
    used = []
    plan = cpu.embedding_plan
    monkeypatch.setattr(cpu, "embedding_plan", lambda net, x: used.append(net) or plan(net, x))
    g = torch.Generator().manual_seed(0)
    real, yr = torch.randn(3 * 64, 1, 28, 28, generator=g), torch.arange(3).repeat_interleave(64)
    syn, ys = torch.randn(6, 1, 28, 28, generator=g), torch.arange(3).repeat_interleave(2)
    out = {}
    for precision in ("fp32", "bf16"):
        with runtime.use(precision=precision, backend=backend):
            dm = DMLoss(ConvNet(1, 3, 28), augment=DSA(seed=0), generator=torch.Generator().manual_seed(0))
        s = syn.clone().requires_grad_()
        loss = dm(real, yr, s, ys)
        out[precision] = (loss.detach(), torch.autograd.grad(loss, s)[0])
        assert dm.uses_bf16(real) == (precision == "bf16")
    assert len(used) == int(backend == "cpu")  # the fused kernels ran for bf16 only, on the cpu backend
    (l32, g32), (l16, g16) = out["fp32"], out["bf16"]
    assert not torch.equal(l32, l16)  # bf16 really ran
    assert abs(float(l16 - l32)) <= 1e-3 * float(l32)
    assert float((g16 - g32).norm() / g32.norm()) <= 2e-2


def test_fused_kernels_unavailable_warn_once_and_the_torch_path_runs(monkeypatch, tmp_path):
    from dkkt_plugin.cpu import build

    monkeypatch.setattr(build, "_library", None)
    monkeypatch.setattr(build, "_error", None)  # restored afterwards: later tests build the kernels
    monkeypatch.setenv("DKKT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    real, yr, syn, ys = batch()
    syn.requires_grad_()
    dm = make(True, precision="bf16")
    with pytest.warns(RuntimeWarning) as caught:
        a = dm(real, yr, syn, ys)
    assert [str(w.message).split(" (")[0] for w in caught] == ["the fused kernels are unavailable"]
    assert dm.speed_report(syn)["dm.real"]["backend"] == "torch"
    b = make(True, precision="bf16", backend="torch")(real, yr, syn, ys)
    assert torch.equal(a, b)


@pytest.mark.parametrize("native", [True, False])
def test_the_speed_settings_are_read_when_the_loss_is_built(native, monkeypatch):
    monkeypatch.setattr(runtime, "native_bf16", lambda device: native)
    x = torch.zeros(1, 1, 28, 28)
    auto = make(True, precision="auto")
    with runtime.use(precision="fp32"):
        assert auto.uses_bf16(x) is native  # built under auto: later settings leave it alone
    assert make(True, precision="bf16").uses_bf16(x) and not make(True, precision="fp32").uses_bf16(x)
    assert not make(True, precision="bf16").uses_bf16(x.double())
    assert not make(False, precision="bf16").uses_bf16(x)  # the per-class reference loop: fp32
    with pytest.raises(ConfigError, match="chunk_size"):
        make(True, chunk_size=0)
    with pytest.raises(TypeError):  # no speed keyword: the process-wide settings decide
        make(True, real_precision="fp32")


def test_speed_report_says_what_runs():
    real, yr, syn, ys = batch()
    report = make(True, precision="bf16").speed_report(syn)
    assert report == {"dm.real": {"precision": "bf16", "backend": "cpu", "not_supported": []},
                      "dm.synthetic": {"precision": "fp32", "backend": "cpu", "not_supported": []}}
    fp32 = make(True).speed_report(syn)["dm.real"]
    assert fp32["backend"] == "torch" and fp32["not_supported"] == [
        "the fused embedding computes in bf16; this pass is fp32"]
    assert make(True, backend="compile").speed_report(syn)["dm.real"]["backend"] == "compile"
    assert make(True, backend="torch").speed_report(syn)["dm.synthetic"]["backend"] == "torch"
    with runtime.use(precision="bf16"):
        bn = DMLoss(ConvNet(1, 3, 28, width=8, norm="batchnorm"), reinit=False).eval()
    bn.net.eval()
    real_entry = bn.speed_report(syn)["dm.real"]
    assert real_entry["backend"] == "torch" and real_entry["not_supported"][0].startswith("features.1 is BatchNorm2d")


def test_matches_hand_formula_without_augmentation():
    real, yr, syn, ys = batch()
    dm = make(True, augment=False)
    loss = dm(real, yr, syn, ys)
    net = dm.net  # re-initialised once by the call above
    expect = sum(((net.embed(real[yr == c]).mean(0) - net.embed(syn[ys == c]).mean(0)) ** 2).sum()
                 for c in range(3))
    assert torch.allclose(loss, expect, rtol=1e-5)


def test_fresh_network_each_step_and_reproducible():
    real, yr, syn, ys = batch()
    dm = make(True)
    l1, l2 = dm(real, yr, syn, ys), dm(real, yr, syn, ys)
    assert not torch.equal(l1, l2)
    dm2 = make(True)
    assert torch.equal(l1, dm2(real, yr, syn, ys))


def test_pretrained_embedding_kept_with_reinit_false():
    real, yr, syn, ys = batch()
    net = ConvNet(1, 3, 28, width=8)
    before = [p.clone() for p in net.parameters()]
    dm = DMLoss(net, reinit=False)
    assert torch.equal(dm(real, yr, syn, ys), dm(real, yr, syn, ys))
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_gradcheck():
    real, yr, syn, ys = batch(n_real=6, n_syn=3, dtype=torch.float64, size=8)
    net = ConvNet(1, 3, 8, width=2, depth=1).double()
    dm = DMLoss(net, augment=DSA("color_flip_scale", mode="all", seed=0), reinit=False)
    draw_gen_state = dm.augment.generator.get_state()

    def f(s):
        dm.augment.generator.set_state(draw_gen_state)  # the same draw for every evaluation
        return dm(real, yr, s, ys)

    assert torch.autograd.gradcheck(f, (syn.clone().requires_grad_(),), eps=1e-6, atol=1e-5, fast_mode=True)


def test_errors():
    real, yr, syn, ys = batch()
    with pytest.raises(ConfigError, match="no real images"):
        make(True)(real[yr != 2], yr[yr != 2], syn, ys)
    with pytest.raises(ConfigError, match="reset_parameters"):
        DMLoss(torch.nn.Flatten())
    with pytest.raises(ConfigError, match=r"\(N, C, H, W\)"):
        make(True)(real, yr, syn[:, 0], ys)


def test_compiled_real_embedding_equals_eager(recwarn):
    # torch.compile of the real embedding: the same losses over several steps (fresh weights each
    # step, so the compiled graph must read the weights, not bake them in), with a zero-padded
    # last chunk (12 real images in chunks of 5), compiled once: a recompilation would raise here,
    # fall back to eager and warn
    import torch._dynamo

    torch._dynamo.reset()
    real, yr, syn, ys = batch()
    eager, compiled = make(True, chunk_size=5, backend="torch"), make(True, chunk_size=5, backend="compile")
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(3):
            a, b = eager(real, yr, syn, ys), compiled(real, yr, syn, ys)
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), (a, b)
    assert compiled._embed_real.compiled is not None and not compiled._embed_real.failed
    assert not [w for w in recwarn if "torch.compile failed" in str(w.message)]


def test_compile_failure_warns_and_runs_eagerly(monkeypatch):
    def broken(fn, **kwargs):
        def run(x):
            raise RuntimeError("no C++ compiler found\nmore lines")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    real, yr, syn, ys = batch()
    dm = make(True, chunk_size=5, backend="compile")
    with pytest.warns(RuntimeWarning, match=r"backend 'compile', DM's real-image embedding: torch.compile failed "
                                            r"\(RuntimeError: no C\+\+ compiler found\); "
                                            "embedding the real images eagerly"):
        a = dm(real, yr, syn, ys)
    assert torch.equal(a, make(True, chunk_size=5, backend="torch")(real, yr, syn, ys))
    assert dm._embed_real.failed


def test_fused_synthetic_passes_give_the_torch_loss_and_gradient(monkeypatch):
    # backend cpu (the default): the synthetic images' forward and backward through the fused blocks
    from dkkt_plugin.cpu import kernels

    calls = []
    monkeypatch.setattr(kernels.FirstBlock, "apply", lambda *a, _f=kernels.FirstBlock.apply: calls.append(1) or _f(*a))
    real, yr, syn, ys = batch()
    out = []
    for backend in ("cpu", "torch"):
        s = syn.clone().requires_grad_()
        loss = make(True, backend=backend)(real, yr, s, ys)
        out.append((loss.detach(), torch.autograd.grad(loss, s)[0]))
    assert len(calls) == 1  # the fused blocks ran on the cpu backend only (fp32 real side: torch)
    (la, ga), (lb, gb) = out
    assert torch.allclose(la, lb, rtol=1e-5)
    assert float((ga - gb).norm()) <= 1e-4 * float(gb.norm())
