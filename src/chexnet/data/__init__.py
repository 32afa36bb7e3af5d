"""Data layer: sources (one per data set: folder -> metadata table), patient-wise splits, image decoding, the uint8
cache (format + reader in cache, writer in prepare), the training dataset, synthetic NIH-format data."""
