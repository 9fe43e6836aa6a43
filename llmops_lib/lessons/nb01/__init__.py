"""Notebook 01's own code (notebooks/01_past_encoder_classifier_cpu.ipynb)."""
