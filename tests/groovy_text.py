"""Groovy source as text: string literals and bracket blocks, for the checks that read Nextflow
files without Nextflow (tests/unit/test_nftest_files.py, tests/nftest_snapshots.py)."""

from __future__ import annotations

import re


def skip_string(text: str, i: int) -> int:
    """Index just past the string literal starting at ``text[i]`` (single, double or triple quotes)."""
    for quote in ('"""', "'''", '"', "'"):
        if text.startswith(quote, i):
            j = i + len(quote)
            while j < len(text):
                if text[j] == "\\":
                    j += 2
                    continue
                if text.startswith(quote, j):
                    return j + len(quote)
                j += 1
            raise ValueError(f"unterminated string at {text[i:i + 30]!r}")
    return i


def block_end(text: str, open_at: int) -> int:
    """Index of the bracket closing the one at ``open_at`` (strings and comments skipped)."""
    pairs = {"{": "}", "[": "]", "(": ")"}
    stack, i = [pairs[text[open_at]]], open_at + 1
    while i < len(text):
        c = text[i]
        if c in "'\"":
            i = skip_string(text, i)
            continue
        if text.startswith("//", i):
            i = text.find("\n", i) if "\n" in text[i:] else len(text)
            continue
        if text.startswith("/*", i):
            i = text.index("*/", i) + 2
            continue
        if c in pairs:
            stack.append(pairs[c])
        elif c in ")]}":
            if c != stack.pop():
                raise ValueError(f"unbalanced '{c}' at {text[i:i + 30]!r}")
            if not stack:
                return i
        i += 1
    raise ValueError(f"no closing bracket for {text[open_at:open_at + 30]!r}")


def blocks(text: str, head: str) -> list[tuple[re.Match, str]]:
    """``(match, body)`` of every ``<head> {`` block; ``head`` is a regex ending before the brace."""
    out = []
    for m in re.finditer(head + r"\s*\{", text):
        start = m.end() - 1
        out.append((m, text[start + 1:block_end(text, start)]))
    return out
