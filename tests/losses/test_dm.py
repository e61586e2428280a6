"""DM: batched all-class forward equals the per-class reference loop; gradients."""
import pytest
import torch

from dkkt_plugin.augment import DSA
from dkkt_plugin.errors import ConfigError
from dkkt_plugin.losses import DMLoss
from dkkt_plugin.nets import ConvNet


def batch(n_real=12, n_syn=6, classes=3, dtype=torch.float32, size=28):
    g = torch.Generator().manual_seed(1)
    real = torch.randn(n_real, 1, size, size, generator=g, dtype=dtype)
    syn = torch.randn(n_syn, 1, size, size, generator=g, dtype=dtype)
    return real, torch.arange(n_real) % classes, syn, torch.arange(n_syn) % classes


def make(batched, augment=True, seed=0, dtype=torch.float32, **kwargs):
    net = ConvNet(1, 3, 28, width=8).to(dtype)
    dsa = DSA(seed=seed) if augment else None
    kwargs.setdefault("real_precision", "fp32")
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


@pytest.mark.parametrize("fused_real", [True, False])
def test_bf16_real_embedding_within_tolerance_of_fp32(fused_real, monkeypatch):
    # The reference width (128) and batch shape of DM: bf16 real class means change the loss by
    # ~1e-4 relative and the image gradient by ~4e-3 (measured, torch autocast; the fused kernels,
    # block 1 in fp32, are closer); bound them at 1e-3 and 2e-2.
    from dkkt_plugin.fused import FusedEmbed

    used = []
    prepare = FusedEmbed.prepare
    monkeypatch.setattr(FusedEmbed, "prepare", lambda self, net: used.append(net) or prepare(self, net))
    g = torch.Generator().manual_seed(0)
    real, yr = torch.randn(3 * 64, 1, 28, 28, generator=g), torch.arange(3).repeat_interleave(64)
    syn, ys = torch.randn(6, 1, 28, 28, generator=g), torch.arange(3).repeat_interleave(2)
    out = {}
    for precision in ("fp32", "bf16"):
        dm = DMLoss(ConvNet(1, 3, 28), augment=DSA(seed=0), generator=torch.Generator().manual_seed(0),
                    real_precision=precision, fused_real=fused_real)
        s = syn.clone().requires_grad_()
        loss = dm(real, yr, s, ys)
        out[precision] = (loss.detach(), torch.autograd.grad(loss, s)[0])
        assert dm.uses_bf16(real) == (precision == "bf16")
    assert len(used) == int(fused_real)  # the fused kernels ran for bf16 only, and only if asked
    (l32, g32), (l16, g16) = out["fp32"], out["bf16"]
    assert not torch.equal(l32, l16)  # bf16 really ran
    assert abs(float(l16 - l32)) <= 1e-3 * float(l32)
    assert float((g16 - g32).norm() / g32.norm()) <= 2e-2


def test_fused_kernels_unavailable_warn_and_the_torch_path_runs(monkeypatch, tmp_path):
    from dkkt_plugin import fused

    monkeypatch.setattr(fused, "_library", None)
    monkeypatch.setattr(fused, "_grad_failed", False)  # restored afterwards: later tests build the kernels
    monkeypatch.setenv("DKKT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    real, yr, syn, ys = batch()
    syn.requires_grad_()
    dm = make(True, real_precision="bf16")
    with pytest.warns(RuntimeWarning) as caught:
        a = dm(real, yr, syn, ys)
    messages = " | ".join(str(w.message) for w in caught)
    assert "fused ConvNet embedding unavailable" in messages and "fused ConvNet blocks unavailable" in messages
    b = make(True, real_precision="bf16", fused_real=False, fused_syn=False)(real, yr, syn, ys)
    assert torch.equal(a, b)


def test_real_precision_auto_and_other_dtypes():
    dm = make(True, real_precision="auto")
    from dkkt_plugin.nets import native_bf16
    assert dm.uses_bf16(torch.zeros(1)) == native_bf16(torch.device("cpu"))
    assert not make(True, real_precision="bf16").uses_bf16(torch.zeros(1, dtype=torch.float64))
    with pytest.raises(ConfigError, match="real_precision"):
        make(True, real_precision="fp16")
    with pytest.raises(ConfigError, match="chunk_size"):
        make(True, chunk_size=0)


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

    assert torch.autograd.gradcheck(f, (syn.clone().requires_grad_(),), eps=1e-6, atol=1e-5)


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
    eager, compiled = make(True, chunk_size=5), make(True, chunk_size=5, compile_real=True)
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
    dm = make(True, chunk_size=5, compile_real=True)
    with pytest.warns(RuntimeWarning, match=r"torch.compile failed \(RuntimeError: no C\+\+ compiler found\); "
                                            "embedding the real images eagerly"):
        a = dm(real, yr, syn, ys)
    assert torch.allclose(a, make(True, chunk_size=5)(real, yr, syn, ys), rtol=1e-5, atol=1e-6)
    assert dm._embed_real.failed


def test_fused_synthetic_passes_give_the_torch_loss_and_gradient(monkeypatch):
    # fused_syn (default on): the synthetic images' forward and backward through the fused blocks
    from dkkt_plugin import fused

    calls = []
    monkeypatch.setattr(fused.FirstBlock, "apply", lambda *a, _f=fused.FirstBlock.apply: calls.append(1) or _f(*a))
    real, yr, syn, ys = batch()
    out = []
    for fused_syn in (True, False):
        s = syn.clone().requires_grad_()
        loss = make(True, fused_syn=fused_syn)(real, yr, s, ys)
        out.append((loss.detach(), torch.autograd.grad(loss, s)[0]))
    assert len(calls) == 1  # the fused blocks ran with fused_syn=True only (fp32 real side: torch)
    (la, ga), (lb, gb) = out
    assert torch.allclose(la, lb, rtol=1e-5)
    assert float((ga - gb).norm()) <= 1e-4 * float(gb.norm())
