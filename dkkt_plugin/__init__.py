"""dkkt-plugin: Deep-KKT loss and practical-setting dataset distillation for PyTorch."""
__version__ = "0.1.0"
