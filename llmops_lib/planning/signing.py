"""A saved model folder's manifest, signed with this machine's key, checked before loading.

A SetFit folder holds a pickle (model_head.pkl), and loading a pickle runs any code it
names. So the library loads only folders it wrote itself: each file's sha256 and a MAC of
them, made with a key that never leaves this machine, are written beside the files when
the folder is saved and checked before it is loaded. A hash alone proves nothing (whoever
crafts a folder can write matching hashes); the MAC does.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import tempfile
from pathlib import Path

from ..core.errors import InputError
from . import provision

MANIFEST = "llmops-manifest.json"


class UntrustedFolderError(InputError):
    """A saved model folder that this machine's library did not write, or that changed."""


def _signing_key() -> bytes:
    """This machine's secret for manifests, made once, readable by its owner only."""
    path = provision.cache_dir() / "folder-signing.key"
    if not path.exists():
        fd, tmp = tempfile.mkstemp(dir=path.parent)  # private: mode 0600
        try:
            os.write(fd, secrets.token_bytes(32))
            os.close(fd)
            with contextlib.suppress(FileExistsError):  # another process made one first
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    return path.read_bytes()


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(folder.rglob("*"))
        if f.is_file() and f.name != MANIFEST
    }


def copy_hashed(folder: Path, copy: Path) -> tuple[bytes, dict[str, str]]:
    """Copy every file of `folder` to `copy`, hashing the very bytes written: the manifest's
    text and {relative path: sha256} of the other files (what `_hashes` gives for the
    copy), for `check_copy`: what is checked is what loads, not a file swapped after."""
    hashes: dict[str, str] = {}
    manifest = b""
    for f in sorted(folder.rglob("*")):
        if not f.is_file():
            continue
        name = str(f.relative_to(folder))
        target = copy / name
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with f.open("rb") as src, target.open("wb") as dst:
            while chunk := src.read(1 << 22):
                digest.update(chunk)
                dst.write(chunk)
                if f.name == MANIFEST:
                    manifest += chunk
        if f.name != MANIFEST:
            hashes[name] = digest.hexdigest()
    return manifest, hashes


def _mac(files: dict[str, str]) -> str:
    text = json.dumps(files, sort_keys=True).encode()
    return hmac.new(_signing_key(), text, hashlib.sha256).hexdigest()


def sign_folder(folder: Path) -> None:
    """Write the manifest: every file's sha256, and a MAC of them with this machine's key."""
    files = _hashes(folder)
    manifest = {"files": files, "hmac": _mac(files)}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")


def check_folder(folder: Path) -> None:
    """Refuse a folder whose files are not exactly those this machine's library signed.

    A hash alone proves nothing (whoever crafts a folder can write matching hashes), so the
    manifest carries a MAC made with a key that never leaves this machine.
    """
    try:
        text = (folder / MANIFEST).read_bytes()
    except OSError:
        text = b""  # refused below: no readable manifest
    check_copy(folder, (text, _hashes(folder)))


def check_copy(folder: Path, found: tuple[bytes, dict[str, str]]) -> None:
    """Refuse unless `found` (a manifest's text, the files' hashes) is what this machine signed."""
    text, hashes = found
    why = None
    try:
        manifest = json.loads(text.decode("utf-8"))
        files = manifest["files"]
        if not hmac.compare_digest(str(manifest["hmac"]), _mac(files)):
            why = "its manifest was not written on this machine"
        elif files != hashes:
            why = "its files changed after it was saved"
    except (ValueError, KeyError, TypeError):
        why = f"it has no readable {MANIFEST}"
    if why:
        raise UntrustedFolderError(
            f"Refusing to load {folder}: {why}. Its model_head.pkl is a pickle, and loading a "
            "pickle runs any code it names. Load only folders you trust: if you know where this "
            "one comes from, pass trust=True to EncoderClassifier.load."
        )
