"""The README's sections and code blocks, so that tests run its commands exactly as printed (a
unique module name: test directories are not packages)."""

from __future__ import annotations

import re
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[3]
README = REPOSITORY / "README.md"

_HEADING = re.compile(r"^(#+) (.+)$", re.MULTILINE)
_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def section(title: str) -> str:
    """The text under the README heading `title`, up to the next heading of its level or above
    (headings inside code blocks do not count)."""
    text = README.read_text()
    outside_code = _BLOCK.sub(lambda block: " " * len(block.group(0)), text)
    headings = list(_HEADING.finditer(outside_code))
    for index, heading in enumerate(headings):
        if heading.group(2).strip() == title:
            level = len(heading.group(1))
            end = next(
                (later.start() for later in headings[index + 1 :] if len(later.group(1)) <= level),
                len(text),
            )
            return text[heading.end() : end]
    raise LookupError(f"README.md has no heading {title!r}")


def code_blocks(text: str, language: str) -> list[str]:
    """The fenced code blocks of `text` in `language` (`sh`, `python`), in order."""
    return [block.group(2) for block in _BLOCK.finditer(text) if block.group(1) == language]
