"""Notebook 05's own code (notebooks/05_conversations.ipynb)."""
