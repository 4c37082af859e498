"""Reconstruction-robustness and membership-inference bounds for DP-SGD (pure numpy/scipy, no torch)."""
