"""`python -m llmops_lib.commands.llama_cpp_server ARGS`: llama_cpp.server, message contents
kept plain.

llama_cpp.server renders the chat template and tokenizes the whole prompt with special
tokens parsed, so a user who types `<|im_end|>` closes their own turn and can write the
assistant's (prompt injection through control tokens). This launcher is the stock server
with two changes:

- every model it loads gets the course's chat handler (llamacpp.plain_chat_handler), which
  tokenizes each message content as plain text; so `--chat_format` (another handler, which
  would parse them again) is refused by name instead of silently overridden;
- chat requests are checked at the door (`check_chat`): the stock server answers 500 to
  OpenAI's content-part lists, `content: null` and unknown roles, generates to the end of
  the context for `max_tokens` 0 or -1 and for no messages at all, and refuses OpenAI's
  `response_format` {"type": "json_schema"}. Here text parts are joined, the JSON schema is
  passed on in llama-cpp-python's own spelling, and the rest is a 400 naming the field.

ARGS are llama_cpp.server's own.
"""

from __future__ import annotations

import json
from typing import Any

from ..core.errors import InputError
from ..engines.llamacpp import chat_formatter, plain_chat_handler

CHAT_PATH = "/v1/chat/completions"
ROLES = ("system", "user", "assistant", "tool", "function")  # what the stock server renders


def _text(i: int, content: object) -> str:
    """A message content as text: a string, or OpenAI's list of parts with text parts only."""
    if isinstance(content, str):
        return content
    if content is None:
        raise InputError(f"messages[{i}].content is null: send the text ('' for an empty turn).")
    if isinstance(content, list) and content:
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise InputError(
                    f"messages[{i}].content[{j}] is a {kind!r} part; this server reads text "
                    'parts only ({"type": "text", "text": ...}).'
                )
            if not isinstance(part.get("text"), str):
                raise InputError(f"messages[{i}].content[{j}].text must be a string.")
            texts.append(part["text"])
        return "\n".join(texts)
    raise InputError(
        f"messages[{i}].content is a {type(content).__name__}: send a string or a non-empty "
        "list of text parts."
    )


def _response_format(value: object) -> dict[str, Any]:
    """OpenAI's response_format in llama-cpp-python's spelling (json_object + schema)."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    if not isinstance(value, dict) or value.get("type") not in (
        "text",
        "json_object",
        "json_schema",
    ):
        raise InputError(
            "response_format must be {'type': 'text' | 'json_object' | 'json_schema', ...}."
        )
    if value["type"] != "json_schema":
        return value
    spec = value.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
        raise InputError("response_format.json_schema.schema must be a JSON schema (an object).")
    try:
        json_schema_to_gbnf(json.dumps(spec["schema"]))
    except Exception as err:  # the converter raises several kinds; the stock server would
        # silently fall back to "any JSON" instead
        raise InputError(
            f"response_format.json_schema.schema: llama.cpp cannot turn it into a grammar "
            f"({type(err).__name__}: {err})."
        ) from None
    return {"type": "json_object", "schema": spec["schema"]}


def check_chat(body: object) -> dict[str, Any]:
    """A chat completion request as the stock server can answer it, or InputError."""
    from llama_cpp.server.types import CreateChatCompletionRequest
    from pydantic import ValidationError

    if not isinstance(body, dict):
        raise InputError("The body must be a JSON object with 'messages'.")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InputError("messages: send a non-empty list of {'role': ..., 'content': ...}.")
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InputError(f"messages[{i}] is a {type(message).__name__}, not an object.")
        if message.get("role") not in ROLES:
            raise InputError(
                f"messages[{i}].role is {message.get('role')!r}; use one of {', '.join(ROLES)}."
            )
        if "content" not in message:
            raise InputError(f"messages[{i}] has no content.")
        checked.append({**message, "content": _text(i, message["content"])})
    out = {**body, "messages": checked}
    max_tokens = body.get("max_tokens")
    if max_tokens is not None and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
    ):
        raise InputError(
            f"max_tokens={max_tokens!r}: use a whole number >= 1 (the stock server would "
            "generate to the end of the context for 0 or -1), or leave it out."
        )
    if body.get("response_format") is not None:
        out["response_format"] = _response_format(body["response_format"])
    try:
        CreateChatCompletionRequest.model_validate(out)
    except ValidationError as err:  # the stock server answers these with a 500
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()[:3]
        )
        raise InputError(f"The request does not fit the chat API: {problems}.") from None
    return out


class CheckChat:
    """ASGI middleware: chat requests through check_chat() before the stock server reads
    them; a refusal is a 400 in OpenAI's error shape."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != CHAT_PATH:
            return await self.app(scope, receive, send)
        raw = b""
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before sending its body
            raw += message.get("body", b"")
            more = message.get("more_body", False)
        try:
            body = check_chat(json.loads(raw))
        except (InputError, ValueError) as err:  # JSONDecodeError is a ValueError
            return await _refuse(send, str(err))
        data = json.dumps(body).encode()
        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(data)).encode()))
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return await receive()  # http.disconnect, when the client goes
            sent = True
            return {"type": "http.request", "body": data, "more_body": False}

        await self.app({**scope, "headers": headers}, replay, send)


async def _refuse(send: Any, message: str) -> None:
    payload = json.dumps({"error": {"message": message, "type": "invalid_request_error"}})
    await send(
        {
            "type": "http.response.start",
            "status": 400,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": payload.encode()})


def main() -> None:
    from llama_cpp.server import __main__ as stock
    from llama_cpp.server import model

    load = model.LlamaProxy.load_llama_from_model_settings

    def load_plain(settings: Any) -> Any:
        if settings.chat_format is not None:
            raise SystemExit(
                f"--chat_format {settings.chat_format!r} is refused: this launcher renders the "
                "GGUF's own chat template with message contents tokenized as plain text, and "
                "another chat format would parse control tokens in them again. Leave it out, "
                "or run `python -m llama_cpp.server` for the stock behaviour."
            )
        llm = load(settings)
        llm.chat_handler = plain_chat_handler(chat_formatter(llm))
        return llm

    create_app = stock.create_app

    def checked_app(**kwargs: Any) -> Any:
        app = create_app(**kwargs)
        app.add_middleware(CheckChat)
        return app

    model.LlamaProxy.load_llama_from_model_settings = staticmethod(load_plain)
    stock.create_app = checked_app
    stock.main()


if __name__ == "__main__":
    main()
