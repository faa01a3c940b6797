"""Per-frame features: backbones, their weights, the feature store."""
