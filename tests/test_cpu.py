"""The CPU backend (dkkt_plugin.cpu). The no-grad bf16 embedding: close to the fp32 embedding
(closer than bf16 autocast), the same whatever the thread count. The fused blocks with a
backward: gradchecks in float64, torch's gradients in fp32 and under bf16 autocast, thread-count
independence, NaN. Which blocks they replace (matched by module type), the one test of where they
apply (not_supported_reasons), the model left as it was, and a warn-once fallback when the C
compiler is missing. Their use in the losses and in training: losses/test_dm.py,
losses/test_dkkt.py, test_training.py."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dkkt_plugin import cpu
from dkkt_plugin.cpu import build, kernels
from dkkt_plugin.cpu.build import FusedKernelError
from dkkt_plugin.nets import AvgPool2x2, ConvNet


def bf16_plan(net):
    """The bf16 embedding plan of ``net``'s current weights (it must apply)."""
    side = net.config["image_size"]
    x = torch.zeros(1, net.config["channels"], side, side)
    with torch.no_grad():
        made = cpu.embedding_plan(net, x)
    assert made is not None
    return made


def embeddings(net, x):
    """(fused, fp32, bf16 autocast) embeddings of x."""
    with torch.no_grad():
        f = bf16_plan(net)(x)
        ref = net.embed(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = net.embed(x).float()
    return f, ref, auto


@pytest.mark.parametrize("channels,size,depth,width", [
    (1, 28, 3, 128),  # Fashion-MNIST, the reference ConvNet (first conv padded by 3)
    (3, 32, 3, 32),  # CIFAR-10 shape
    (3, 28, 3, 16),  # odd sizes after block 2 (14 -> 7): pooling floors as nn.AvgPool2d
    (1, 28, 1, 8),  # one block
])
def test_close_to_fp32_and_no_worse_than_autocast(channels, size, depth, width):
    # measured: max |fused - fp32| 0.007-0.014 (autocast 0.009-0.017) on features of size ~2
    net = ConvNet(channels, 10, size, width=width, depth=depth, generator=torch.Generator().manual_seed(0))
    x = torch.randn(7, channels, size, size, generator=torch.Generator().manual_seed(1))
    f, ref, auto = embeddings(net, x)
    assert f.shape == ref.shape and f.dtype == torch.float32
    scale = ref.abs().max()
    assert (f - ref).abs().max() <= 1e-2 * scale
    assert (f - ref).abs().mean() <= 1.2 * (auto - ref).abs().mean()  # block 1 in fp32: not worse
    assert (f.mean(0) - ref.mean(0)).abs().max() <= 5e-3 * scale  # what DM uses: class means


def test_channels_last_and_strided_inputs_give_the_same_result():
    net = ConvNet(3, 10, 32, width=16)
    x = torch.randn(5, 3, 32, 32)
    embed = bf16_plan(net)
    with torch.no_grad():
        a = embed(x)
        assert torch.equal(embed(x.contiguous(memory_format=torch.channels_last)), a)
        assert torch.equal(embed(torch.cat([x, x], 3)[..., :32]), a)


def test_same_result_on_one_and_two_threads_and_when_repeated():
    net = ConvNet(1, 10, 28, width=32)
    x = torch.randn(6, 1, 28, 28)
    before = torch.get_num_threads()
    try:
        out = []
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            with torch.no_grad():
                out.append(bf16_plan(net)(x))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(out[0], out[2])
    assert torch.equal(out[0], out[1])


def test_follows_new_weights_after_reset():
    net = ConvNet(1, 10, 28, width=8)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        a = bf16_plan(net)(x)
        net.reset_parameters(torch.Generator().manual_seed(5))
        b, ref = bf16_plan(net)(x), net.embed(x)
    assert not torch.equal(a, b) and (b - ref).abs().max() <= 1e-2 * ref.abs().max()


def test_non_finite_images_give_non_finite_features():
    net = ConvNet(1, 10, 28, width=8)
    x = torch.randn(2, 1, 28, 28)
    x[1, 0, 5, 5] = float("nan")
    with torch.no_grad():
        f = bf16_plan(net)(x)
    assert torch.isfinite(f[0]).all() and torch.isnan(f[1]).any()


def test_the_bf16_embedding_applies_only_where_it_can():
    x = torch.randn(2, 1, 28, 28)
    net = ConvNet(1, 10, 28, width=8)

    def why(model, inputs):
        with torch.no_grad():
            return cpu.not_supported_reasons(model, inputs, bf16_embedding=True)

    assert why(net, x) == []
    assert why(ConvNet(1, 10, 28, width=8, norm="batchnorm"), x) == [
        "features.1 is BatchNorm2d where the fused blocks need an instance norm (GroupNorm with one group per "
        "channel and affine parameters)"]
    assert why(ConvNet(1, 10, 28, width=8, pooling="max"), x) == [
        "features.3 is MaxPool2d where the fused blocks need a 2x2 average pooling with stride 2 (no padding)"]
    assert why(nn.Conv2d(1, 8, 3), x) == ["Conv2d is not a dkkt_plugin.nets.ConvNet"]
    assert "the network's parameters are not all float32 on the CPU" in why(ConvNet(1, 10, 28, width=8).double(), x)
    assert "the input is torch.float64 of shape (2, 1, 28, 28), not float32 (B, C, H, W)" in why(net, x.double())
    assert cpu.not_supported_reasons(net, x, bf16_embedding=True) == [
        "gradients are recorded (the bf16 embedding has no backward)"]
    with torch.no_grad():
        assert cpu.embedding_plan(ConvNet(1, 10, 28, width=8, norm="none"), x) is None


def test_missing_compiler_warns_once_and_the_backend_steps_aside(monkeypatch, tmp_path):
    monkeypatch.setattr(build, "_library", None)
    monkeypatch.setattr(build, "_error", None)
    monkeypatch.setenv("DKKT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.raises(FusedKernelError, match="could not compile .*convnet_fused.c \\(set CC to a C compiler\\)"):
        build.load_library()
    net, x = ConvNet(1, 10, 28, width=8), torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        with pytest.warns(RuntimeWarning, match="the fused kernels are unavailable .*the CPU backend runs torch's ops"):
            assert cpu.embedding_plan(net, x) is None
        [reason] = cpu.not_supported_reasons(net, x, bf16_embedding=True)  # once: no second warning, no retry
    assert reason.startswith("the fused kernels are unavailable (could not compile")
    xg = x.clone().requires_grad_()
    with cpu.fused(net):
        out = net(xg)  # torch's ops
    assert torch.equal(out, net(x))
    assert not list(tmp_path.glob("*.so"))  # nothing half-built left behind


def test_builds_once_into_the_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(build, "_library", None)
    monkeypatch.setenv("DKKT_CACHE_DIR", str(tmp_path))
    lib = build.load_library()
    built = list(tmp_path.glob("convnet_fused-*.so"))
    assert len(built) == 1 and build.load_library() is lib
    monkeypatch.setattr(build, "_library", None)  # as a new process: loads the built file, compiles nothing

    def no_compiler(*args, **kwargs):
        raise AssertionError("compiled again")

    monkeypatch.setattr(build.subprocess, "run", no_compiler)
    build.load_library()
    assert list(tmp_path.glob("convnet_fused-*.so")) == built


def test_corrupt_cached_library_names_the_file(monkeypatch, tmp_path):
    monkeypatch.setattr(build, "_library", None)
    monkeypatch.setenv("DKKT_CACHE_DIR", str(tmp_path / "good"))
    build.load_library()
    name = next((tmp_path / "good").glob("convnet_fused-*.so")).name
    bad = tmp_path / "bad" / name  # the same key in another folder (never overwrite a loaded file)
    bad.parent.mkdir()
    bad.write_bytes(b"not a shared library")
    monkeypatch.setattr(build, "_library", None)
    monkeypatch.setenv("DKKT_CACHE_DIR", str(bad.parent))
    with pytest.raises(FusedKernelError, match=f"cannot load {bad}.*delete it to rebuild"):
        build.load_library()
    monkeypatch.setenv("DKKT_CACHE_DIR", str(bad))  # a file, not a folder
    with pytest.raises(FusedKernelError, match="set DKKT_CACHE_DIR to a writable folder"):
        build.load_library()


# -- the fused blocks with a backward (NormReluPool, FirstBlock, cpu.fused) ----------------------

def _reference_block(y, gamma, beta, eps=1e-5):
    return F.avg_pool2d(F.relu(F.group_norm(y, y.shape[1], gamma, beta, eps)), 2)


def _affine(c, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    gamma = torch.rand(c, generator=g, dtype=dtype).add(0.5).requires_grad_()
    beta = torch.randn(c, generator=g, dtype=dtype).mul(0.3).requires_grad_()
    return gamma, beta


@pytest.mark.parametrize("shape", [(2, 3, 4, 6), (1, 2, 2, 2)])
def test_norm_relu_pool_gradcheck_in_float64(shape):
    y = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2), requires_grad=True)
    gamma, beta = _affine(shape[1], torch.float64)
    f = lambda y, g, b: kernels.NormReluPool.apply(y, g, b, 1e-5)  # noqa: E731
    assert torch.autograd.gradcheck(f, (y, gamma, beta))
    assert torch.autograd.gradgradcheck(f, (y, gamma, beta))  # create_graph: torch's ops


@pytest.mark.parametrize("cin,size,pad", [(1, 4, 3), (3, 6, 1), (2, 4, 2)])
def test_first_block_gradcheck_in_float64(cin, size, pad):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, cin, size, size, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(3, cin, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, generator=g, requires_grad=True)
    gamma, beta = _affine(3, torch.float64)
    f = lambda *a: kernels.FirstBlock.apply(*a, pad, 1e-5)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, w, b, gamma, beta), fast_mode=True)
    assert torch.autograd.gradgradcheck(f, (x, w, b, gamma, beta), fast_mode=True)
    only_x = lambda x: f(x, w.detach(), b.detach(), gamma.detach(), beta.detach())  # noqa: E731
    assert torch.autograd.gradcheck(only_x, (x,))  # the DM / DKKT case: frozen weights
    ref = _reference_block(F.conv2d(x, w, b, padding=pad), gamma, beta)
    assert torch.allclose(f(x, w, b, gamma, beta), ref, rtol=0, atol=1e-12)


