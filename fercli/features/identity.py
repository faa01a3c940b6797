"""Identity normalisation: features relative to the sequence's own neutral onset.

With tens of training sequences a model learns who a person is as easily as what they
express. Posed sequences (BU-4DFE, CK+) open on the person's neutral face, so the mean
feature vector of a clip's first frames is a per-sequence baseline, and ``x - baseline``
carries the change, i.e. the expression. One rule serves every place that builds model
inputs: ``fer extract`` (the store's ``baselines``), training, ``fer predict`` (the video's
first face frames) and ``fer export``.
"""
from __future__ import annotations

import numpy as np

# Frames averaged into the baseline: few enough to stay in the neutral onset of a
# CK+ sequence (10-60 frames, DATA.md), enough to average out a blink.
BASELINE_FRAMES = 3
# `auto` turns normalisation on when at least this share of the clips has a neutral
# onset of BASELINE_FRAMES frames before the kept range (stills and apex-only crops: off).
AUTO_SHARE = 0.75


def onset_baseline(features: np.ndarray, n_frames: int = BASELINE_FRAMES) -> np.ndarray:
    """(F,) float32: the mean of the first ``n_frames`` rows of (T, F) features."""
    features = np.asarray(features, np.float32)
    if features.ndim != 2 or len(features) == 0:
        raise ValueError(f"baseline needs (T, F) features with T >= 1, got {features.shape}")
    return features[:n_frames].mean(axis=0)


def use_identity(mode: str, onset_lengths, n_frames: int = BASELINE_FRAMES) -> bool:
    """Resolve ``train.identity`` (onset | none | auto) from the clips' onset lengths (frames
    trim cut before the kept range): auto means onset when most clips have a neutral one."""
    if mode in ("onset", "none"):
        return mode == "onset"
    lengths = np.asarray(list(onset_lengths), float)
    return bool(lengths.size) and float(np.mean(lengths >= n_frames)) >= AUTO_SHARE
