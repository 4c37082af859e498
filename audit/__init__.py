"""DP-SGD training, utility, the per-epsilon risk profile and the PDF report."""
