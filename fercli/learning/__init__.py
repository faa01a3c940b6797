"""Models, training, datasets, tuning and metrics."""
