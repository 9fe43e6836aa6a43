"""transformers backend: load a model in fp32/fp16/bf16 or bitsandbytes int8/nf4, and chat.

Every load is checked first against the hardware and the memory planner, so a precision the
GPU cannot do, or a model that will not fit, fails in a second with the nearest option that
works instead of after minutes of downloading and an out-of-memory crash. `HFModel` speaks
the same small chat protocol as `llamacpp.LlamaCppModel` (chat, stream, count_tokens,
prompt_text, n_ctx, timings, close), so a Conversation or a classifier runs on either.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..core import hf_noise
from ..core.backend import NO_TIMINGS, Timings, check_chat_args
from ..core.errors import InputError, PrecisionError, whole
from ..core.hardware import Hardware, release
from ..core.plain_text import mark_contents, tokenize_marked, writes_bos
from ..planning import memory
from ..planning.catalog import ModelSpec

hf_noise.ignore_iprogress()  # transformers' bars import tqdm.auto (see core.hf_noise)

QUANTIZED = ("int8", "nf4")


def device_for(hw: Hardware) -> str:
    """'cuda' when a GPU is there, else 'cpu'; never split silently across both."""
    return "cuda" if hw.has_gpu else "cpu"


def compute_dtype(precision: str, hw: Hardware):
    """The torch dtype the model computes in (and keeps its unquantized weights in): the
    planner's `memory.compute_type`, so what is planned is what loads."""
    import torch

    return getattr(torch, memory.compute_type(precision, hw))


def bitsandbytes_devices() -> set[str]:
    """Device types the installed bitsandbytes has kernels for (empty when not installed)."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return set()
    _quiet_bitsandbytes()
    import bitsandbytes

    return set(getattr(bitsandbytes, "supported_torch_devices", set()))


def check(spec: ModelSpec, precision: str, hw: Hardware, context_tokens: int = 2048) -> memory.Plan:
    """Raise PrecisionError before loading when `precision` cannot work here; else the plan.

    Checks, in order: a known precision; bf16 on a GPU without bf16; bitsandbytes with a
    kernel for this device; the memory planner's verdict. Each error names the nearest
    precision that would work.
    """
    memory.compute_type(precision, hw)  # an unknown precision is named with the known ones
    device = device_for(hw)
    where = hw.gpu_name if hw.has_gpu else "this CPU (free RAM)"
    no_bf16 = hw.has_gpu and not hw.bf16
    usable = [p for p in memory.TRANSFORMERS_PRECISIONS if not (p == "bf16" and no_bf16)]
    if device not in bitsandbytes_devices():
        usable = [p for p in usable if p not in QUANTIZED]

    def nearest() -> str:
        # the usable precisions, closest in bits to the one asked for first
        bits = memory.bits_per_weight(precision)
        for candidate in sorted(usable, key=lambda p: abs(memory.bits_per_weight(p) - bits)):
            fit = memory.machine_plan(spec, candidate, hw, context_tokens)
            if fit.fits:
                return f"nearest option that fits: precision={candidate!r}, {fit.verdict}."
        known = ", ".join(memory.TRANSFORMERS_PRECISIONS)
        return f"no precision of {known} fits; use a smaller model."

    if precision == "bf16" and hw.has_gpu and not hw.bf16:
        major, minor = hw.compute_capability or (0, 0)
        raise PrecisionError(
            f"{hw.gpu_name} (compute capability {major}.{minor}) has no bfloat16 support; "
            f"bf16 needs 8.0 or newer (A100, L4, H100); its 2-byte alternative is fp16. "
            f"{nearest()}"
        )
    if precision in QUANTIZED and device not in bitsandbytes_devices():
        raise PrecisionError(
            f"{precision} needs a bitsandbytes build with kernels for {device!r}; installed: "
            f"{sorted(bitsandbytes_devices()) or 'none'} (`pip install bitsandbytes`). {nearest()}"
        )
    planned = memory.machine_plan(spec, precision, hw, context_tokens)
    if not planned.fits:
        raise PrecisionError(
            f"{spec.title} in {precision} needs about {planned.total_gb:.1f} GB "
            f"(weights {planned.weights_gb:.1f} + KV {planned.kv_gb:.1f} + overhead "
            f"{planned.overhead_gb:.1f}) but {where} has {planned.gpu_gb:.1f} GB: {nearest()}"
        )
    return planned


def check_load(spec: ModelSpec, precision: str, hw: Hardware, n_ctx: int) -> memory.Plan:
    """What loading checks before any file is fetched: the context, then `check`."""
    if not 0 < n_ctx <= spec.max_context:
        raise InputError(f"n_ctx={n_ctx} is outside 1..{spec.max_context} for {spec.title}.")
    return check(spec, precision, hw, n_ctx)


def quantization_config(precision: str, hw: Hardware):
    """BitsAndBytesConfig for int8 (LLM.int8) or nf4 (4-bit NF4, double quantization)."""
    from transformers import BitsAndBytesConfig

    _quiet_bitsandbytes()
    if precision == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    if precision == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype(precision, hw),
        )
    return None


class _DropLog(logging.Filter):
    """Drop log messages that start with `prefix`; let everything else through."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


