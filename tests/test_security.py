"""Security (issue #18): what a hostile client or file can make the project read, hide or hold.

- the Space reads only files a client uploaded (never a server path it names, never a FIFO), bounds the
  query length and keeps memory flat under a bounded load;
- the catalogue loader opens only regular files inside the dataset's folder;
- the release check finds tokens and pickles by content, whatever the file's name or encoding.

Tests needing the running Space (tests/test_space.py starts it) are marked `slow`.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import signal
import threading
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import save_file

import search as search_cli
from clipita import data, hub, secrets
from clipita.fileio import is_inside, read_regular_file, regular_file_problem
from clipita.index import MAX_QUERY_CHARS, check_queries
from space import answers
from tests.test_space import start_space

TOKEN = "hf_" + "Ab3" * 12  # shaped like a token, belongs to no one


@contextmanager
def no_hang(seconds: int = 60):
    """Fail (instead of hanging the suite) if the block does not finish in time."""

    def fail(*_):
        raise TimeoutError(f"blocked for over {seconds} s")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def png_bytes(colour=(200, 30, 30), size=(32, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


# ----- shared file checks (clipita.fileio) ------------------------------------------------------------------


def test_only_regular_files_inside_the_roots_are_read(tmp_path):
    inside, outside = tmp_path / "root", tmp_path / "elsewhere"
    inside.mkdir()
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"x" * 10)
    (inside / "link.png").symlink_to(outside / "secret.png")
    (inside / "ok.png").write_bytes(b"y" * 10)
    os.mkfifo(inside / "fifo.png")
    assert is_inside(inside / "ok.png", [inside])
    assert not is_inside(inside / "link.png", [inside])
    assert not is_inside(inside / ".." / "elsewhere" / "secret.png", [inside])
    assert not is_inside(str(tmp_path / "root-sibling"), [inside])  # a shared prefix is not inside
    assert regular_file_problem(inside / "fifo.png") == "not a regular file"
    assert "limit" in regular_file_problem(inside / "ok.png", max_bytes=5)
    with no_hang(10), pytest.raises(OSError, match="not a regular file"):
        read_regular_file(inside / "fifo.png", 100)
    assert read_regular_file(inside / "ok.png", 100) == b"y" * 10


# ----- 1. the Space reads only uploads ----------------------------------------------------------------------


@pytest.fixture
def upload_dir(tmp_path, monkeypatch):
    folder = tmp_path / "gradio-uploads"
    folder.mkdir()
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(folder))
    return folder


def test_read_upload_refuses_server_paths_fifos_and_oversized_files(tmp_path, upload_dir, monkeypatch):
    server_file = tmp_path / "server.png"
    server_file.write_bytes(png_bytes())
    for upload in (
        str(server_file),
        {"path": str(server_file)},
        {"path": str(upload_dir / ".." / "server.png")},
    ):
        with pytest.raises(answers.BadInput, match="not uploaded to this app"):
            answers.read_upload(upload)
    (upload_dir / "link.png").symlink_to(server_file)
    with pytest.raises(answers.BadInput, match="not uploaded to this app"):
        answers.read_upload({"path": str(upload_dir / "link.png")})
    os.mkfifo(upload_dir / "pipe.png")  # nobody writes to it: opening it for reading would block
    with no_hang(10), pytest.raises(answers.BadInput, match="not an uploaded image file"):
        answers.read_upload({"path": str(upload_dir / "pipe.png"), "meta": {"_type": "gradio.FileData"}})
    (upload_dir / "good.png").write_bytes(png_bytes())
    assert answers.read_upload({"path": str(upload_dir / "good.png")}).size == (32, 32)
    monkeypatch.setattr(answers, "MAX_UPLOAD_BYTES", 10)
    with pytest.raises(answers.BadInput, match="at most"):
        answers.read_upload({"path": str(upload_dir / "good.png")})


@pytest.fixture(scope="session")
def live_space(tmp_path_factory):
    """The running Space of tests/test_space.py (started once per session, shared)."""
    running = start_space(tmp_path_factory.getbasetemp() / "space")
    yield running
    running.stop()


def call_raw(url: str, endpoint: str, payload: list, timeout: float = 60) -> tuple[str, str]:
    """POST /gradio_api/call/<endpoint> as any HTTP client can, then read the result: (event, data);
    a refused request is ("http <status>", its body)."""
    body = json.dumps({"data": payload}).encode()
    request = urllib.request.Request(
        f"{url}gradio_api/call/{endpoint}", body, {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            event_id = json.loads(response.read())["event_id"]
    except urllib.error.HTTPError as error:
        return f"http {error.code}", error.read().decode()
    with urllib.request.urlopen(f"{url}gradio_api/call/{endpoint}/{event_id}", timeout=timeout) as response:
        text = response.read().decode()
    events = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("event:")]
    datas = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("data:")]
    return events[-1], datas[-1]


@pytest.mark.slow
@pytest.mark.parametrize("with_meta", [False, True], ids=["no-meta", "meta"])
def test_classify_image_never_opens_a_server_path(live_space, tmp_path, with_meta):
    space = live_space
    server_file = tmp_path / "server-only.png"  # a real image outside every upload: it must not be classified
    server_file.write_bytes(png_bytes())
    os.mkfifo(tmp_path / "pipe.png")
    meta = {"meta": {"_type": "gradio.FileData"}} if with_meta else {}
    for path in (server_file, tmp_path / "pipe.png"):
        with no_hang(60):
            event, message = call_raw(
                space.url, "classify_image", [{"path": str(path), **meta}, "", "", 5, "clip-ita"]
            )
        assert event == "error", f"{path.name} was read: {message}"
        if not with_meta:  # our own message; with meta Gradio refuses it before the handler runs
            assert "not uploaded to this app" in message
    with no_hang(60):  # nothing is left blocked: a real upload still gets its answer
        event, _ = call_raw(space.url, "search_category", ["Sports", 3, "clip-ita"])
    assert event == "complete"


# ----- 4. bounded queries and a bounded load ------------------------------------------------------------------


def test_long_queries_are_refused_before_any_work(capsys):
    long = "Home > " * (MAX_QUERY_CHARS // 7 + 1)
    check_queries("x" * MAX_QUERY_CHARS)  # at the limit: fine
    with pytest.raises(ValueError, match=f"the limit is {MAX_QUERY_CHARS}"):
        check_queries([long])
    # the Space: refused before the model is touched (no variant needed), message names the limit
    with pytest.raises(answers.BadInput, match=str(MAX_QUERY_CHARS)):
        answers.search_category(None, "x" * 20_000_000, 5)
    # search.py: exit 2, one line, before the index is even opened
    assert search_cli.main(["query", "--index", "no/such/index", long]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the query is") and len(err.splitlines()) == 1


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


LOAD_REQUESTS, LOAD_THREADS, RSS_GROWTH_LIMIT_MB = 48, 4, 64
HUGE_QUERY = "Kitchen " * (4 * 2**20 // 8)  # 4 MB: refused before Gradio reads it
LONG_QUERY = "Kitchen " * (40 * 1024 // 8)  # 40 kB: under the request limit, over the query limit


@pytest.mark.slow
def test_memory_stays_flat_under_a_bounded_load_of_huge_queries(live_space):
    """A fixed number of over-long queries (half 4 MB, half 40 kB) from 4 threads, loopback only: each
    gets a clear error, and the server's RSS grows by less than RSS_GROWTH_LIMIT_MB (unbounded, one 20 MB
    query took 1.5 GB and Gradio keeps every session's last inputs)."""
    space = live_space
    for query in (HUGE_QUERY, LONG_QUERY, "Sports"):  # warm: first-call allocations of each path
        call_raw(space.url, "search_category", [query, 3, "clip-ita"])
    before = rss_bytes(space.process.pid)
    seen: list[tuple[str, str, str]] = []

    def worker(queries: list[str]) -> None:
        for query in queries:
            event, message = call_raw(space.url, "search_category", [query, 3, "clip-ita"], timeout=120)
            seen.append((query, event, message))

    share = [HUGE_QUERY, LONG_QUERY] * (LOAD_REQUESTS // LOAD_THREADS // 2)
    threads = [threading.Thread(target=worker, args=(share,)) for _ in range(LOAD_THREADS)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "the load test did not finish"
    elapsed = time.monotonic() - start
    growth_mb = (rss_bytes(space.process.pid) - before) / 2**20
    assert len(seen) == LOAD_REQUESTS
    for query, event, message in seen:
        expected = ("http 413", "request body over") if query is HUGE_QUERY else ("error", "the limit is")
        assert event == expected[0] and expected[1] in message and str(MAX_QUERY_CHARS) in message
    print(f"RSS grew {growth_mb:.1f} MB over {LOAD_REQUESTS} requests in {elapsed:.1f} s")
    assert growth_mb < RSS_GROWTH_LIMIT_MB, f"RSS grew {growth_mb:.0f} MB over {LOAD_REQUESTS} requests"
    event, _ = call_raw(space.url, "search_category", ["Sports", 3, "clip-ita"])
    assert event == "complete", f"the server stopped answering after the load ({elapsed:.0f} s)"


def test_the_space_bounds_its_queue_and_query_box():
    from space import app

    source = Path(app.__file__).read_text()
    for bound in ("max_size=QUEUE_MAX_SIZE", "default_concurrency_limit=QUEUE_CONCURRENCY",
                  "state_session_capacity=STATE_SESSIONS", "Middleware(RequestSizeLimit)"):  # fmt: skip
        assert bound in source
    assert app.QUEUE_MAX_SIZE > 0 and app.QUEUE_CONCURRENCY >= 1
    assert app.MAX_REQUEST_BYTES > 8 * MAX_QUERY_CHARS  # a query at the limit always fits


# ----- 2. the loader opens only regular files inside the dataset folder --------------------------------------


def test_loader_skips_images_outside_the_folder_and_non_regular_files(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    folder, outside = tmp_path / "catalogue", tmp_path / "private"
    (folder / "train").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.png").write_bytes(png_bytes((1, 2, 3)))
    for i in range(4):
        (folder / "train" / f"ok{i}.png").write_bytes(png_bytes((40 * i, 20, 20)))
    (folder / "train" / "link.png").symlink_to(outside / "secret.png")
    os.mkfifo(folder / "train" / "pipe.png")
    names = {
        "ok0": "ok0.png", "ok1": "ok1.png", "ok2": "ok2.png", "ok3": "ok3.png",
        "absolute": str(outside / "secret.png"), "dotdot": "../../private/secret.png",
        "symlink": "link.png", "fifo": "pipe.png",
    }  # fmt: skip
    rows = [
        {"product_id": pid, "file_name": name, "title": pid, "category": "A > B"}
        for pid, name in names.items()
    ]
    (folder / "train" / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))

    def load(**kwargs):
        with no_hang(120):
            dsd, report = data.load_catalogue(
                str(folder), return_report=True, attributes_column=None, **kwargs
            )
        return sorted(pid for split in dsd.values() for pid in split["product_id"]), report

    kept, report = load()
    assert kept == ["ok0", "ok1", "ok2", "ok3"]
    assert report.skipped[data.OUTSIDE] == 3 and set(report.examples[data.OUTSIDE]) == {
        "absolute",
        "dotdot",
        "symlink",
    }
    assert report.examples["image not a regular file"] == ["fifo"]
    assert "3 image outside the dataset folder in column 'image'" in str(report)
    # the explicit opt-in reads images stored elsewhere; a FIFO is still never opened
    kept, report = load(allow_external_images=True)
    assert kept == ["absolute", "dotdot", "ok0", "ok1", "ok2", "ok3", "symlink"]
    assert report.examples["image not a regular file"] == ["fifo"]


def test_loader_flag_reaches_the_loader():
    import argparse

    from clipita import cli

    args = cli.add_loader_arguments(argparse.ArgumentParser()).parse_args(["--allow_external_images"])
    assert args.allow_external_images is True


# ----- 3. the release check reads content, not names ------------------------------------------------------


def _png_with_text(kind: bytes, body: bytes) -> bytes:
    raw = png_bytes()
    chunk = len(body).to_bytes(4, "big") + kind + body
    chunk += zlib.crc32(kind + body).to_bytes(4, "big")
    return raw[:33] + chunk + raw[33:]  # after the 8-byte signature and the 25-byte IHDR chunk


def _deflated_zip(path: Path, member: str, text: str) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(member, text)


SECRET_FILES = {
    "safetensors tensor data": lambda p: save_file(
        {"notes": np.frombuffer(TOKEN.encode(), dtype=np.uint8).copy()}, str(p / "extra.safetensors")
    ),
    "gzip": lambda p: (p / "notes.txt.gz").write_bytes(gzip.compress(f"token={TOKEN}\n".encode())),
    "utf-16 text": lambda p: (p / "notes.txt").write_bytes(f"token={TOKEN}\n".encode("utf-16")),
    "utf-32 text": lambda p: (p / "notes.txt").write_bytes(f"token={TOKEN}\n".encode("utf-32")),
    "png zTXt": lambda p: (p / "plot.png").write_bytes(
        _png_with_text(b"zTXt", b"Comment\0\0" + zlib.compress(TOKEN.encode()))
    ),
    "png compressed iTXt": lambda p: (p / "plot.png").write_bytes(
        _png_with_text(b"iTXt", b"Comment\0\1\0en\0\0" + zlib.compress(TOKEN.encode()))
    ),
    "deflated zip member": lambda p: _deflated_zip(p / "logs.zip", "notes.txt", f"token={TOKEN}\n" * 3),
}


@pytest.mark.parametrize("make", SECRET_FILES.values(), ids=SECRET_FILES.keys())
def test_release_check_finds_tokens_in_decoded_content(tmp_path, make):
    make(tmp_path)
    problems = hub.scan_for_secrets(tmp_path)
    assert len(problems) == 1 and "hf_" in problems[0] and TOKEN not in problems[0]


def test_a_token_split_across_chunks_of_a_compressed_file_is_found(tmp_path, monkeypatch):
    monkeypatch.setattr(secrets, "SCAN_CHUNK", 1000)
    text = "x" * 990 + " " + TOKEN + " " + "y" * 3000
    (tmp_path / "log.gz").write_bytes(gzip.compress(text.encode("utf-16-le")))
    assert hub.scan_for_secrets(tmp_path)


def test_release_check_passes_clean_files(tmp_path):
    save_file({"w": np.zeros(64, dtype=np.float32)}, str(tmp_path / "model.safetensors"), {"format": "np"})
    (tmp_path / "notes.txt.gz").write_bytes(gzip.compress(b"hf_hub_download is a function name"))
    (tmp_path / "plot.png").write_bytes(
        _png_with_text(b"zTXt", b"Software\0\0" + zlib.compress(b"matplotlib"))
    )
    np.save(tmp_path / "embeddings.npy", np.ones((4, 8), dtype=np.float32))
    (tmp_path / "README.md").write_text("---\nlicense: mit\n---\n# Model.\n")
    assert hub.scan_for_secrets(tmp_path) == []
    assert hub.find_pickles(tmp_path, hub.release_files(tmp_path)) == []


PICKLE_FILES = {
    "npy object array": lambda p: np.save(p / "embeddings.npy", np.array([{"a": 1}], dtype=object)),
    "torch zip as .pth.tar": lambda p: torch.save({"w": torch.zeros(2)}, p / "best.pth.tar"),
    "no suffix": lambda p: (p / "state").write_bytes(pickle.dumps({"step": 1})),
    "protocol 0 with a global": lambda p: (p / "config.txt").write_bytes(pickle.dumps(Path, protocol=0)),
    "gzip of a pickle": lambda p: (p / "cache.gz").write_bytes(gzip.compress(pickle.dumps([1, 2]))),
    "npz of objects": lambda p: np.savez(p / "extra.npz", a=np.array([None], dtype=object)),
}


@pytest.mark.parametrize("make", PICKLE_FILES.values(), ids=PICKLE_FILES.keys())
def test_release_check_finds_pickles_by_content(tmp_path, make):
    make(tmp_path)
    (tmp_path / hub.INDEX_MANIFEST).write_text("{}")
    problems = hub.check_index_folder(tmp_path)
    assert len(problems) == 1 and problems[0].startswith("pickle-based files would be uploaded"), problems
