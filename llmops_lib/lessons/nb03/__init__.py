"""Notebook 03's own code (notebooks/03_future_multi_gpu_tgi.ipynb)."""
