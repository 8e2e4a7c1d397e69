"""Regexes with an ASCII twin: the same matches on ASCII-only text, at a fraction of the cost.

In Unicode mode ``\\w`` classifies each character with up to four Unicode-database calls (alpha,
decimal, digit, numeric); compiled with ``re.ASCII`` it reads one table. Most prompts are ASCII, and
``str.isascii()`` is O(1) in CPython, so ``AsciiTwin`` runs the ``re.ASCII`` twin on ASCII text and the
original pattern on anything else. On ASCII text ``\\w``, ``\\d`` and ``\\b`` match alike in both modes;
``\\s`` does not (Unicode mode also counts ``\\x1c``-``\\x1f`` as whitespace, ``re.ASCII`` does not), so a
pattern with ``\\s`` spells its twin out with ``ASCII_SPACE``. tests/unit/test_router_speed.py compares
every twin with its original on every ASCII character and on random ASCII strings.
"""

from __future__ import annotations

import re

ASCII_SPACE = r"[\t-\r\x1c- ]"  # the ASCII characters str.isspace() and Unicode-mode \s accept


class AsciiTwin:
    """``pattern`` compiled as is (``original``) and, for ASCII text, ``ascii_pattern`` (default: the
    same pattern) compiled with ``re.ASCII`` (``twin``)."""

    __slots__ = ("original", "twin")

    def __init__(self, pattern: str, ascii_pattern: str | None = None) -> None:
        self.original = re.compile(pattern)
        self.twin = re.compile(pattern if ascii_pattern is None else ascii_pattern, re.ASCII)

    def findall(self, text: str) -> list[str]:
        return (self.twin if text.isascii() else self.original).findall(text)

    def sub(self, repl: str, text: str) -> str:
        return (self.twin if text.isascii() else self.original).sub(repl, text)

    def search(self, text: str) -> re.Match[str] | None:
        return (self.twin if text.isascii() else self.original).search(text)
