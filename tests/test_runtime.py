"""The speed switch (dkkt_plugin.runtime): where the two settings come from, what auto means, what
a method that needs fp32 gets, and the settings of earlier versions in old checkpoints."""
from pathlib import Path

import pytest
import torch

from dkkt_plugin import runtime
from dkkt_plugin.errors import ConfigError


@pytest.fixture(autouse=True)
def clean(monkeypatch):
    """No speed setting from the environment or an earlier configure()."""
    monkeypatch.delenv(runtime.PRECISION_ENV, raising=False)
    monkeypatch.delenv(runtime.BACKEND_ENV, raising=False)
    runtime.reset()
    yield
    runtime.reset()


def test_defaults_then_environment_then_configure_then_use(monkeypatch):
    assert runtime.settings() == runtime.Settings("auto", "cpu")
    monkeypatch.setenv("DKKT_PRECISION", " FP32 ")
    monkeypatch.setenv("DKKT_BACKEND", "torch")
    assert runtime.settings() == runtime.Settings("fp32", "torch")
    assert runtime.configure(precision="bf16") == runtime.Settings("bf16", "torch")
    with runtime.use(backend="compile") as inside:
        assert inside == runtime.settings() == runtime.Settings("bf16", "compile")
        with runtime.use(precision="fp32"):
            assert runtime.settings() == runtime.Settings("fp32", "compile")
        assert runtime.settings() == runtime.Settings("bf16", "compile")
    assert runtime.settings() == runtime.Settings("bf16", "torch")
    runtime.reset()
    assert runtime.settings() == runtime.Settings("fp32", "torch")


def test_bad_values_fail_with_one_line_naming_the_fix(monkeypatch):
    with pytest.raises(ConfigError, match=r"^precision 'fp16' is not a precision; choose one of auto, bf16, fp32 "
                                          r"\(e.g. --precision fp32 or DKKT_PRECISION=fp32\)$"):
        with runtime.use(precision="fp16"):
            pass
    with pytest.raises(ConfigError, match="backend 'cuda' is not a backend; choose one of cpu, torch, compile"):
        runtime.configure(backend="cuda")
    monkeypatch.setenv("DKKT_BACKEND", "fused")
    with pytest.raises(ConfigError, match=r"^\$DKKT_BACKEND='fused' is not a backend; .*DKKT_BACKEND=compile\)$"):
        runtime.settings()
    assert runtime.settings(environ={}) == runtime.Settings("auto", "cpu")


def test_auto_as_fp32_changes_auto_only():
    for asked, inside in (("auto", "fp32"), ("bf16", "bf16"), ("fp32", "fp32")):
        with runtime.use(precision=asked), runtime.auto_as_fp32() as speed:
            assert speed.precision == runtime.settings().precision == inside
    with runtime.auto_as_fp32(enabled=False):
        assert runtime.settings().precision == "auto"


@pytest.mark.parametrize("native", [True, False])
def test_runs_bf16_follows_the_precision_and_the_hardware(native, monkeypatch):
    monkeypatch.setattr(runtime, "native_bf16", lambda device: native)
    x = torch.zeros(2)
    assert runtime.runs_bf16(x, "auto") is native
    assert runtime.runs_bf16(x, "bf16") and not runtime.runs_bf16(x, "fp32")
    assert not runtime.runs_bf16(x.double(), "bf16")  # a float64 model stays float64
    with runtime.use(precision="auto"):
        assert runtime.runs_bf16(x) is native
    with runtime.use(precision="fp32"):
        assert not runtime.runs_bf16(x)


def test_native_bf16_matches_the_cpu_flags():
    # oneDNN's answer against the kernel's own list of instruction sets (x86 Linux)
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        pytest.skip("no x86 /proc/cpuinfo flags here")
    has_bf16 = any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))
    if not torch.backends.mkldnn.is_available():
        pytest.skip("torch without oneDNN")
    assert runtime.native_bf16("cpu") is has_bf16
    assert runtime.native_bf16("meta") is False


