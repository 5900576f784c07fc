"""The docs cannot drift: every `servicedesk-etl <command> [--flags]` they show exists in that command's `--help`.

Mentions are read from code in README.md and docs/*.md: fenced blocks line by line and inline code
spans (which may wrap across lines). A mention runs to the end of its line or span, or to a shell
separator (`|`, `;`, `&&`, ` #`); every `--flag` in it must appear in `servicedesk-etl <command> --help`.
Relative links in the same files must point at files that exist.
"""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from servicedesk_etl.cli import main

from .conftest import REPO_ROOT

DOCUMENTS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^(```|~~~)")
_INLINE = re.compile(r"(?<!`)`([^`]+)`(?!`)")
_MENTION = re.compile(r"(?<![\w-])servicedesk-etl\s+(?P<command>[a-z][a-z0-9-]*)(?P<rest>.*)")
_SEPARATOR = re.compile(r"\s\||;|&&|\s#|(?<![\w-])servicedesk-etl\s")
_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
_LINK = re.compile(r"\]\((?!https?://|#|mailto:)(?P<target>[^)#\s]+)(?:#[^)]*)?\)")


@dataclass(frozen=True)
class Mention:
    document: str
    line: int
    command: str
    flags: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.document}:{self.line}: servicedesk-etl {self.command} {' '.join(self.flags)}".rstrip()


def code_snippets(text: str) -> list[tuple[int, str]]:
    """(line number, code) for every line of a fenced block and every inline code span elsewhere."""
    snippets: list[tuple[int, str]] = []
    prose: list[tuple[int, str]] = []
    in_fence = False
    for number, line in enumerate(text.splitlines(), start=1):
        if _FENCE.match(line.strip()):
            in_fence = not in_fence
        elif in_fence:
            snippets.append((number, line))
        else:
            prose.append((number, line))
    paragraph: list[tuple[int, str]] = []
    for number, line in [*prose, (0, "")]:
        if line.strip():
            paragraph.append((number, line))
            continue
        if paragraph:
            joined = "\n".join(text for _, text in paragraph)
            for match in _INLINE.finditer(joined):
                first_line = paragraph[0][0] + joined[: match.start()].count("\n")
                snippets.append((first_line, match.group(1).replace("\n", " ")))
        paragraph = []
    return snippets


def mentions_in(text: str, document: str) -> list[Mention]:
    found = []
    for number, code in code_snippets(text):
        position = 0
        while (match := _MENTION.search(code, position)) is not None:
            rest = match.group("rest")
            end = _SEPARATOR.search(rest)
            scope = rest[: end.start()] if end else rest
            found.append(Mention(document, number, match.group("command"), tuple(_FLAG.findall(scope))))
            position = match.start("rest")
    return found


def all_mentions() -> list[Mention]:
    return [
        mention
        for path in DOCUMENTS
        for mention in mentions_in(path.read_text(encoding="utf-8"), str(path.relative_to(REPO_ROOT)))
    ]


@cache
def help_text(*args: str) -> tuple[int, str]:
    """`servicedesk-etl ARGS --help`: (exit code, everything printed), wide enough that nothing wraps."""
    capture = pytest.MonkeyPatch()
    capture.setenv("COLUMNS", "250")
    capture.setenv("TERMINAL_WIDTH", "250")
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([*args, "--help"])
    finally:
        capture.undo()
    return code, out.getvalue() + err.getvalue()


def problems_with(mention: Mention) -> list[str]:
    """What `--help` does not confirm about a mention (empty when the docs and the CLI agree)."""
    code, top = help_text()
    assert code == 0, top
    if not re.search(rf"(?<![\w-]){re.escape(mention.command)}(?![\w-])", top):
        return [f"{mention}: no command {mention.command!r} in `servicedesk-etl --help`"]
    code, text = help_text(mention.command)
    if code != 0:
        return [f"{mention}: `servicedesk-etl {mention.command} --help` exits {code}"]
    offered = set(_FLAG.findall(text))
    return [f"{mention}: `servicedesk-etl {mention.command} --help` has no {flag}" for flag in mention.flags
            if flag not in offered]


MENTIONS = all_mentions()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("```bash\nservicedesk-etl run --source S.db --json\n```\n", [("run", ("--source", "--json"))]),
        ("Use `servicedesk-etl rollback` / `status` now.", [("rollback", ())]),
        ("Run `servicedesk-etl profile --source\nS.db --report r.md` first.", [("profile", ("--source", "--report"))]),
        ("```\n.venv/bin/servicedesk-etl ui  # or: dagster dev -w workspace.yaml\n```", [("ui", ())]),
        ("```\nservicedesk-etl backup --output d && servicedesk-etl verify --backup b\n```",
         [("backup", ("--output",)), ("verify", ("--backup",))]),
        ("the `servicedesk-etl` CLI and `servicedesk_etl.cli`", []),
    ],
)
def test_mentions_are_read_from_fenced_blocks_and_inline_code(text: str, expected: list[tuple[str, tuple[str, ...]]]):
    assert [(m.command, m.flags) for m in mentions_in(text, "sample.md")] == expected


def test_the_docs_mention_the_commands_at_all():
    commands = {mention.command for mention in MENTIONS}
    assert {"run", "demo", "profile", "clean", "migrate", "rollback", "status", "ui", "preflight"} <= commands


def test_a_command_or_flag_the_cli_lacks_is_reported():
    assert problems_with(Mention("sample.md", 1, "frobnicate", ()))
    assert problems_with(Mention("sample.md", 1, "run", ("--no-such-flag",))) == [
        "sample.md:1: servicedesk-etl run --no-such-flag: `servicedesk-etl run --help` has no --no-such-flag"
    ]
    assert problems_with(Mention("sample.md", 1, "run", ("--source", "--json"))) == []


@pytest.mark.parametrize("mention", MENTIONS, ids=str)
def test_every_documented_command_and_flag_is_in_its_help(mention: Mention):
    assert problems_with(mention) == []


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_relative_links_point_at_files_that_exist(document: Path):
    missing = [match.group("target") for match in _LINK.finditer(document.read_text(encoding="utf-8"))
               if not (document.parent / match.group("target")).exists()]
    assert missing == []
