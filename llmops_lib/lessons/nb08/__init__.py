"""Notebook 08's own code (notebooks/08_evaluation_and_drift.ipynb)."""