# bitsandbytes messages that teach nothing where they appear (notebook 02 explains both):
BNB_NOISE = {
    # Logged on EVERY int8 matmul when the model computes in fp32/bf16: LLM.int8 casts its
    # inputs to float16 by design (see compute_dtype).
    "bitsandbytes.autograd._functions": "MatMul8bitLt: inputs will be cast",
    # Logged at import on AVX512-BF16 CPUs: an optional 4-bit kernel from the Hugging Face
    # Hub (`kernels` package, a download) is missing; bitsandbytes then runs its own bundled
    # C++ 4-bit kernel instead (see nf4_cpu_path), which is what the course measures.
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward",
}


def _quiet_bitsandbytes() -> None:
    """Install the BNB_NOISE filters (before bitsandbytes is imported: it logs at import)."""
    for name, prefix in BNB_NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLog) for f in logger.filters):
            logger.addFilter(_DropLog(prefix))


def nf4_cpu_path() -> str:
    """What multiplies by 4-bit weights on this CPU in bitsandbytes 0.50.

    On a CPU with AVX512-BF16, Linear4bit repacks its weights at the first forward pass
    and every matmul runs bitsandbytes' own fused C++ kernel in bfloat16 (inputs cast to
    bf16); elsewhere each matmul first de-quantizes the weights to the compute dtype and
    then calls torch's ordinary matmul.
    """
    _quiet_bitsandbytes()
    from bitsandbytes.functional import has_avx512bf16

    if has_avx512bf16():
        return "bitsandbytes' own fused C++ 4-bit kernel, computing in bf16 (AVX512-BF16)"
    return "de-quantize the 4-bit weights, then torch's ordinary matmul (no AVX512-BF16 here)"


