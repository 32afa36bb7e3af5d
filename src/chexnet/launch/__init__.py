"""Launchers: local multi-process (torch elastic, as torchrun) and Spark (TorchDistributor)."""
