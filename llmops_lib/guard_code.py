"""Scan the code blocks in a model's reply with Meta's CodeShield; an error is never "secure".

CodeShield (PyPI `codeshield`, from PurpleLlama) runs regex rules and, for some
languages, semgrep rules shipped inside the package: it works offline. Its own
`CodeShield.scan_code` catches every exception and then reports the code as NOT
insecure, and a failing semgrep run is only logged. So this module listens to
CodeShield's log while it scans: any error logged, or any exception, turns the result
into "unavailable", which a caller must treat like "insecure", never like "secure".
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import pandas as pd

# ```lang\n ... ``` blocks in Markdown; the tag is optional.
_FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)```", re.DOTALL)

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


def code_blocks(text: str) -> list[CodeBlock]:
    """The fenced code blocks in a Markdown reply, in order."""
    return [
        CodeBlock(language=(tag.lower() or None), code=code)
        for tag, code in _FENCE.findall(text)
        if code.strip()
    ]


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


def scan_block(block: CodeBlock) -> ScanResult:
    """Scan one block with CodeShield (all its languages when the tag is missing or unknown)."""
    try:
        from codeshield.cs import CodeShield
        from codeshield.insecure_code_detector.languages import Language
    except Exception as err:  # noqa: BLE001 - not installed or broken: say so, never "secure"
        return ScanResult(block, "unavailable", error=f"CodeShield not usable: {err}")
    tag = _LANGUAGE_ALIASES.get(block.language or "", block.language)
    # 'language_agnostic' names only CodeShield's shared rules: scan it like a missing tag.
    named = {lang.value for lang in Language} - {Language.LANGUAGE_AGNOSTIC.value}
    language = Language(tag) if tag in named else None
    with _listen("codeshield") as errors:
        try:
            # A worker thread has no event loop yet, also inside Jupyter (which runs one).
            with ThreadPoolExecutor(max_workers=1) as pool:
                scan = CodeShield.scan_code(block.code, language)
                result = pool.submit(asyncio.run, scan).result()
        except Exception as err:  # noqa: BLE001
            errors.messages.append(f"{type(err).__name__}: {err}")
    if errors.messages:
        return ScanResult(block, "unavailable", error="; ".join(errors.messages))
    if not result.is_insecure:
        return ScanResult(block, "secure")
    issues = tuple(
        f"{issue.cwe_id}: {issue.description} ({str(issue.pattern_id).rsplit('.', 1)[-1]})"
        for issue in result.issues_found or []
    )
    return ScanResult(block, "insecure", result.recommended_treatment.value, issues)


def scan_reply(text: str) -> list[ScanResult]:
    """Scan every fenced code block of a reply; no blocks, no results."""
    return [scan_block(block) for block in code_blocks(text)]


def table(results: list[ScanResult]) -> pd.DataFrame:
    """One row per scanned block: language, status, treatment, issues or error."""
    return pd.DataFrame(
        [
            {
                "language": r.block.language,
                "lines": len(r.block.code.splitlines()),
                "status": r.status,
                "treatment": r.treatment,
                "issues": "; ".join(r.issues) or None,
                "error": r.error,
            }
            for r in results
        ]
    )
