"""Access tokens: the ones this machine holds, finding them in text and files, and scrubbing them out.

The card (rendering) and the hub checks (release folders, index folders) both use this one module, so
"what counts as a secret" is decided in one place. A finding names why, never the secret itself.
"""

from __future__ import annotations

import gzip
import os
import re
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
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


# Text is searched in every encoding a file may hold it in: the patterns are encoded rather than the
# file decoded, so a gigabyte of embeddings is read once. (encoding, bytes per character)
ENCODINGS = (("utf-8", 1), ("utf-16-le", 2), ("utf-16-be", 2), ("utf-32-le", 4), ("utf-32-be", 4))


def _encoded_pattern(encoding: str) -> re.Pattern:
    """TOKEN_PATTERN for ASCII text stored in `encoding` (a character is its byte plus zero bytes)."""
    alnum = re.escape("A".encode(encoding)).replace(b"A", b"[A-Za-z0-9]")
    return re.compile(re.escape("hf_".encode(encoding)) + b"(?:" + alnum + b"){30,}")


_PATTERNS = {
    encoding: TOKEN_PATTERN if encoding == "utf-8" else _encoded_pattern(encoding)
    for encoding, _ in ENCODINGS
}


def find_secret(text: str | bytes, tokens: Iterable[str] | None = None) -> str | None:
    """Why `text` holds a secret ("an hf_ token", "the value of HF_TOKEN"...), or None; never the secret.
    Bytes are searched as UTF-8, UTF-16 and UTF-32 text (either byte order)."""
    data = text.encode("utf-8", "ignore") if isinstance(text, str) else text
    for token in known_tokens() if tokens is None else tokens:
        if any(token.encode(encoding) in data for encoding, _ in ENCODINGS):
            return "a Hugging Face access token of this machine (environment or login)"
    for encoding, width in ENCODINGS:
        for match in _PATTERNS[encoding].finditer(data):
            before = data[max(0, match.start() - width) : match.start()]
            if len(before) < width or before.decode(encoding, "replace").encode() not in _WORD_CHARS:
                return "a string shaped like a Hugging Face access token (hf_...)"
    return None


_WORD_CHARS = frozenset(bytes([b]) for b in WORD_BYTES)


# ----- the decoded content of a file: what a reader of it would see ---------------------------------------

GZIP_MAGIC, ZIP_MAGIC, PNG_MAGIC, PARQUET_MAGIC = b"\x1f\x8b", b"PK\x03\x04", b"\x89PNG\r\n\x1a\n", b"PAR1"


def _chunks(read: Callable[[int], bytes]) -> Iterator[bytes]:
    while chunk := read(SCAN_CHUNK):
        yield chunk


def _png_texts(path: Path) -> Iterator[bytes]:
    """The text of a PNG's tEXt / zTXt / iTXt chunks, inflated where compressed."""
    with path.open("rb") as f:
        f.read(8)
        while header := f.read(8):
            if len(header) < 8:
                return
            size, kind = int.from_bytes(header[:4], "big"), header[4:]
            body = f.read(size)
            f.read(4)  # CRC
            if kind == b"tEXt":
                yield body
            elif kind == b"zTXt":
                keyword, _, rest = body.partition(b"\0")
                yield keyword + b" " + zlib.decompressobj().decompress(rest[1:], 256 * 2**20)
            elif kind == b"iTXt":
                keyword, _, rest = body.partition(b"\0")
                compressed, text = rest[:1] == b"\1", rest[2:].split(b"\0", 2)[-1]
                yield (
                    keyword
                    + b" "
                    + (zlib.decompressobj().decompress(text, 256 * 2**20) if compressed else text)
                )
            elif kind == b"IEND":
                return


def _parquet_text(path: Path) -> Iterator[bytes]:
    """A parquet file's values and key-value metadata as JSON text (its pages may be compressed)."""
    import json

    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    metadata = parquet.schema_arrow.metadata or {}
    yield b" ".join(k + b" " + v for k, v in metadata.items())
    for batch in parquet.iter_batches(batch_size=4096):
        yield json.dumps(batch.to_pylist(), default=str).encode()


def content_streams(path: Path) -> Iterator[Iterator[bytes]]:
    """Every form of the file's content a reader could see, each as a stream of chunks: its bytes, and,
    by content (never by name), the inflated content of gzip, the members of a zip (torch checkpoints,
    .npz), PNG text chunks and parquet values."""
    with path.open("rb") as f:
        yield _chunks(f.read)
    with path.open("rb") as f:
        magic = f.read(8)
    if magic.startswith(GZIP_MAGIC):
        with gzip.open(path, "rb") as f:
            yield _chunks(f.read)
    elif magic.startswith(ZIP_MAGIC):
        with zipfile.ZipFile(path) as archive:
            for member in archive.infolist():
                with archive.open(member) as f:
                    yield _chunks(f.read)
    elif magic.startswith(PNG_MAGIC):
        yield _png_texts(path)
    elif magic.startswith(PARQUET_MAGIC):
        yield _parquet_text(path)


def file_secret(path: Path, tokens: list[str]) -> str | None:
    """`find_secret` over every content stream of a file (`content_streams`), read in chunks (an index's
    embeddings can be gigabytes), chunks overlapping so a token across a boundary is still found. A file
    whose compressed content does not unpack is reported, since what it hides cannot be checked."""
    overlap = 4 * max([len(t) for t in tokens] + [64])
    try:
        for stream in content_streams(path):
            tail = b""
            for chunk in stream:
                reason = find_secret(tail + chunk, tokens)
                if reason:
                    return reason
                tail = chunk[-overlap:]
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile, ValueError) as error:
        return f"content that cannot be unpacked to be checked ({type(error).__name__})"
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
