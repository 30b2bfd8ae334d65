"""Microscopy helpers: synthetic fluorescence data (:mod:`ambient_med.microscopy.synthetic`)."""

from ambient_med.microscopy.synthetic import poisson_gaussian_noise, synthetic_cells

__all__ = ["poisson_gaussian_noise", "synthetic_cells"]