def _run(net, x, enabled, autocast=False):
    """(logits, input gradient, parameter gradients) of sum(logits * k)."""
    net.zero_grad()
    x = x.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), cpu.fused(net, enabled=enabled):
        out = net(x)
    (out.float() * torch.arange(1, out.shape[1] + 1)).sum().backward()
    return out.detach().float(), x.grad, {n: p.grad.clone() for n, p in net.named_parameters()}


def _rel(a, b):
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def _noisy_affine(net):
    with torch.no_grad():  # norm weights other than 1 / 0, so that their gradients matter
        for m in net.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(4))
                m.bias.uniform_(-0.3, 0.3, generator=torch.Generator().manual_seed(5))
    return net


def _conv_bias(net, name):
    """Whether ``name`` is a convolution's bias: before an instance norm its gradient is zero up
    to rounding, so it is compared in absolute terms."""
    return name.endswith("bias") and isinstance(net.get_submodule(name.rsplit(".", 1)[0]), torch.nn.Conv2d)


@pytest.mark.parametrize("channels,size,depth", [(1, 28, 3), (3, 32, 2), (3, 28, 3)])
def test_fused_blocks_give_torch_gradients_in_fp32(channels, size, depth):
    # (3, 28, 3): block 3 is 7x7 (odd), so it runs torch's ops beside the fused ones
    net = _noisy_affine(ConvNet(channels, 10, size, width=16, depth=depth, generator=torch.Generator().manual_seed(0)))
    x = torch.randn(5, channels, size, size, generator=torch.Generator().manual_seed(1))
    out, gx, grads = _run(net, x, True)
    ref_out, ref_gx, ref_grads = _run(net, x, False)
    assert (out - ref_out).abs().max() <= 1e-5 * ref_out.abs().max()
    assert _rel(gx, ref_gx) <= 1e-5
    for name, g in grads.items():
        if _conv_bias(net, name):
            weight = grads[name.replace("bias", "weight")].abs().max()
            assert max(g.abs().max(), ref_grads[name].abs().max()) <= 1e-5 * weight, name
        else:
            assert _rel(g, ref_grads[name]) <= 1e-5, name


