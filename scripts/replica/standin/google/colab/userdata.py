"""Colab's secrets API (google/colab/userdata.py): the same names, checks and exceptions.

On Colab the secrets come from the notebook's Secrets panel; here from a JSON file
{"NAME": "value"} named by LLMOPS_REPLICA_SECRETS (none when unset), each with notebook
access. A missing secret raises SecretNotFoundError, as on Colab.
"""

import json
import os
import re

from google.colab import errors

SECRETS_ENV = "LLMOPS_REPLICA_SECRETS"


class NotebookAccessError(Exception):
    """The notebook has no access to the secret."""

    def __init__(self, key):
        super().__init__(f"Notebook does not have access to secret {key}")


class SecretNotFoundError(errors.Error):
    """The secret does not exist."""

    def __init__(self, key):
        super().__init__(f"Secret {key} does not exist.")


class TimeoutException(errors.Error):
    """Colab raises it when the Colab UI does not answer (never here)."""

    def __init__(self, key):
        super().__init__(
            f"Requesting secret {key} timed out. Secrets can only be fetched when"
            " running from the Colab UI."
        )


def _secrets() -> dict:
    path = os.environ.get(SECRETS_ENV)
    if not path:
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def get(key):
    """The value of the secret `key`, as Colab's `userdata.get` returns it."""
    if not key or not isinstance(key, str):
        raise ValueError("Please enter a valid secret name")
    if re.search(r"\s", key):
        raise ValueError("Secret name cannot contain spaces or whitespace")
    secrets = _secrets()
    if key not in secrets:
        raise SecretNotFoundError(key)
    return secrets[key]
