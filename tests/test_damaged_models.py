"""Damaged model files are named before any engine or server is given them: never a native
abort that kills the kernel, never garbage generated from damaged weights, never a raw
OSError or MemoryError from the header reader."""

from __future__ import annotations

import signal
import struct
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from llmops_lib.engines.llamacpp import LlamaCppModel
from llmops_lib.engines.servers import LlamaServer, LocalServer
from llmops_lib.planning import gguf_header, provision
from llmops_lib.planning.gguf_header import GGUFError

ENGINES = [LlamaCppModel, LocalServer, LlamaServer]


def small_gguf(path: Path, tokens: list[bytes]) -> Path:
    """A GGUF of a few bytes: a vocabulary and one tensor, written by the `gguf` package."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(64)
    writer.add_token_list(tokens)
    writer.add_tensor("t", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def no_llama(monkeypatch):
    """llama.cpp itself must never be reached: the checks come first."""
    import llama_cpp

    def load(*args, **kwargs):
        raise AssertionError("llama.cpp was given the file before the checks")

    monkeypatch.setattr(llama_cpp, "Llama", load)


@pytest.mark.parametrize("engine", ENGINES, ids=lambda e: e.__name__)
def test_a_vocabulary_llama_cpp_would_abort_on_is_refused_first(tmp_path, no_llama, engine):
    path = small_gguf(tmp_path / "dup.gguf", [b"a", b"b", b"a"])
    with pytest.raises(GGUFError, match=r"dup\.gguf.*tokens 0 and 2 are both 'a'.*abort"):
        engine(path)


def test_empty_tokens_are_compared_as_llama_cpp_renames_them(tmp_path):
    path = small_gguf(tmp_path / "empty.gguf", [b"", b"[EMPTY_0]"])
    with pytest.raises(GGUFError, match="tokens 0 and 1"):
        gguf_header.check_vocabulary(path)
    gguf_header.check_vocabulary(small_gguf(tmp_path / "fine.gguf", [b"", b"x", b""]))


def _flip_token(source: Path, target: Path, index: int, byte: int, bit: int) -> bytes:
    """Copy `source` with one bit of token `index`'s text flipped; returns the new text."""
    reader = gguf.GGUFReader(source)
    field = reader.fields["tokenizer.ggml.tokens"]
    part = field.parts[field.data[index]]
    offset = part.__array_interface__["data"][0] - reader.data.__array_interface__["data"][0]
    data = bytearray(source.read_bytes())
    data[offset + byte] ^= 1 << bit
    target.write_bytes(bytes(data))
    return bytes(data[offset : offset + len(part)])


@pytest.mark.model
def test_upstream_llama_cpp_aborts_the_process_on_one_flipped_vocabulary_bit(session, tmp_path):
    """Pins llama.cpp's behaviour (llama-vocab.cpp asserts id_to_token.size() ==
    token_to_id.size()): one bit turns token 301 'il' into 'hl', a second 'hl', and the
    process dies of SIGABRT with nothing said under verbose=False. If this starts failing,
    llama.cpp refuses such a file itself and gguf_header.check_vocabulary can go."""
    flipped = tmp_path / "flipped.gguf"
    assert _flip_token(session.model_path("chat"), flipped, 301, 0, 0) == b"hl"
    load = "import sys, llama_cpp\nllama_cpp.Llama(sys.argv[1], vocab_only=True, verbose=False)"
    child = subprocess.run([sys.executable, "-c", load, str(flipped)], capture_output=True)
    assert child.returncode == -signal.SIGABRT and child.stderr == b""
    with pytest.raises(GGUFError, match=r"flipped\.gguf.*both 'hl'"):
        LlamaCppModel(flipped)  # named, and this process lives on


@pytest.mark.model
@pytest.mark.parametrize("engine", ENGINES, ids=lambda e: e.__name__)
def test_damaged_weights_of_a_catalog_file_are_refused_by_every_engine(
    session, tmp_path, no_llama, engine
):
    source = session.model_path("chat")
    damaged = tmp_path / source.name  # the catalog's file name: its sha256 is known
    data = bytearray(source.read_bytes())
    data[len(data) // 2] ^= 0x10  # one weight byte: header, vocabulary and sizes stay valid
    damaged.write_bytes(bytes(data))
    gguf_header.check_model(damaged)  # the structure is intact: only a checksum can tell
    with pytest.raises(provision.ModelAccessError, match=r"is damaged.*SmolLM2.*Reinstall"):
        engine(damaged)


@pytest.mark.model
def test_a_gguf_the_catalog_does_not_name_gets_the_structural_checks_only(session, tmp_path):
    """The limit, pinned: weights of a file nobody published a checksum for cannot be checked."""
    data = bytearray(session.model_path("chat").read_bytes())
    data[len(data) // 2] ^= 0x10
    mine = tmp_path / "my-own-model.gguf"
    mine.write_bytes(bytes(data))
    assert provision.verify_gguf(mine) == mine


def _header(*kv: bytes, n_tensors: int = 0) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, len(kv)) + b"".join(kv)


def _key(name: str) -> bytes:
    return struct.pack("<Q", len(name)) + name.encode()


@pytest.mark.parametrize(
    ("data", "call"),
    [  # a flipped high bit in a string length asked for 4 EiB: MemoryError
        (_header(_key("a") + struct.pack("<IQ", 8, 2**62)), gguf_header.read_metadata),
        # an array count that no file could hold
        (_header(_key("a") + struct.pack("<IIQ", 9, 0, 2**61)), gguf_header.read_metadata),
        # general.alignment 0: ZeroDivisionError
        (
            _header(_key("general.alignment") + struct.pack("<II", 4, 0), n_tensors=1)
            + _key("t")
            + struct.pack("<IQIQ", 1, 4, 0, 0),
            gguf_header.weight_summary,
        ),
    ],
    ids=["string-length", "array-count", "alignment-0"],
)
def test_impossible_sizes_in_a_header_are_the_readers_own_error(tmp_path, data, call):
    path = tmp_path / "odd.gguf"
    path.write_bytes(data + bytes(64))
    with pytest.raises(GGUFError, match=r"odd\.gguf.*download or assemble it again"):
        call(path)


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="needs Linux /proc")
def test_a_read_error_is_the_readers_own_error_naming_the_file():
    # /proc/self/mem is a regular file whose first byte cannot be read (EIO)
    with pytest.raises(GGUFError, match=r"/proc/self/mem.*cannot be read"):
        gguf_header.check_gguf("/proc/self/mem")