def test_fused_blocks_under_bf16_autocast_are_as_close_to_fp32_as_torch():
    # bf16 training's gradients are themselves ~7 % off the fp32 ones here (measured); the fused
    # blocks round where autocast does (block 1's output, each norm's output and input gradient)
    net = _noisy_affine(ConvNet(1, 10, 28, width=32, generator=torch.Generator().manual_seed(0)))
    x = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    out, gx, grads = _run(net, x, True, autocast=True)
    ref_out, ref_gx, ref_grads = _run(net, x, False, autocast=True)
    exact_out, exact_gx, exact_grads = _run(net, x, False)
    assert _rel(out, exact_out) <= 1.5 * _rel(ref_out, exact_out) + 1e-3
    assert _rel(gx, exact_gx) <= 1.5 * _rel(ref_gx, exact_gx) + 1e-3
    for name, g in grads.items():
        if not _conv_bias(net, name):
            assert _rel(g, exact_grads[name]) <= 1.5 * _rel(ref_grads[name], exact_grads[name]) + 1e-3, name


def _count_kernels(monkeypatch) -> list:
    calls = []
    for cls in (kernels.FirstBlock, kernels.NormReluPool):
        monkeypatch.setattr(cls, "apply", lambda *a, _f=cls.apply, _n=cls.__name__: calls.append(_n) or _f(*a))
    return calls


