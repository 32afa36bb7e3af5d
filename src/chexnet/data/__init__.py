"""Data layer: NIH metadata and splits, image decoding, the uint8 cache, datasets, synthetic data."""
