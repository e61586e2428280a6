"""The fused ConvNet embedding: close to the fp32 embedding (closer than bf16 autocast), the same
whatever the thread count, where it applies, and a clear warn-once fallback when the C compiler
is missing (its use inside DMLoss is tested in losses/test_dm.py)."""
import pytest
import torch

from dkkt_plugin import fused
from dkkt_plugin.fused import FusedEmbed, FusedKernelError
from dkkt_plugin.nets import ConvNet


def embeddings(net, x):
    """(fused, fp32, bf16 autocast) embeddings of x."""
    with torch.no_grad():
        f = FusedEmbed().prepare(net)(x)
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
    plan = FusedEmbed().prepare(net)
    with torch.no_grad():
        a = plan(x)
        assert torch.equal(plan(x.contiguous(memory_format=torch.channels_last)), a)
        assert torch.equal(plan(torch.cat([x, x], 3)[..., :32]), a)


def test_same_result_on_one_and_two_threads_and_when_repeated():
    net = ConvNet(1, 10, 28, width=32)
    x = torch.randn(6, 1, 28, 28)
    before = torch.get_num_threads()
    try:
        out = []
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            with torch.no_grad():
                out.append(FusedEmbed().prepare(net)(x))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(out[0], out[2])
    assert torch.equal(out[0], out[1])


def test_follows_new_weights_after_reset():
    net = ConvNet(1, 10, 28, width=8)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        a = FusedEmbed().prepare(net)(x)
        net.reset_parameters(torch.Generator().manual_seed(5))
        b, ref = FusedEmbed().prepare(net)(x), net.embed(x)
    assert not torch.equal(a, b) and (b - ref).abs().max() <= 1e-2 * ref.abs().max()


def test_non_finite_images_give_non_finite_features():
    net = ConvNet(1, 10, 28, width=8)
    x = torch.randn(2, 1, 28, 28)
    x[1, 0, 5, 5] = float("nan")
    with torch.no_grad():
        f = FusedEmbed().prepare(net)(x)
    assert torch.isfinite(f[0]).all() and torch.isnan(f[1]).any()


def test_applies_only_where_it_can():
    x = torch.randn(2, 1, 28, 28)
    net = ConvNet(1, 10, 28, width=8)
    with torch.no_grad():
        assert FusedEmbed().applies(net, x)
        assert not FusedEmbed(enabled=False).applies(net, x)
        assert not FusedEmbed().applies(ConvNet(1, 10, 28, width=8, norm="batchnorm"), x)
        assert not FusedEmbed().applies(ConvNet(1, 10, 28, width=8, pooling="max"), x)
        assert not FusedEmbed().applies(torch.nn.Conv2d(1, 8, 3), x)
        assert not FusedEmbed().applies(ConvNet(1, 10, 28, width=8).double(), x)  # fp64 weights
        assert not FusedEmbed().applies(net.double(), x.double())
    assert not FusedEmbed().applies(net.float(), x)  # gradients on: the kernels have no backward


def test_missing_compiler_warns_once_and_declines(monkeypatch, tmp_path):
    monkeypatch.setattr(fused, "_library", None)
    monkeypatch.setenv("DKKT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.raises(FusedKernelError, match="could not compile .*convnet_fused.c \\(set CC to a C compiler\\)"):
        fused.load_library()
    embed = FusedEmbed()
    net, x = ConvNet(1, 10, 28, width=8), torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        with pytest.warns(RuntimeWarning, match="fused ConvNet embedding unavailable .*embedding with torch instead"):
            assert not embed.applies(net, x)
        assert not embed.applies(net, x) and embed.failed  # once: no second warning, no retry
    assert not list(tmp_path.glob("*.so"))  # nothing half-built left behind


def test_builds_once_into_the_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(fused, "_library", None)
    monkeypatch.setenv("DKKT_CACHE_DIR", str(tmp_path))
    lib = fused.load_library()
    built = list(tmp_path.glob("convnet_fused-*.so"))
    assert len(built) == 1 and fused.load_library() is lib
    monkeypatch.setattr(fused, "_library", None)  # as a new process: loads the built file, compiles nothing

    def no_compiler(*args, **kwargs):
        raise AssertionError("compiled again")

    monkeypatch.setattr(fused.subprocess, "run", no_compiler)
    fused.load_library()
    assert list(tmp_path.glob("convnet_fused-*.so")) == built


def test_corrupt_cached_library_names_the_file(monkeypatch, tmp_path):
    monkeypatch.setattr(fused, "_library", None)
    monkeypatch.setenv("DKKT_CACHE_DIR", str(tmp_path / "good"))
    fused.load_library()
    name = next((tmp_path / "good").glob("convnet_fused-*.so")).name
    bad = tmp_path / "bad" / name  # the same key in another folder (never overwrite a loaded file)
    bad.parent.mkdir()
    bad.write_bytes(b"not a shared library")
    monkeypatch.setattr(fused, "_library", None)
    monkeypatch.setenv("DKKT_CACHE_DIR", str(bad.parent))
    with pytest.raises(FusedKernelError, match=f"cannot load {bad}.*delete it to rebuild"):
        fused.load_library()
    monkeypatch.setenv("DKKT_CACHE_DIR", str(bad))  # a file, not a folder
    with pytest.raises(FusedKernelError, match="set DKKT_CACHE_DIR to a writable folder"):
        fused.load_library()
