"""FID-style evaluation: metrics on features (`fid`), the FID Inception-v3 (`inception`), and feature spaces,
reference statistics and `evaluate_samples` (`features`)."""
