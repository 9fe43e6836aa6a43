"""Read a GGUF file's metadata header without loading the model: validate before allocating.

llama.cpp allocates the KV cache for the requested context before it can say that the
model was trained for less (n_ctx=1,000,000 asks for ~19 GB on the tiny model). The header
holds the trained context, the architecture and the chat template, so reading it first lets
every loader refuse bad input in milliseconds. Values are read in file order and reading
stops at the last key asked for; the large tokenizer arrays are skipped, not decoded.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from ..core.errors import InputError

# GGUF value types (gguf.GGUFValueType): struct format of each fixed-size scalar.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?"}
_SCALARS |= {10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
# A length or count this large is checked against the bytes left in the file before it is
# read: a flipped bit in one would otherwise ask for exabytes (MemoryError) or loop for hours.
_CHECKED = 1 << 20
AGAIN = "The file is cut short or damaged; download or assemble it again."


class GGUFError(InputError):
    """A model file that is unreadable, not a GGUF model, cut short or damaged; the message
    names the file and what to do."""


def file_start(path: Path, size: int, what: str, advice: str) -> bytes:
    """The first `size` bytes of a file (fewer if it is shorter), to check its magic number
    before a tool is given it; a missing file raises FileNotFoundError naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {str(path)!r}. {advice}")
    try:
        with path.open("rb") as fh:
            return fh.read(size)
    except OSError as err:  # no permission, a disk error
        raise GGUFError(f"{what} {str(path)!r} cannot be read ({err.strerror or err}).") from None


def check_gguf(path: str | Path) -> Path:
    """Fail early, naming the file, when it is missing or not a GGUF model."""
    path = Path(path)
    advice = (
        "Pass the path of an existing .gguf file, or let the profile provide one with "
        "session.model_path('chat')."
    )
    magic = file_start(path, 4, "GGUF model file", advice)
    if magic != b"GGUF":
        raise GGUFError(
            f"{str(path)!r} is not a GGUF model (starts with {magic!r}, expected b'GGUF'). "
            "The file is corrupt or of another format; download or assemble it again."
        )
    return path