class _Clock:
    """Timestamps of generate()'s streamer calls: the prompt first, then each new token."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.stamps: list[float] = []

    def put(self, value: Any) -> None:
        self.stamps.append(time.perf_counter())

    def end(self) -> None:
        pass

    def timings(self, prompt_tokens: int) -> Timings:
        # stamps[0]: prompt accepted; stamps[1]: first token, out of the prefill pass
        if len(self.stamps) < 2:
            return Timings(prompt_tokens, 0.0, 0, 0.0)
        first = self.stamps[1]
        return Timings(
            prompt_tokens=prompt_tokens,
            prompt_ms=1000 * (first - self.start),
            generated_tokens=len(self.stamps) - 2,
            generated_ms=1000 * (self.stamps[-1] - first),
        )


class HFModel:
    """A transformers causal LM with the chat protocol of llamacpp.LlamaCppModel.

    `path` is the model's folder (provision.hf_dir); `spec` gives its title, context and
    the numbers the memory plan is checked against.
    """

    def __init__(
        self,
        path: str | Path,
        spec: ModelSpec,
        precision: str,
        hw: Hardware,
        n_ctx: int = 2048,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.spec = spec
        self.precision = precision
        self.plan = check_load(spec, precision, hw, n_ctx)
        self.device = device_for(hw)
        self.path = Path(path)
        release()  # what earlier cells dropped goes before this model arrives
        start = time.perf_counter()
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        with hf_noise.no_transformers_bars():  # a bar per tensor group of a local folder is noise
            self.model = AutoModelForCausalLM.from_pretrained(
                self.path,
                dtype=compute_dtype(precision, hw),
                quantization_config=quantization_config(precision, hw),
                device_map=self.device,
            )
        self.model.eval()
        self.load_s = time.perf_counter() - start
        self._n_ctx = n_ctx
        self._clock: _Clock | None = None
        self._prompt_tokens = 0  # the last call's whole prompt (its usage)
        self._evaluated = 0  # of those, the ones it processed: the rest came from the cache
        self._cache: Any = None  # the last call's KV cache, for a prompt that starts the same
        self._cached_ids: list[int] = []
        self._torch = torch

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    def weight_bytes(self) -> int:
        """Bytes of parameters and buffers as transformers measures them."""
        return int(self.model.get_memory_footprint())

    def gpu_share(self) -> float:
        """1 on a GPU, 0 on the CPU: the model is never split across both (device_for)."""
        return 1.0 if self.device != "cpu" else 0.0

    def reset(self) -> None:
        """Forget the cached tokens, so the next call processes its whole prompt again
        (a benchmark that repeats one prompt; see LlamaCppModel.reset)."""
        self._cache, self._cached_ids = None, []

    def _cached_prefix(self, ids: list[int]) -> tuple[Any, int]:
        """A KV cache for a call on `ids`: the last call's, cut back to the longest prefix
        they share (never the last token: a forward pass needs one), and that prefix's length.

        Why: the course's prompts repeat long prefixes (a classifier's few-shot examples, a
        conversation's earlier turns, the P(Yes) reading before the same prompt's answer).
        llama.cpp reuses them by itself; here 8 of notebook 02's rows took 13.5 s instead of
        18.9 s to classify (1 thread).
        The sums come out in another order: P(Yes) moved by 2e-6 in fp32, 0.006 in nf4.
        Two kinds of model get no cache and recompute every prompt: LLM.int8, which picks
        its 16-bit outlier columns from the tokens of each pass, so a prefix computed apart
        moved P(Yes) by up to 0.18 (8 rows of notebook 02); and a model whose cache cannot
        be cut back (sliding-window or linear-attention layers).
        """
        cache, cached = self._cache, self._cached_ids
        self._cache, self._cached_ids = None, []  # the call extends it; _keep() puts it back
        common = 0
        for old, new in zip(cached, ids[:-1], strict=False):  # lengths differ
            if old != new:
                break
            common += 1
        if cache is None or common == 0:
            return self._empty_cache(), 0
        cache.crop(common - cache.get_seq_length())  # negative: the tokens to remove
        return cache, common

    def _empty_cache(self) -> Any:
        """A new KV cache, or None for a model that recomputes every prompt (_cached_prefix)."""
        if self.precision == "int8":
            return None
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        cache = DynamicCache(config=self.model.config)
        return cache if all(type(layer) is DynamicLayer for layer in cache.layers) else None

    def _keep(self, cache: Any, ids: list[int]) -> None:
        """Keep `cache` for the next call; `ids` are the tokens it was computed from."""
        if cache is not None:
            self._cache, self._cached_ids = cache, ids[: cache.get_seq_length()]

    def prompt_text(self, messages: list[dict[str, str]]) -> str:
        """The exact prompt string the chat template builds from `messages`."""
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

    def prompt_ids(self, prompt: str, add_bos: bool = False) -> list[int]:
        """Token ids of a prompt whose contents are PLAIN-marked: the template's control
        tokens parsed, the contents as text (a typed '<|im_end|>' cannot forge a turn)."""

        def tokenize(text: str, bos: bool, special: bool) -> list[int]:
            return self.tokenizer(
                text, add_special_tokens=bos, split_special_tokens=not special
            ).input_ids

        return tokenize_marked(prompt, tokenize, add_bos)

    def _ids_tensor(self, ids: list[int]):
        return self._torch.tensor([ids], device=self.model.device)

    def _encode(self, messages: list[dict[str, str]]):
        marked = mark_contents(self.prompt_text, messages)
        return self._ids_tensor(self.prompt_ids(self.prompt_text(marked)))

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        """Prompt tokens for `messages`, counted with the model's own tokenizer."""
        return int(self._encode(messages).shape[1])

    def _generate_kwargs(self, messages, max_tokens: int, temperature: float) -> dict[str, Any]:
        return self._generation(self._encode(messages), max_tokens, temperature)

    def _generation(self, input_ids, max_tokens: int, temperature: float) -> dict[str, Any]:
        """generate() arguments for prompt tokens that are already encoded (bounded by n_ctx)."""
        prompt_tokens = input_ids.shape[1]
        if prompt_tokens >= self.n_ctx:
            raise InputError(
                f"The prompt has {prompt_tokens} tokens but n_ctx is {self.n_ctx}; "
                "shorten the messages or load the model with a larger n_ctx."
            )
        self._prompt_tokens = prompt_tokens
        cache, reused = self._cached_prefix(input_ids[0].tolist())
        self._evaluated = prompt_tokens - reused
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {}
        return dict(
            input_ids=input_ids,
            past_key_values=cache,
            attention_mask=self._torch.ones_like(input_ids),
            max_new_tokens=min(max_tokens, self.n_ctx - prompt_tokens),
            pad_token_id=(
                self.tokenizer.pad_token_id
                if self.tokenizer.pad_token_id is not None
                else self.tokenizer.eos_token_id
            ),
            **(sampling or {"do_sample": False}),
        )

    def _stop_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        return set(eos if isinstance(eos, list) else [eos])

    def _answer(self, output: Any, prompt_tokens: int) -> tuple[list[int], str, str]:
        """The new token ids of one generate() output, their text and the finish reason."""
        new = output[0, prompt_tokens:].tolist()
        finish_reason = "stop" if new and new[-1] in self._stop_ids() else "length"
        return new, self.tokenizer.decode(new, skip_special_tokens=True), finish_reason

    @property
    def grammars(self) -> bool:
        """No grammar here: complete() answers unconstrained (see backend.LocalModel)."""
        return False

    def complete(
        self, prompt: str, max_tokens: int = 32, grammar: str | None = None
    ) -> tuple[str, str]:
        """Greedy plain completion of a finished prompt (a guard's): text and finish reason.

        No chat template; BOS added unless the prompt writes it; PLAIN-marked parts (a
        guard's judged texts) tokenized as text. `grammar` is ignored (`grammars` is False).
        """
        whole("max_tokens", max_tokens)
        add_bos = not writes_bos(prompt, self.tokenizer.bos_token)
        ids = self._ids_tensor(self.prompt_ids(prompt, add_bos))
        gen = self._generation(ids, max_tokens, 0.0)
        with self._torch.inference_mode():
            output = self.model.generate(**gen)
        self._keep(gen["past_key_values"], output[0].tolist())
        _, text, finish_reason = self._answer(output, ids.shape[1])
        return text, finish_reason

    def _envelope(self, kind: str) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "object": kind,
            "created": int(time.time()),
            "model": self.spec.key,
        }

    def chat(
        self,
        messages: list[dict[str, str]],
        max_tokens: int = 256,
        temperature: float = 0.0,
        stream: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """OpenAI-style chat completion (a dict, or an iterator of chunks when streaming).

        Extra keyword arguments go to `model.generate` (e.g. repetition_penalty=1.2).
        """
        check_chat_args(messages, max_tokens, temperature)
        gen = self._generate_kwargs(messages, max_tokens, temperature) | kwargs
        if stream:
            return self._stream(gen)
        self._clock = _Clock()
        with self._torch.inference_mode():
            output = self.model.generate(**gen, streamer=self._clock)
        self._keep(gen["past_key_values"], output[0].tolist())
        new, text, finish_reason = self._answer(output, gen["input_ids"].shape[1])
        return self._envelope("chat.completion") | {
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": self._prompt_tokens,
                "completion_tokens": len(new),
                "total_tokens": self._prompt_tokens + len(new),
            },
        }

    def _stream(self, gen: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Run generate() in a thread and yield its text as OpenAI-style chunks."""
        from transformers import TextIteratorStreamer

        clock = self._clock = _Clock()

        class TimedStreamer(TextIteratorStreamer):
            def put(self, value: Any) -> None:
                clock.put(value)
                super().put(value)

        streamer = TimedStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        errors: list[BaseException] = []
        outputs: list[Any] = []

        def run() -> None:
            try:
                with self._torch.inference_mode():
                    outputs.append(self.model.generate(**gen, streamer=streamer))
            except BaseException as err:  # re-raised in the consumer's thread below
                errors.append(err)
                streamer.end()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        envelope = self._envelope("chat.completion.chunk")
        yield envelope | {
            "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]
        }
        for piece in streamer:
            if piece:
                yield envelope | {
                    "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]
                }
        worker.join()
        if errors:
            raise errors[0]
        self._keep(gen["past_key_values"], outputs[0][0].tolist())
        generated = len(clock.stamps) - 1
        reason = "length" if generated >= gen["max_new_tokens"] else "stop"
        yield envelope | {"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}

    def next_token_probs(
        self, messages: list[dict[str, str]], words: dict[str, list[str]]
    ) -> dict[str, float]:
        """For each group of `words`: probability that the answer's first token starts one.

        One forward pass over the prompt, no generation. Each spelling counts through its
        first token; the groups must not share a token, or the split would be ambiguous.
        """
        ids = {name: self._first_tokens(spellings) for name, spellings in words.items()}
        names = list(ids)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                if ids[a] & ids[b]:
                    raise InputError(f"{a!r} and {b!r} start with the same token; reword them.")
        prompt = self._encode(messages)[0].tolist()
        cache, reused = self._cached_prefix(prompt)
        with self._torch.inference_mode():
            logits = self.model(
                input_ids=self._ids_tensor(prompt[reused:]),
                past_key_values=cache,
                use_cache=cache is not None,
                logits_to_keep=1,
            ).logits[0, -1]
        self._keep(cache, prompt)
        probs = self._torch.softmax(logits.float(), dim=-1)
        return {name: float(probs[sorted(group)].sum()) for name, group in ids.items()}

    def chat_starting(
        self, messages: list[dict[str, str]], starts: list[str], max_tokens: int = 48
    ) -> dict[str, Any]:
        """A greedy reply that begins with one of `starts` (e.g. "Yes, because"), then runs free.

        Why: asked for "Yes or No, then why", a small model answers anything, or the label
        alone. transformers' `prefix_allowed_tokens_fn` lets through only the tokens that
        continue one of `starts` until one is complete, so the first token is one of the
        labels (the likelier one: greedy) and what follows is the model's reason.
        """
        if not starts or not all(isinstance(s, str) and s.strip() for s in starts):
            raise InputError(f"starts={starts!r}: pass the non-empty texts a reply may begin with.")
        sequences = [self.tokenizer(s, add_special_tokens=False).input_ids for s in starts]
        prompt_tokens = self.count_tokens(messages)
        everything = list(range(self.model.get_output_embeddings().weight.shape[0]))

        def allowed(batch_id: int, ids: Any) -> list[int]:
            done = ids[prompt_tokens:].tolist()
            n = len(done)
            nexts = {s[n] for s in sequences if len(s) > n and s[:n] == done}
            return sorted(nexts) or everything

        return self.chat(messages, max_tokens, 0.0, prefix_allowed_tokens_fn=allowed)

    def _first_tokens(self, spellings: list[str]) -> set[int]:
        return {self.tokenizer(s, add_special_tokens=False).input_ids[0] for s in spellings if s}

    def timings(self) -> Timings:
        """Prefill and decode times of the last chat() call (from generate()'s streamer),
        with the prompt tokens it processed: as in llama.cpp's counters, not the cached ones."""
        if self._clock is None:
            return NO_TIMINGS
        return self._clock.timings(self._evaluated)

    def close(self) -> None:
        """Free the weights now (and the GPU cache), not at garbage collection."""
        self.model = self._cache = None
        release()

    def __enter__(self) -> HFModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
