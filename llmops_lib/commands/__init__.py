"""Commands: what `python -m llmops_lib.commands.<name>` runs."""
