"""The public API: every name a user imports from ``dkkt_plugin``, with a compatible signature.

The snapshot below fails the test when a public name disappears, or when one of its parameters
disappears, is renamed, changes kind (positional / keyword) or changes its default. New optional
parameters are allowed (they break no caller). Update the snapshot only for a deliberate change.
"""
import importlib
import inspect

import pytest

import dkkt_plugin

SIGNATURES = {
    '__version__': None,
    'DKKTLoss': [('model', 'POSITIONAL_OR_KEYWORD', ''), ('num_images', 'POSITIONAL_OR_KEYWORD', ''), ('config', 'POSITIONAL_OR_KEYWORD', 'None'), ('augment', 'KEYWORD_ONLY', 'None'), ('param_filter', 'KEYWORD_ONLY', 'None'), ('overrides', 'VAR_KEYWORD', '')],
    'DKKTConfig': [('alpha', 'POSITIONAL_OR_KEYWORD', 'None'), ('distance', 'POSITIONAL_OR_KEYWORD', "'cos'"), ('primal', 'POSITIONAL_OR_KEYWORD', "'boundary'"), ('multiplier', 'POSITIONAL_OR_KEYWORD', "'log'"), ('lambda_init', 'POSITIONAL_OR_KEYWORD', '1.0'), ('params', 'POSITIONAL_OR_KEYWORD', "'classifier'"), ('scale', 'POSITIONAL_OR_KEYWORD', "'none'"), ('tv_weight', 'POSITIONAL_OR_KEYWORD', '0.0'), ('norm_weight', 'POSITIONAL_OR_KEYWORD', '0.0')],
    'DKKTTerms': [('total', 'POSITIONAL_OR_KEYWORD', ''), ('primal', 'POSITIONAL_OR_KEYWORD', ''), ('stationarity', 'POSITIONAL_OR_KEYWORD', ''), ('tv', 'POSITIONAL_OR_KEYWORD', ''), ('norm', 'POSITIONAL_OR_KEYWORD', ''), ('floor', 'POSITIONAL_OR_KEYWORD', ''), ('accuracy', 'POSITIONAL_OR_KEYWORD', '')],
    'DMLoss': [('net', 'POSITIONAL_OR_KEYWORD', ''), ('augment', 'KEYWORD_ONLY', 'None'), ('reinit', 'KEYWORD_ONLY', 'True'), ('generator', 'KEYWORD_ONLY', 'None'), ('batched', 'KEYWORD_ONLY', 'True')],
    'GradientMatchingLoss': [('metric', 'POSITIONAL_OR_KEYWORD', "'ours'"), ('augment', 'KEYWORD_ONLY', 'None')],
    'DSA': [('strategy', 'POSITIONAL_OR_KEYWORD', "'color_crop_cutout_flip_scale_rotate'"), ('mode', 'KEYWORD_ONLY', "'one'"), ('config', 'KEYWORD_ONLY', 'DSAConfig(scale=1.2, rotate_deg=15.0, flip_p=0.5, brightness=1.0, saturation=2.0, contrast=0.5, crop_ratio=0.125, cutout_ratio=0.5)'), ('generator', 'KEYWORD_ONLY', 'None'), ('seed', 'KEYWORD_ONLY', 'None')],
    'DSAConfig': [('scale', 'POSITIONAL_OR_KEYWORD', '1.2'), ('rotate_deg', 'POSITIONAL_OR_KEYWORD', '15.0'), ('flip_p', 'POSITIONAL_OR_KEYWORD', '0.5'), ('brightness', 'POSITIONAL_OR_KEYWORD', '1.0'), ('saturation', 'POSITIONAL_OR_KEYWORD', '2.0'), ('contrast', 'POSITIONAL_OR_KEYWORD', '0.5'), ('crop_ratio', 'POSITIONAL_OR_KEYWORD', '0.125'), ('cutout_ratio', 'POSITIONAL_OR_KEYWORD', '0.5')],
    'DSADraw': [('family', 'POSITIONAL_OR_KEYWORD', ''), ('brightness', 'POSITIONAL_OR_KEYWORD', ''), ('saturation', 'POSITIONAL_OR_KEYWORD', ''), ('contrast', 'POSITIONAL_OR_KEYWORD', ''), ('scale', 'POSITIONAL_OR_KEYWORD', ''), ('angle', 'POSITIONAL_OR_KEYWORD', ''), ('flip', 'POSITIONAL_OR_KEYWORD', ''), ('crop', 'POSITIONAL_OR_KEYWORD', ''), ('cutout', 'POSITIONAL_OR_KEYWORD', '')],
    'PracticalSubset': [('dataset', 'POSITIONAL_OR_KEYWORD', ''), ('pipc', 'POSITIONAL_OR_KEYWORD', "'all'"), ('seed', 'KEYWORD_ONLY', '0'), ('num_classes', 'KEYWORD_ONLY', 'None')],
    'ImageDataset': [('images', 'POSITIONAL_OR_KEYWORD', ''), ('targets', 'POSITIONAL_OR_KEYWORD', ''), ('classes', 'KEYWORD_ONLY', ''), ('mean', 'KEYWORD_ONLY', ''), ('std', 'KEYWORD_ONLY', ''), ('name', 'KEYWORD_ONLY', '')],
    'load_fashion_mnist': [('root', 'POSITIONAL_OR_KEYWORD', 'None'), ('train', 'POSITIONAL_OR_KEYWORD', 'True')],
    'load_cifar10': [('root', 'POSITIONAL_OR_KEYWORD', 'None'), ('train', 'POSITIONAL_OR_KEYWORD', 'True'), ('download', 'KEYWORD_ONLY', 'False')],
    'Pipc': [('args', 'VAR_POSITIONAL', ''), ('kwargs', 'VAR_KEYWORD', '')],
    'parse_pipc': [('value', 'POSITIONAL_OR_KEYWORD', '')],
    'ConvNet': [('channels', 'POSITIONAL_OR_KEYWORD', '3'), ('num_classes', 'POSITIONAL_OR_KEYWORD', '10'), ('image_size', 'POSITIONAL_OR_KEYWORD', '32'), ('width', 'KEYWORD_ONLY', '128'), ('depth', 'KEYWORD_ONLY', '3'), ('norm', 'KEYWORD_ONLY', "'instancenorm'"), ('pooling', 'KEYWORD_ONLY', "'avg'"), ('generator', 'KEYWORD_ONLY', 'None'), ('device', 'KEYWORD_ONLY', 'None')],
    'load_edge_model': [('path', 'POSITIONAL_OR_KEYWORD', ''), ('device', 'POSITIONAL_OR_KEYWORD', 'None')],
    'save_edge_model': [('path', 'POSITIONAL_OR_KEYWORD', ''), ('model', 'POSITIONAL_OR_KEYWORD', ''), ('meta', 'POSITIONAL_OR_KEYWORD', '')],
    'packaged_edge_model': [],
    'pretrain': [('cfg', 'POSITIONAL_OR_KEYWORD', ''), ('out', 'POSITIONAL_OR_KEYWORD', ''), ('device', 'KEYWORD_ONLY', "'cpu'"), ('command', 'KEYWORD_ONLY', "''")],
    'PretrainConfig': [('dataset', 'POSITIONAL_OR_KEYWORD', "'fashion_mnist'"), ('data_root', 'POSITIONAL_OR_KEYWORD', 'None'), ('width', 'POSITIONAL_OR_KEYWORD', '128'), ('depth', 'POSITIONAL_OR_KEYWORD', '3'), ('epochs', 'POSITIONAL_OR_KEYWORD', '3'), ('batch_size', 'POSITIONAL_OR_KEYWORD', '256'), ('lr', 'POSITIONAL_OR_KEYWORD', '0.05'), ('momentum', 'POSITIONAL_OR_KEYWORD', '0.9'), ('weight_decay', 'POSITIONAL_OR_KEYWORD', '0.005'), ('seed', 'POSITIONAL_OR_KEYWORD', '0'), ('refit_classifier', 'POSITIONAL_OR_KEYWORD', 'False')],
    'noise_init': [('ipc', 'POSITIONAL_OR_KEYWORD', ''), ('num_classes', 'KEYWORD_ONLY', ''), ('image_shape', 'KEYWORD_ONLY', ''), ('dataset', 'KEYWORD_ONLY', 'None'), ('model', 'KEYWORD_ONLY', 'None'), ('generator', 'KEYWORD_ONLY', 'None'), ('device', 'KEYWORD_ONLY', 'None'), ('dtype', 'KEYWORD_ONLY', 'torch.float32')],
    'real_init': [('ipc', 'POSITIONAL_OR_KEYWORD', ''), ('num_classes', 'KEYWORD_ONLY', ''), ('image_shape', 'KEYWORD_ONLY', ''), ('dataset', 'KEYWORD_ONLY', 'None'), ('model', 'KEYWORD_ONLY', 'None'), ('generator', 'KEYWORD_ONLY', 'None'), ('device', 'KEYWORD_ONLY', 'None'), ('dtype', 'KEYWORD_ONLY', 'torch.float32')],
    'dsv_init': [('ipc', 'POSITIONAL_OR_KEYWORD', ''), ('num_classes', 'KEYWORD_ONLY', ''), ('image_shape', 'KEYWORD_ONLY', ''), ('dataset', 'KEYWORD_ONLY', 'None'), ('model', 'KEYWORD_ONLY', 'None'), ('generator', 'KEYWORD_ONLY', 'None'), ('device', 'KEYWORD_ONLY', 'None'), ('dtype', 'KEYWORD_ONLY', 'torch.float32'), ('config', 'KEYWORD_ONLY', 'None')],
    'distill': [('method', 'POSITIONAL_OR_KEYWORD', "'dm_dkkt'"), ('out_dir', 'POSITIONAL_OR_KEYWORD', "'runs/distill'"), ('overrides', 'KEYWORD_ONLY', 'None'), ('device', 'KEYWORD_ONLY', "'auto'"), ('resume', 'KEYWORD_ONLY', 'False'), ('checkpoint_every', 'KEYWORD_ONLY', '50'), ('data', 'KEYWORD_ONLY', 'None'), ('command', 'KEYWORD_ONLY', "''"), ('settings', 'VAR_KEYWORD', '')],
    'run_distillation': [('method', 'POSITIONAL_OR_KEYWORD', ''), ('cfg', 'POSITIONAL_OR_KEYWORD', ''), ('out_dir', 'POSITIONAL_OR_KEYWORD', ''), ('device', 'KEYWORD_ONLY', "'cpu'"), ('resume', 'KEYWORD_ONLY', 'False'), ('checkpoint_every', 'KEYWORD_ONLY', '50'), ('data', 'KEYWORD_ONLY', 'None'), ('command', 'KEYWORD_ONLY', "''")],
    'build_config': [('method', 'POSITIONAL_OR_KEYWORD', ''), ('overrides', 'POSITIONAL_OR_KEYWORD', 'None'), ('kwargs', 'VAR_KEYWORD', '')],
    'RunResult': [('out_dir', 'POSITIONAL_OR_KEYWORD', ''), ('images', 'POSITIONAL_OR_KEYWORD', ''), ('labels', 'POSITIONAL_OR_KEYWORD', ''), ('record', 'POSITIONAL_OR_KEYWORD', '')],
    'DistillConfig': [('dataset', 'POSITIONAL_OR_KEYWORD', "'fashion_mnist'"), ('data_root', 'POSITIONAL_OR_KEYWORD', 'None'), ('ipc', 'POSITIONAL_OR_KEYWORD', '1'), ('pipc', 'POSITIONAL_OR_KEYWORD', '10'), ('iterations', 'POSITIONAL_OR_KEYWORD', '1000'), ('lr_img', 'POSITIONAL_OR_KEYWORD', '1.0'), ('momentum', 'POSITIONAL_OR_KEYWORD', '0.5'), ('batch_real', 'POSITIONAL_OR_KEYWORD', '256'), ('init', 'POSITIONAL_OR_KEYWORD', "'auto'"), ('edge_model', 'POSITIONAL_OR_KEYWORD', 'None'), ('net_width', 'POSITIONAL_OR_KEYWORD', '128'), ('net_depth', 'POSITIONAL_OR_KEYWORD', '3'), ('seed', 'POSITIONAL_OR_KEYWORD', '0')],
    'DistillData': [('real', 'POSITIONAL_OR_KEYWORD', ''), ('real_labels', 'POSITIONAL_OR_KEYWORD', ''), ('num_classes', 'POSITIONAL_OR_KEYWORD', ''), ('mean', 'POSITIONAL_OR_KEYWORD', ''), ('std', 'POSITIONAL_OR_KEYWORD', ''), ('edge_model', 'POSITIONAL_OR_KEYWORD', 'None')],
    'Method': [('config', 'POSITIONAL_OR_KEYWORD', ''), ('data', 'POSITIONAL_OR_KEYWORD', ''), ('device', 'KEYWORD_ONLY', "'cpu'")],
    'load_synthetic': [('path', 'POSITIONAL_OR_KEYWORD', '')],
    'save_synthetic': [('path', 'POSITIONAL_OR_KEYWORD', ''), ('images', 'POSITIONAL_OR_KEYWORD', ''), ('labels', 'POSITIONAL_OR_KEYWORD', ''), ('meta', 'VAR_KEYWORD', '')],
    'append_evaluation': [('run_dir', 'POSITIONAL_OR_KEYWORD', ''), ('evaluation', 'POSITIONAL_OR_KEYWORD', ''), ('command', 'KEYWORD_ONLY', "''"), ('device', 'KEYWORD_ONLY', 'None')],
    'read_evaluations': [('run_dir', 'POSITIONAL_OR_KEYWORD', '')],
    'evaluate': [('synthetic', 'POSITIONAL_OR_KEYWORD', ''), ('labels', 'POSITIONAL_OR_KEYWORD', 'None'), ('dataset', 'KEYWORD_ONLY', 'None'), ('data_root', 'KEYWORD_ONLY', 'None'), ('protocol', 'KEYWORD_ONLY', "'dm'"), ('epochs', 'KEYWORD_ONLY', 'None'), ('num_eval', 'KEYWORD_ONLY', '5'), ('seed', 'KEYWORD_ONLY', '0'), ('device', 'KEYWORD_ONLY', "'auto'"), ('augmentation', 'KEYWORD_ONLY', 'None')],
    'evaluate_synthetic': [('images', 'POSITIONAL_OR_KEYWORD', ''), ('labels', 'POSITIONAL_OR_KEYWORD', ''), ('test_images', 'POSITIONAL_OR_KEYWORD', ''), ('test_labels', 'POSITIONAL_OR_KEYWORD', ''), ('protocol', 'KEYWORD_ONLY', "'dm'"), ('num_eval', 'KEYWORD_ONLY', '5'), ('seed', 'KEYWORD_ONLY', '0'), ('device', 'KEYWORD_ONLY', 'None'), ('width', 'KEYWORD_ONLY', '128'), ('depth', 'KEYWORD_ONLY', '3'), ('epochs', 'KEYWORD_ONLY', 'None'), ('num_classes', 'KEYWORD_ONLY', 'None'), ('augmentation', 'KEYWORD_ONLY', 'None'), ('desc', 'KEYWORD_ONLY', "'evaluate'")],
    'get_protocol': [('name', 'POSITIONAL_OR_KEYWORD', ''), ('epochs', 'POSITIONAL_OR_KEYWORD', 'None')],
    'EvalProtocol': [('name', 'POSITIONAL_OR_KEYWORD', ''), ('train', 'POSITIONAL_OR_KEYWORD', ''), ('full_epochs', 'POSITIONAL_OR_KEYWORD', 'None'), ('notes', 'POSITIONAL_OR_KEYWORD', "''")],
    'EvalResult': [('protocol', 'POSITIONAL_OR_KEYWORD', ''), ('accuracies', 'POSITIONAL_OR_KEYWORD', '<factory>'), ('seeds', 'POSITIONAL_OR_KEYWORD', '<factory>'), ('seconds', 'POSITIONAL_OR_KEYWORD', '0.0')],
    'TrainConfig': [('epochs', 'POSITIONAL_OR_KEYWORD', '300'), ('batch_size', 'POSITIONAL_OR_KEYWORD', '256'), ('lr', 'POSITIONAL_OR_KEYWORD', '0.01'), ('momentum', 'POSITIONAL_OR_KEYWORD', '0.9'), ('weight_decay', 'POSITIONAL_OR_KEYWORD', '0.0005'), ('optimizer', 'POSITIONAL_OR_KEYWORD', "'sgd'"), ('sam_rho', 'POSITIONAL_OR_KEYWORD', '0.05'), ('lr_schedule', 'POSITIONAL_OR_KEYWORD', "'step'"), ('augment', 'POSITIONAL_OR_KEYWORD', "''"), ('augmentation', 'POSITIONAL_OR_KEYWORD', "'dsa'")],
    'train_classifier': [('model', 'POSITIONAL_OR_KEYWORD', ''), ('images', 'POSITIONAL_OR_KEYWORD', ''), ('labels', 'POSITIONAL_OR_KEYWORD', ''), ('cfg', 'POSITIONAL_OR_KEYWORD', ''), ('generator', 'KEYWORD_ONLY', ''), ('desc', 'KEYWORD_ONLY', "'train'"), ('on_epoch', 'KEYWORD_ONLY', 'None')],
    'accuracy': [('model', 'POSITIONAL_OR_KEYWORD', ''), ('images', 'POSITIONAL_OR_KEYWORD', ''), ('labels', 'POSITIONAL_OR_KEYWORD', ''), ('batch_size', 'POSITIONAL_OR_KEYWORD', 'None')],
    'provenance': [('command', 'KEYWORD_ONLY', "''"), ('device', 'KEYWORD_ONLY', 'None')],
    'resolve_device': [('name', 'POSITIONAL_OR_KEYWORD', "'auto'")],
    'DkktError': None,
    'ConfigError': None,
    'DatasetError': None,
    'PluginError': None,
    'UnknownComponentError': None,
    'CheckpointError': None,
    'NonFiniteLossError': None,
}