def test_fused_blocks_run_the_kernels_and_leave_the_model_as_it_was(monkeypatch):
    calls = _count_kernels(monkeypatch)
    net, x = ConvNet(1, 10, 28, width=8, depth=2), torch.randn(2, 1, 28, 28, requires_grad=True)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    with cpu.fused(net) as same:
        assert same is net and "embed" in vars(net)
        net(x).sum().backward()
        with cpu.fused(net):  # nested: the outer block keeps its patch
            pass
        assert "embed" in vars(net)
        with cpu.fused(net, enabled=False):
            pass
    assert "embed" not in vars(net) and net.embed.__func__ is ConvNet.embed
    net(x)
    assert calls == ["FirstBlock", "NormReluPool"]
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    with pytest.raises(RuntimeError, match="boom"), cpu.fused(net):
        raise RuntimeError("boom")
    assert "embed" not in vars(net)  # restored on an error too


def test_blocks_are_matched_by_module_type_not_by_position(monkeypatch):
    calls = _count_kernels(monkeypatch)
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    # the reference code's nn.AvgPool2d(2) instead of ours: still a 2x2 average pooling
    ref = ConvNet(1, 10, 28, width=8, depth=2)
    ref.features[3] = nn.AvgPool2d(2)
    assert [b.index for b in cpu.find_blocks(ref.features)[0]] == [0, 4]
    expected = ref(x)
    with cpu.fused(ref):
        assert torch.allclose(ref(x), expected, atol=1e-5)
    assert calls == ["FirstBlock", "NormReluPool"]
    # ReLU before the norm: a different network, which the kernels would compute wrongly; refused
    swapped = ConvNet(1, 10, 28, width=8, depth=2)
    swapped.features[1], swapped.features[2] = swapped.features[2], swapped.features[1]
    assert cpu.find_blocks(swapped.features)[1] == [
        "features.1 is ReLU where the fused blocks need an instance norm (GroupNorm with one group per channel "
        "and affine parameters)"]
    calls.clear()
    with cpu.fused(swapped):
        out = swapped(x)
    assert calls == [] and torch.equal(out, swapped(x))
    # a block missing its pooling, a norm over groups of channels, a non-Sequential features
    short = ConvNet(1, 10, 28, width=8, depth=1)
    del short.features[3]
    assert cpu.find_blocks(short.features)[1] == [
        "features ends after features.2 where the fused blocks need a 2x2 average pooling with stride 2 (no padding)"]
    grouped = ConvNet(1, 10, 28, width=8, depth=1)
    grouped.features[1] = nn.GroupNorm(2, 8)
    assert cpu.find_blocks(grouped.features)[1][0].startswith("features.1 is GroupNorm where")
    assert cpu.find_blocks(nn.ModuleList([nn.ReLU()]))[1] == ["features is ModuleList, not an nn.Sequential of blocks"]


def test_not_supported_reasons_name_each_obstacle():
    net = ConvNet(1, 10, 28, width=8)
    x = torch.randn(2, 1, 28, 28)
    assert cpu.not_supported_reasons(net, x) == []
    assert cpu.not_supported_reasons(net, x.half()) == [
        "the input is torch.float16; the kernels take float32, float64 or bfloat16"]
    assert cpu.not_supported_reasons(net, x.to("meta")) == ["the input is on meta, not on the CPU"]
    assert cpu.not_supported_reasons(net, x, differentiated=["features.4.weight", "classifier.weight"]) == [
        "parameters of features are differentiated twice (the caller's create_graph=True backward), which the "
        "kernels leave to torch's ops"]
    assert cpu.not_supported_reasons(net, x, differentiated=["classifier.weight"]) == []

    class OwnEmbed(ConvNet):
        def embed(self, x):
            return super().embed(x) * 2

    assert cpu.not_supported_reasons(OwnEmbed(1, 10, 28, width=8), x) == ["OwnEmbed.embed replaces ConvNet.embed"]
    assert cpu.not_supported_reasons(nn.Linear(2, 2), x) == ["Linear is not a dkkt_plugin.nets.ConvNet and holds none"]
    seen = []
    torch.func.vmap(lambda xi: seen.append(cpu.not_supported_reasons(net, xi[None])) or xi)(x)
    assert seen == [["a torch.func transform (vmap, grad) is active"]]


