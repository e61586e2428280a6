"""StaticCompiled: pads short chunks to one shape for the compiled call, cuts the output back,
and never pads when disabled (the compiled paths' own equality tests are in test_training.py
and losses/test_dm.py)."""
import torch

from dkkt_plugin.cpu.compiled import StaticCompiled


def test_pads_tensor_arguments_and_cuts_the_output(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)  # the call path, without compiling
    seen = []

    def fn(x, y, scale):
        seen.append((x.shape[0], y.shape[0]))
        return x * scale + y[:, None]

    f = StaticCompiled(fn, "test", "eagerly")
    x, y = torch.ones(3, 2), torch.arange(3.0)
    out = f(x, y, 2.0, pad_to=5)
    assert seen == [(5, 5)] and torch.equal(out, x * 2 + y[:, None])
    f(x, y, 2.0)  # no pad_to: the shape as given
    assert seen[-1] == (3, 3)
    disabled = StaticCompiled(fn, "test", "eagerly", enabled=False)
    assert torch.equal(disabled(x, y, 2.0, pad_to=5), out) and seen[-1] == (3, 3) and disabled.compiled is None
