"""Training data: case sampling (1/sqrt(n)), patch extraction, augmentation, batches."""