def test_all_is_exactly_the_snapshot():
    assert sorted(dkkt_plugin.__all__) == sorted(SIGNATURES)


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_public_name_keeps_its_signature(name):
    obj = getattr(dkkt_plugin, name)  # AttributeError: the name disappeared
    expected = SIGNATURES[name]
    if expected is None:
        return
    params = {p.name: p for p in inspect.signature(obj).parameters.values()}
    for pname, kind, default in expected:
        assert pname in params, f"{name} lost parameter {pname!r}"
        p = params[pname]
        assert p.kind.name == kind, f"{name}({pname}) changed kind {kind} -> {p.kind.name}"
        got = "" if p.default is inspect.Parameter.empty else repr(p.default)
        assert got == default, f"{name}({pname}) changed default {default} -> {got}"
    new_required = [p.name for p in params.values() if p.name not in {e[0] for e in expected}
                    and p.default is inspect.Parameter.empty
                    and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    assert not new_required, f"{name} gained required parameters {new_required} (breaks callers)"


# Public modules whose names the README documents.
MODULES = {
    "dkkt_plugin.registry": ["discover", "names", "get", "load", "create", "GROUPS", "PROTOCOLS", "AUTOLOAD_ENV"],
    "dkkt_plugin.config": ["Pipc", "parse_pipc", "config_fields", "build", "add_arguments", "flatten"],
    "dkkt_plugin.losses.kkt": ["select_parameters", "per_sample_grads", "fit_multipliers_nnls", "margins"],
    "dkkt_plugin.methods": ["DistillConfig", "AugmentConfig", "DM", "DMConfig", "DMStar", "DC", "GMConfig",
                            "DSAMethod", "DSAConfig", "DSV", "DSVMethodConfig", "DMDKKT", "DKKTMethodConfig"],
    "dkkt_plugin.cli": ["main"],
    "dkkt_plugin.viz": ["image_grid", "save_png", "save_image_grid"],
}


@pytest.mark.parametrize("module,names", sorted(MODULES.items()))
def test_module_names_exist(module, names):
    mod = importlib.import_module(module)
    missing = [n for n in names if not hasattr(mod, n)]
    assert not missing, f"{module} lost public names {missing}"


def test_the_package_imports_its_names_on_first_use():
    """``import dkkt_plugin`` loads no torch; each public name loads its module when first used, and
    ``pretrain`` / ``provenance`` stay the functions after their modules are imported."""
    import subprocess
    import sys

    code = ("import sys; import dkkt_plugin; no_torch = 'torch' not in sys.modules; "
            "import dkkt_plugin.pretrain, dkkt_plugin.provenance; from dkkt_plugin import DKKTLoss, pretrain; "
            "print(no_torch, callable(dkkt_plugin.pretrain) and not hasattr(dkkt_plugin.pretrain, '__path__'), "
            "dkkt_plugin.provenance.__module__, pretrain.__module__, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True", "dkkt_plugin.provenance", "dkkt_plugin.pretrain", "True"]
    assert set(dir(dkkt_plugin)) >= set(dkkt_plugin.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        dkkt_plugin.nope
