"""Scan the code blocks in a model's reply with Meta's CodeShield; an error is never "secure".

CodeShield (PyPI `codeshield`, from PurpleLlama) runs regex rules and, for some
languages, semgrep rules shipped inside the package: it works offline. Its own
`CodeShield.scan_code` catches every exception and then reports the code as NOT
insecure, a failing semgrep run is only logged, and it leaves copies of the code in the
system's temp folder. So this module runs CodeShield's analysis itself, on copies in a
folder it removes, and listens to CodeShield's log while it scans: any error logged, or
any exception, turns the result into "unavailable", which a caller must treat like
"insecure", never like "secure".

What counts as code is what a reader could copy: fenced blocks (backticks or tildes,
closed or cut off, nested), indented blocks, with NUL bytes dropped.
"""

from __future__ import annotations

import asyncio
import logging
import re
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ...core.errors import InputError

# A fence opens with 3+ backticks or tildes (up to 3 spaces in) and an optional tag; it is
# closed by a line of 3+ of the same character at least as long (CommonMark).
_OPEN = re.compile(r"^ {0,3}(?P<fence>`{3,}|~{3,})[ \t]*(?P<tag>[^\s`]*)")
_INDENTED = ("    ", "\t")  # an indented code block's lines
TMP_PREFIX = "llmops-codeshield-"  # the scanner's copies of the code, removed after each scan

# Markdown fence tags that are not CodeShield Language values; any other tag is looked
# up among those values (c, cpp, python, ...; see codeshield's languages.py).
_LANGUAGE_ALIASES = {
    "c++": "cpp",
    "cs": "csharp",
    "c#": "csharp",
    "js": "javascript",
    "objective-c": "objective_c",
    "objc": "objective_c",
    "py": "python",
}


@dataclass(frozen=True)
class CodeBlock:
    language: str | None  # the fence tag, lower case; None when the block has none
    code: str


@dataclass(frozen=True)
class ScanResult:
    """One block's outcome: status is 'secure', 'insecure' or 'unavailable'."""

    block: CodeBlock
    status: str
    treatment: str | None = None  # CodeShield's advice for insecure code: 'block' or 'warn'
    issues: tuple[str, ...] = ()  # "CWE-xxx: description (rule id)"
    error: str | None = None  # why the scan is unavailable

    @property
    def ok(self) -> bool:
        """True only for a scan that ran and found nothing."""
        return self.status == "secure"


def code_blocks(text: str, indented: bool = True) -> list[CodeBlock]:
    """Every piece of code in a Markdown reply, in order: what a reader could copy and run.

    Fenced blocks with backticks or tildes; a fence left open (a reply cut at max_tokens)
    runs to the end; fences nested inside a block are found as blocks of their own too;
    with `indented`, runs of lines indented by 4 spaces or a tab outside fences. NUL bytes
    are dropped first: they hide code from the scanner, never from a copy and paste.
    """
    if not isinstance(text, str):
        raise InputError(f"code_blocks needs the reply as text (str), got {type(text).__name__}.")
    blocks: list[CodeBlock] = []
    lines = text.replace("\0", "").splitlines()
    run: list[str] = []  # the indented lines seen since the last other line

    def add(tag: str | None, body: list[str]) -> None:
        code = "\n".join(body) + "\n"
        if code.strip():
            blocks.append(CodeBlock(tag.lower() if tag else None, code))

    i = 0
    while i < len(lines):
        opened = _OPEN.match(lines[i])
        if opened:
            add(None, run)
            run = []
            fence = opened["fence"]
            closing = re.compile(rf"^ {{0,3}}{fence[0]}{{{len(fence)},}}[ \t]*$")
            end = next((j for j in range(i + 1, len(lines)) if closing.match(lines[j])), len(lines))
            add(opened["tag"], lines[i + 1 : end])
            blocks.extend(code_blocks("\n".join(lines[i + 1 : end]), indented=False))
            i = end + 1
            continue
        if indented and (lines[i].startswith(_INDENTED) or (run and not lines[i].strip())):
            run.append(lines[i][4:] if lines[i].startswith("    ") else lines[i][1:])
        else:
            add(None, run)
            run = []
        i += 1
    add(None, run)
    return blocks


