"""`python -m llmops_lib.llama_cpp_server ARGS`: llama_cpp.server, message contents kept plain.

llama_cpp.server renders the chat template and tokenizes the whole prompt with special
tokens parsed, so a user who types `<|im_end|>` closes their own turn and can write the
assistant's (prompt injection through control tokens). This launcher is the stock server
with one change: every model it loads gets the course's chat handler
(llamacpp.plain_chat_handler), which tokenizes each message content as plain text.
ARGS are llama_cpp.server's own.
"""

from __future__ import annotations

from typing import Any

from .llamacpp import chat_formatter, plain_chat_handler


def main() -> None:
    from llama_cpp.server import model
    from llama_cpp.server.__main__ import main as serve

    load = model.LlamaProxy.load_llama_from_model_settings

    def load_plain(settings: Any) -> Any:
        llm = load(settings)
        if llm.chat_handler is None:  # a multimodal handler of the settings is kept as is
            llm.chat_handler = plain_chat_handler(chat_formatter(llm))
        return llm

    model.LlamaProxy.load_llama_from_model_settings = staticmethod(load_plain)
    serve()


if __name__ == "__main__":
    main()
