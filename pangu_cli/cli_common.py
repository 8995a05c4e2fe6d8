"""What every `pangu` command module shares: the two consoles and the stdout/stdin helpers."""

from __future__ import annotations

import json
import sys

from rich.console import Console

from pangu_cli.errors import UsageError

# Human output on stderr (Rich), results on stdout, so that commands compose in shell pipelines.
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)


def read_text_arg(value: str, what: str) -> str:
    """'-' reads stdin (UTF-8, BOM tolerated)."""
    if value != "-":
        return value
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{what} on stdin is not UTF-8 (byte {exc.start})",
                         "convert it, e.g. iconv -f GB18030 -t UTF-8") from None


def emit_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()
