"""Empirical attacks: imprint-layer gradient inversion under DP-SGD and membership inference."""