class _Errors(logging.Handler):
    """Collects ERROR and worse records logged while a scan runs."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _listen(logger_name: str) -> Iterator[_Errors]:
    logger = logging.getLogger(logger_name)
    handler = _Errors()
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


async def _analyze(code: str, languages: list[Any], folder: Path) -> list[Any]:
    """CodeShield's analysis of `code` in each of `languages`, on copies in `folder`.

    CodeShield.scan_code writes each language's copy to the system's temp folder and leaves
    it there whenever a rule matches or semgrep is skipped; given a path of ours it reads
    that file instead, and the caller removes the folder after the scan.
    """
    from codeshield.insecure_code_detector import insecure_code_detector as icd
    from codeshield.insecure_code_detector.languages import get_file_extension
    from codeshield.insecure_code_detector.usecases import UseCase

    async def one(language: Any) -> list[Any]:
        path = folder / f"{language.value}{get_file_extension(language)}"
        path.write_text(code, encoding="utf-8")
        return await icd.analyze(language, code, path=path, usecase=UseCase.CODESHIELD) or []

    found = await asyncio.gather(*(one(language) for language in languages))
    return [issue for issues in found for issue in issues]


def scan_block(block: CodeBlock) -> ScanResult:
    """Scan one block with CodeShield (all its languages when the tag is missing or unknown).

    NUL bytes are dropped before the scan, as code_blocks() drops them: semgrep takes a file
    with one for binary and matches nothing in it, while a reader's copy and paste keeps the
    code around it.
    """
    if not (isinstance(block, CodeBlock) and isinstance(block.code, str)):
        raise InputError(f"scan_block needs a CodeBlock of text, got {block!r:.60}.")
    try:
        from codeshield.cs import Treatment
        from codeshield.insecure_code_detector.issues import Severity
        from codeshield.insecure_code_detector.languages import Language, get_supported_languages
    except Exception as err:  # noqa: BLE001 - not installed or broken: say so, never "secure"
        return ScanResult(block, "unavailable", error=f"CodeShield not usable: {err}")
    tag = _LANGUAGE_ALIASES.get(block.language or "", block.language)
    # 'language_agnostic' names only CodeShield's shared rules: scan it like a missing tag.
    named = {lang.value for lang in Language} - {Language.LANGUAGE_AGNOSTIC.value}
    languages = [Language(tag)] if tag in named else get_supported_languages()
    with _listen("codeshield") as errors, tempfile.TemporaryDirectory(prefix=TMP_PREFIX) as tmp:
        try:
            # A worker thread has no event loop yet, also inside Jupyter (which runs one).
            with ThreadPoolExecutor(max_workers=1) as pool:
                scan = _analyze(block.code.replace("\0", ""), languages, Path(tmp))
                found = pool.submit(asyncio.run, scan).result()
        except Exception as err:  # noqa: BLE001
            errors.messages.append(f"{type(err).__name__}: {err}")
    if errors.messages:
        return ScanResult(block, "unavailable", error="; ".join(errors.messages))
    if not found:
        return ScanResult(block, "secure")
    issues = tuple(
        f"{issue.cwe_id}: {issue.description} ({str(issue.pattern_id).rsplit('.', 1)[-1]})"
        for issue in found
    )
    # CodeShield's own advice: block when any issue is an error, warn otherwise.
    blocks = any(issue.severity == Severity.ERROR for issue in found)
    treatment = Treatment.BLOCK if blocks else Treatment.WARN
    return ScanResult(block, "insecure", treatment.value, issues)


def scan_reply(text: str) -> list[ScanResult]:
    """Scan every fenced code block of a reply; no blocks, no results."""
    return [scan_block(block) for block in code_blocks(text)]


def table(results: list[ScanResult]) -> pd.DataFrame:
    """One row per scanned block: language, status, treatment, issues or error ("" where
    there is none, so an empty cell reads the same in every column)."""
    return pd.DataFrame(
        [
            {
                "language": r.block.language,
                "lines": len(r.block.code.splitlines()),
                "status": r.status,
                "treatment": r.treatment or "",
                "issues": "; ".join(r.issues),
                "error": r.error or "",
            }
            for r in results
        ]
    )
