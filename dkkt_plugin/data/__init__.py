"""Data: real image datasets in memory, the practical pipc-per-class subset, CIFAR fixtures."""
from .cifar_format import write_cifar10
from .practical import PracticalSubset, validation_indices
from .sources import ImageDataset, load_cifar10, load_fashion_mnist

__all__ = ["ImageDataset", "load_fashion_mnist", "load_cifar10", "PracticalSubset",
           "validation_indices", "write_cifar10"]
