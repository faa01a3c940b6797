"""Late fusion of finalized runs' softmax outputs (thesis 3.2.4): average, weighted by CV
accuracy, or max; shared by `fer fuse` and `fer predict --fusion`."""
from __future__ import annotations

import numpy as np

from ..core.errors import ConfigError

METHODS = ("average", "weighted", "max")


def fuse_scores(scores: list[np.ndarray], method: str,
                weights: list[float] | None = None) -> np.ndarray:
    """Fuse aligned (N, C) softmax arrays; rows stay distributions."""
    stack = np.stack(scores)  # (R, N, C)
    if method == "average":
        fused = stack.mean(axis=0)
    elif method == "weighted":
        w = np.asarray(weights, dtype=float)
        fused = np.tensordot(w / w.sum(), stack, axes=1)
    elif method == "max":
        fused = stack.max(axis=0)
        fused = fused / fused.sum(axis=1, keepdims=True)
    else:
        raise ConfigError(f"unknown fusion method {method!r}; choose from {', '.join(METHODS)}")
    return fused


def fusion_name(runs: tuple[str, ...], method: str) -> str:
    return "+".join(runs) + f"@{method}"