def test_a_method_that_needs_fp32_builds_its_losses_in_fp32():
    from dkkt_plugin.methods import DMDKKT, DSV, DistillData
    from dkkt_plugin.nets import ConvNet
    from dkkt_plugin.settings import DKKTMethodConfig, DSVMethodConfig

    edge = ConvNet(1, 2, 8, width=4, depth=1, generator=torch.Generator().manual_seed(0)).eval()
    data = DistillData(torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 0, 1]), 2, (0.0,), (1.0,), edge)
    small = dict(ipc=1, pipc=2, net_width=4, net_depth=1, edge_model=None)
    assert DSV.needs_fp32 and not DMDKKT.needs_fp32
    for precision, dsv, dm_dkkt in (("auto", "fp32", "auto"), ("bf16", "bf16", "bf16"), ("fp32", "fp32", "fp32")):
        with runtime.use(precision=precision):
            a = DSV(DSVMethodConfig(**small), data)
            b = DMDKKT(DKKTMethodConfig(**small, beta=0.5), data)
        assert a.dkkt.speed.precision == dsv and a.runtime_record()["needs_fp32"]
        assert b.dkkt.speed.precision == b.dm.speed.precision == dm_dkkt
        assert runtime.settings().precision == "auto"  # the method's reading stays inside its setup


def test_retired_settings_leave_config_dicts_and_are_named(monkeypatch):
    old = {"ipc": 10, "real_precision": "fp32", "compile_real": False, "fused_real": True, "fused_syn": False,
           "dkkt": {"alpha": None, "precision": "auto", "distance": "cos"}, "augment": {"name": "dsa"}}
    kept, found = runtime.retired_settings(old)
    assert kept == {"ipc": 10, "dkkt": {"alpha": None, "distance": "cos"}, "augment": {"name": "dsa"}}
    assert found == {"real_precision": "fp32", "compile_real": False, "fused_real": True, "fused_syn": False,
                     "dkkt.precision": "auto"}
    note = runtime.retired_note(found)
    assert "real_precision='fp32': --precision fp32" in note and "fused_syn=False: --backend torch" in note
    assert "fused_real" not in note and "dkkt.precision" not in note  # at their former defaults
    assert runtime.retired_note({"fused_syn": True, "real_precision": "auto"}) is None



def _old_checkpoint(path, retired: dict) -> None:
    """Rewrite a run's checkpoint as an earlier version wrote it: its config and fingerprint also
    hold the speed keys that the process-wide settings replaced (``dkkt.precision`` nested)."""
    from dkkt_plugin.fileio import load_torch, save_torch

    state = load_torch(path, "run checkpoint", "dkkt-run/1", "")
    for key in ("config", "fingerprint"):
        node = state[key]
        for path_, value in retired.items():
            *parents, leaf = path_.split(".")
            target = node
            for part in parents:
                target = target[part]
            target[leaf] = value
    save_torch(state, path)


@pytest.mark.parametrize("method,retired", [
    ("dm", {"real_precision": "auto", "compile_real": False, "fused_real": True, "fused_syn": True}),
    ("dm_dkkt", {"real_precision": "auto", "compile_real": False, "fused_real": True, "fused_syn": True,
                 "dkkt.precision": "auto"}),
    ("dsv", {"fused_syn": False, "dkkt.precision": "auto"}),
])
def test_a_checkpoint_with_the_retired_speed_keys_resumes(method, retired, tmp_path):
    import warnings

    from dkkt_plugin.engine import build_config, run_distillation
    from dkkt_plugin.methods import DistillData
    from dkkt_plugin.nets import ConvNet

    g = torch.Generator().manual_seed(0)
    edge = ConvNet(1, 2, 8, width=4, depth=1, generator=torch.Generator().manual_seed(1)).eval()
    data = DistillData(torch.randn(8, 1, 8, 8, generator=g), torch.tensor([0, 1] * 4), 2, (0.0,), (1.0,), edge)
    small = dict(ipc=1, pipc=4, net_width=4, net_depth=1)
    run_distillation(method, build_config(method, iterations=2, **small), tmp_path, data=data, checkpoint_every=1)
    _old_checkpoint(tmp_path / "checkpoint.pt", retired)
    note = runtime.retired_note(retired)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_distillation(method, build_config(method, iterations=3, **small), tmp_path, data=data,
                                  resume=True)
    assert result.record["iterations"] == 3 and result.record["iterations_run"] == 1
    said = [str(w.message) for w in caught if "speed settings" in str(w.message)]
    assert (said == []) if note is None else (len(said) == 1 and "--backend torch" in said[0])
    assert result.record["runtime"]["passes"]  # the record holds what ran
