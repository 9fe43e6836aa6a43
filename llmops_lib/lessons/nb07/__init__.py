"""Notebook 07's own code (notebooks/07_cpu_vs_gpu.ipynb)."""
