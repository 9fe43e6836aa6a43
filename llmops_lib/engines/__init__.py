"""Engines: llama.cpp, transformers, SetFit, server processes and OpenAI-compatible clients."""
