"""chexnet: train, test and tune CheXNet chest X-ray classifiers with data-parallel training."""

__version__ = "0.1.0"
