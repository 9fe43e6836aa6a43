"""llama.cpp's own programs run on a GGUF file (llama-bench, llama-quantize, ...)."""