def _read(fh: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize("<" + fmt)
    data = fh.read(size)
    if len(data) != size:
        raise EOFError
    return struct.unpack("<" + fmt, data)[0]


def _fits(fh: BinaryIO, size: int) -> None:
    """EOFError when `size` bytes from here would run past the end of the file."""
    if size > _CHECKED and size > os.fstat(fh.fileno()).st_size - fh.tell():
        raise EOFError


def _string(fh: BinaryIO, skip: bool = False, raw: bool = False) -> str | bytes | None:
    length = _read(fh, "Q")
    _fits(fh, length)
    if skip:
        fh.seek(length, 1)
        return None
    data = fh.read(length)
    if len(data) != length:
        raise EOFError
    return data if raw else data.decode("utf-8", errors="replace")


def _value(fh: BinaryIO, kind: int, skip: bool) -> Any:
    if kind in _SCALARS:
        return _read(fh, _SCALARS[kind])
    if kind == _STRING:
        return _string(fh, skip)
    if kind == _ARRAY:
        item, count = _read(fh, "I"), _read(fh, "Q")
        # every item takes at least its own size (a string: its 8-byte length)
        _fits(fh, count * (struct.calcsize("<" + _SCALARS[item]) if item in _SCALARS else 8))
        if item in _SCALARS and skip:
            fh.seek(struct.calcsize("<" + _SCALARS[item]) * count, 1)
            return None
        values = [_value(fh, item, skip) for _ in range(count)]
        return None if skip else values
    raise ValueError(f"unknown GGUF value type {kind}")


def read_metadata(path: str | Path, keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The header's key/value metadata (only `keys`, when given; absent keys are left out)."""
    with _open_header(path) as (fh, _n_tensors, n_kv):
        return _read_kv(fh, n_kv, set(keys) if keys is not None else None)


def weight_summary(path: str | Path) -> dict[str, Any]:
    """What the tensors hold, read from the tensor table without loading any of them.

    n_params: weights in all tensors; data_bytes: the tensor data section (what the engine
    loads, without the header and tokenizer); bits_per_weight: the two divided, as
    llama-quantize reports it; type_shares: each tensor type's share of the parameters
    (a quantization "mix" such as Q4_K_M stores different tensors in different types).
    """
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType  # type names and block sizes

    with _open_header(path) as (fh, n_tensors, n_kv):
        alignment = _read_kv(fh, n_kv, None, skip_all_but={"general.alignment"}).get(
            "general.alignment", 32
        )
        if isinstance(alignment, bool) or not isinstance(alignment, int) or alignment < 1:
            raise ValueError(f"general.alignment is {alignment!r}, not a whole number >= 1")
        by_type: dict[str, int] = {}
        needed = 0  # where the last tensor's data ends, from the start of the data section
        for _ in range(n_tensors):
            _string(fh, skip=True)
            n_dims = _read(fh, "I")
            _fits(fh, 8 * n_dims)
            dims = [_read(fh, "Q") for _ in range(n_dims)]
            kind, offset = _read(fh, "I"), _read(fh, "Q")
            name = GGMLQuantizationType(kind).name
            block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
            by_type[name] = by_type.get(name, 0) + math.prod(dims)
            needed = max(needed, offset + math.prod(dims) // block * block_bytes)
        start = -(-fh.tell() // alignment) * alignment  # the data begin at the next boundary
        data_bytes = Path(path).stat().st_size - start
    n_params = sum(by_type.values())
    if n_params == 0:
        raise GGUFError(f"{str(path)!r} holds no tensors (a vocabulary-only file?).")
    if data_bytes < needed:
        raise GGUFError(
            f"{str(path)!r} is cut short: its tensors need {needed:,} bytes of data and the "
            f"file holds {max(data_bytes, 0):,}. Download or assemble it again."
        )
    return {
        "n_params": n_params,
        "data_bytes": data_bytes,
        "bits_per_weight": 8 * data_bytes / n_params,
        "type_shares": {k: v / n_params for k, v in sorted(by_type.items(), key=lambda x: -x[1])},
    }


@contextmanager
def _open_header(path: str | Path) -> Iterator[tuple[BinaryIO, int, int]]:
    """The open file positioned after the counts, and the counts of tensors and keys; a
    truncated or malformed header becomes a GGUFError that names the file."""
    path = check_gguf(path)
    try:
        with path.open("rb") as fh:
            fh.seek(4)
            version, n_tensors, n_kv = _read(fh, "I"), _read(fh, "Q"), _read(fh, "Q")
            if version not in (2, 3):
                raise ValueError(f"GGUF version {version} (this reader knows 2 and 3)")
            yield fh, n_tensors, n_kv
    except GGUFError:
        raise
    except (EOFError, ValueError, struct.error, OSError, MemoryError, OverflowError) as err:
        if isinstance(err, EOFError):
            reason = "it ends inside its header"
        elif isinstance(err, OSError):
            reason = f"reading it failed ({err.strerror or err})"
        elif isinstance(err, (MemoryError, OverflowError)):
            reason = "a size in its header is impossibly large"
        else:
            reason = str(err)
        raise GGUFError(f"{str(path)!r} is not a readable GGUF model: {reason}. {AGAIN}") from None


def _read_kv(
    fh: BinaryIO, n_kv: int, wanted: set[str] | None, skip_all_but: set[str] | None = None
) -> dict[str, Any]:
    """Key/value pairs in file order: the `wanted` ones (all when None), stopping as soon as
    they are all found; with `skip_all_but`, every pair is read past (to reach the tensors)."""
    keep = skip_all_but if skip_all_but is not None else wanted
    found: dict[str, Any] = {}
    for _ in range(n_kv):
        key = _string(fh)
        kind = _read(fh, "I")
        take = keep is None or key in keep
        value = _value(fh, kind, skip=not take)
        if take:
            found[key] = value
        if skip_all_but is None and wanted is not None and wanted <= found.keys():
            break
    return found


def check_vocabulary(path: str | Path) -> None:
    """Refuse a vocabulary that would make llama.cpp abort the whole process.

    llama.cpp asserts that no two tokens share a text (GGML_ASSERT: a native abort, which
    kills the Python process, a notebook's kernel included, with the message hidden under
    verbose=False). One flipped bit in a token's text makes such a pair about 2 % of the
    time. Empty tokens are compared as llama.cpp renames them, "[EMPTY_<id>]".
    """
    with _open_header(path) as (fh, _n_tensors, n_kv):
        for _ in range(n_kv):
            key, kind = _string(fh), _read(fh, "I")
            if key != "tokenizer.ggml.tokens" or kind != _ARRAY:
                _value(fh, kind, skip=True)
                continue
            item, count = _read(fh, "I"), _read(fh, "Q")
            if item != _STRING:
                return  # llama.cpp refuses that with an error of its own, no abort
            _fits(fh, 8 * count)
            seen: dict[bytes, int] = {}
            for i in range(count):
                text = _string(fh, raw=True) or f"[EMPTY_{i}]".encode()
                first = seen.setdefault(text, i)
                if first != i:
                    raise GGUFError(
                        f"{str(path)!r} has a damaged vocabulary: tokens {first} and {i} are "
                        f"both {text.decode('utf-8', 'replace')!r}, on which llama.cpp would "
                        f"abort the whole Python process. {AGAIN}"
                    )
            return


def check_model(path: str | Path) -> dict[str, Any]:
    """Every structural check before llama.cpp (in-process or a server) is given the file:
    a GGUF header that reads to its end, a vocabulary llama.cpp will not abort on, tensors
    that fit in the file. Returns `weight_summary(path)`.

    What this cannot see: damaged weights. Only a checksum can (provision.verify_gguf).
    """
    check_vocabulary(path)
    return weight_summary(path)


def trained_context(path: str | Path) -> int:
    """The context length the model was trained for, from `<architecture>.context_length`."""
    arch = read_metadata(path, ("general.architecture",)).get("general.architecture")
    key = f"{arch}.context_length"
    value = read_metadata(path, (key,)).get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise GGUFError(f"{str(path)!r} names no trained context ({key} is {value!r}).")
    return value
