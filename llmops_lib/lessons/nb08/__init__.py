"""Notebook 08's own code (notebooks/08_evaluation.ipynb)."""