def test_a_convnet_inside_another_model_runs_fused(monkeypatch):
    # e.g. an edge model wrapped with its normalisation: the ConvNet inside is found by type
    calls = _count_kernels(monkeypatch)
    inner = ConvNet(1, 10, 28, width=8, depth=2)
    model = nn.Sequential(nn.Identity(), inner)
    x = torch.randn(2, 1, 28, 28, requires_grad=True)
    assert cpu.not_supported_reasons(model, x) == []
    assert cpu.not_supported_reasons(model, x, differentiated=["1.features.0.weight"]) == [
        "1: parameters of 1.features are differentiated twice (the caller's create_graph=True backward), which the "
        "kernels leave to torch's ops"]
    with cpu.fused(model):
        model(x).sum().backward()
    assert calls == ["FirstBlock", "NormReluPool"] and "embed" not in vars(inner)
    calls.clear()
    with cpu.fused(model, differentiated=["1.features.0.weight"]):
        model(x)
    assert calls == []


def test_fused_blocks_leave_patched_relus_and_dispatch_modes_to_torch():
    from torch.utils.flop_counter import FlopCounterMode

    from dkkt_plugin.losses.kkt import soft_relu_backward

    net = ConvNet(1, 10, 28, width=8, generator=torch.Generator().manual_seed(0))
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    grads = []
    for enabled in (True, False):
        xg = x.clone().requires_grad_()
        with soft_relu_backward(net, 5.0), cpu.fused(net, enabled=enabled):
            net(xg).sum().backward()
        grads.append(xg.grad)
    assert torch.equal(grads[0], grads[1])  # every block ran torch's ops: the soft derivative kept
    counts = []
    for enabled in (True, False):
        with FlopCounterMode(display=False) as counter, cpu.fused(net, enabled=enabled):
            net(x)
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] > 0  # under a dispatch mode the fused path steps aside


def test_fused_blocks_same_on_one_and_two_threads():
    net = _noisy_affine(ConvNet(1, 10, 28, width=16, generator=torch.Generator().manual_seed(0)))
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    before = torch.get_num_threads()
    try:
        runs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            runs.append(_run(net, x, True))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    # the fused blocks' own parameters (oneDNN's weight gradients of the later convolutions
    # depend on the thread count)
    ours = [n for n in runs[0][2] if n.startswith(("features.0.", "features.1.", "features.5.", "features.9."))]
    assert all(torch.equal(runs[0][2][n], runs[1][2][n]) for n in ours)


def test_fused_blocks_propagate_nan_and_overflow():
    net = ConvNet(1, 10, 28, width=8)
    for bad in (float("nan"), 1e25):  # 1e25: the variance overflows, as in torch's norm
        x = torch.randn(2, 1, 28, 28)
        x[0, 0, 5, 5] = bad
        x.requires_grad_()
        with cpu.fused(net):
            out = net(x)
        assert not out[0].isfinite().all() and out[1].isfinite().all()


def test_fused_blocks_fall_back_with_one_warning_when_the_kernels_cannot_be_built(monkeypatch):
    def broken():
        raise FusedKernelError("could not compile convnet_fused.c (set CC to a C compiler)")

    monkeypatch.setattr(build, "load_library", broken)
    monkeypatch.setattr(build, "_library", None)
    monkeypatch.setattr(build, "_error", None)
    net, x = ConvNet(1, 10, 28, width=8), torch.randn(2, 1, 28, 28, requires_grad=True)
    with cpu.fused(net):
        with pytest.warns(RuntimeWarning, match="the fused kernels are unavailable .*runs torch's ops instead"):
            out = net(x)
        assert torch.equal(out, net(x))  # no second warning (pytest's filter would fail on one)
    with torch.no_grad():
        assert torch.equal(out, net(x))


def test_chunk_sizes_keep_activations_in_the_caches_on_the_cpu_only():
    assert cpu.default_chunk_size("cpu") == cpu.default_chunk_size(torch.device("cpu")) == cpu.CPU_CHUNK == 16
    assert cpu.default_chunk_size("cpu", training=True) == cpu.CPU_TRAIN_CHUNK == 8
    assert cpu.default_chunk_size("cpu", training=True, fused=True) == cpu.CPU_FUSED_TRAIN_CHUNK == 16
    for device in ("cuda", "cuda:1", torch.device("cuda", 0), "mps"):
        assert cpu.default_chunk_size(device) >= 2 ** 60 and cpu.default_chunk_size(device, training=True) >= 2 ** 60
