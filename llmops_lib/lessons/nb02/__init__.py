"""Notebook 02's own code (notebooks/02_present_quantized_llama.ipynb)."""
