"""Access tokens: the ones this machine holds, finding them in text and files, and scrubbing them out.

The card (rendering) and the hub checks (release folders, index folders) both use this one module, so
"what counts as a secret" is decided in one place. A finding names why, never the secret itself.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import constants
from huggingface_hub.utils import get_stored_tokens

TOKEN_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_API_TOKEN")
# A Hugging Face user access token: "hf_" and 30+ letters/digits (identifiers like hf_hub_download have "_"),
# not inside a longer word. A bytes pattern with a literal start scans fast; the word check is done apart.
TOKEN_PATTERN = re.compile(rb"hf_[A-Za-z0-9]{30,}")
WORD_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
SCAN_CHUNK = 16 * 1024 * 1024
# Mapping keys whose string values are secrets whatever they hold (hub_token, api_key, password, ...).
SECRET_KEY = re.compile(r"(^|_)token$|secret|password|passwd|api_?key|credential", re.IGNORECASE)
REDACTED = "<redacted>"


def known_tokens() -> list[str]:
    """The tokens this machine would authenticate with (environment, login file, stored tokens).

    Read directly, not through `huggingface_hub.get_token`, which may refresh or exchange tokens online.
    """
    tokens = [os.environ.get(name, "") for name in TOKEN_ENV_VARS]
    try:
        tokens.append(Path(constants.HF_TOKEN_PATH).read_text())
    except OSError:
        pass
    tokens += get_stored_tokens().values()
    return sorted({t.strip() for t in tokens if len(t.strip()) >= 8})


def find_secret(text: str | bytes, tokens: Iterable[str] | None = None) -> str | None:
    """Why `text` holds a secret ("an hf_ token", "the value of HF_TOKEN"...), or None; never the secret."""
    data = text.encode("utf-8", "ignore") if isinstance(text, str) else text
    for token in known_tokens() if tokens is None else tokens:
        if token.encode() in data:
            return "a Hugging Face access token of this machine (environment or login)"
    for match in TOKEN_PATTERN.finditer(data):
        if match.start() == 0 or data[match.start() - 1] not in WORD_BYTES:
            return "a string shaped like a Hugging Face access token (hf_...)"
    return None


def _safetensors_header(path: Path) -> bytes:
    """The JSON header of a safetensors file (names, shapes, metadata): the only place text can hide."""
    with path.open("rb") as f:
        size = int.from_bytes(f.read(8), "little")
        return f.read(min(size, 100_000_000))


def file_secret(path: Path, tokens: list[str]) -> str | None:
    """`find_secret` over a file read in chunks (an index's embeddings can be gigabytes), chunks overlapping
    so a token across a boundary is still found. Compressed content (parquet pages) is not inflated."""
    if path.suffix == ".safetensors":
        return find_secret(_safetensors_header(path), tokens)
    overlap = max([len(t) for t in tokens] + [64])
    tail = b""
    with path.open("rb") as f:
        while chunk := f.read(SCAN_CHUNK):
            reason = find_secret(tail + chunk, tokens)
            if reason:
                return reason
            tail = chunk[-overlap:]
    return None


def scan_files(root: str | os.PathLike, names: Iterable[str]) -> list[str]:
    """A problem for every file (relative to `root`) holding an access token, naming the file, never the token."""
    root = Path(root)
    tokens = known_tokens()
    problems = []
    for name in names:
        reason = file_secret(root / name, tokens)
        if reason:
            problems.append(f"{name} contains {reason}")
    return problems


def scrub(value: Any, tokens: list[str]) -> Any:
    """A copy of `value` with secret-named string fields and token-bearing strings replaced by <redacted>."""
    if isinstance(value, Mapping):
        return {
            str(k): REDACTED if SECRET_KEY.search(str(k)) and isinstance(v, str) and v else scrub(v, tokens)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [scrub(v, tokens) for v in value]
    if isinstance(value, str) and find_secret(value, tokens):
        return REDACTED
    return value
