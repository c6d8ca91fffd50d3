"""Gaussian statistics of feature sets and the Frechet distance between them (FID, FVD)."""

from __future__ import annotations

import warnings

import numpy as np
from scipy.linalg import LinAlgWarning, sqrtm

from diffheads.errors import DiffheadsError

# Added to both covariances when sqrtm of their product is not finite (pytorch-fid, Laughing-Matters).
SINGULAR_OFFSET = 1e-6


def gaussian_stats(features: np.ndarray, unbiased: bool) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of features (N, D) in float64; covariance over N-1 if unbiased, else N."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise DiffheadsError(f"features must be a (samples, dims) array, got shape {x.shape}")
    n = x.shape[0]
    if n < 2:
        raise DiffheadsError(f"a covariance needs at least 2 samples, got {n}: evaluate more images or clips")
    mu = x.mean(axis=0)
    # Centring first avoids the cancellation of E[xx^T] - mu mu^T; the references differ only by rounding.
    centred = x - mu
    sigma = centred.T @ centred / (n - 1 if unbiased else n)
    return mu, sigma


def _trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr(real(sqrtm(sigma1 @ sigma2))), or NaN when sqrtm is not finite."""
    with warnings.catch_warnings():
        # Singular products are expected when samples < dims; the references silence this (disp=False).
        warnings.simplefilter("ignore", LinAlgWarning)
        root = sqrtm(sigma1 @ sigma2)
    if not np.isfinite(root).all():
        return float("nan")
    return float(np.trace(np.real(root)))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1-mu2||^2 + Tr(s1 + s2 - 2 sqrtm(s1 s2)) (Dowson & Landau 1982; FID, Heusel et al. 2017, eq. 6)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"shape mismatch: mu {mu1.shape} {mu2.shape}, sigma {sigma1.shape} {sigma2.shape}")
    diff = mu1 - mu2
    tr_root = _trace_sqrt_product(sigma1, sigma2)
    if not np.isfinite(tr_root):
        # Only the square root sees the offset; the traces stay those of the estimates (as pytorch-fid does).
        warnings.warn(
            f"sqrtm of the covariance product is not finite; adding {SINGULAR_OFFSET}*I to both covariances",
            stacklevel=2,
        )
        offset = SINGULAR_OFFSET * np.eye(d)
        tr_root = _trace_sqrt_product(sigma1 + offset, sigma2 + offset)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_root)
