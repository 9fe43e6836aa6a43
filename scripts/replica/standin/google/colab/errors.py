"""Colab's base error (google/colab/errors.py): huggingface_hub catches it around secrets."""


class Error(Exception):
    """Base class for all Colab errors."""
