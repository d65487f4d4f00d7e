"""A local HTTP server that serves model files the way download servers and the Hugging Face
Hub do, with scripted misbehaviour: a transfer dropped halfway, error statuses, a server
that ignores `Range`. It records every request. It runs in a thread, so synchronous
integration tests and Trio tests can both use it.

Hugging Face resolve URLs (`/{repo_id}/resolve/{revision}/{filename}`) are plain files
here too; every file response carries the headers `huggingface_hub` reads from a HEAD
(`X-Repo-Commit`, `ETag`), so the same server is a Hub mirror for `HF_ENDPOINT`.
"""

from __future__ import annotations

import hashlib
import http.server
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs

REPO_COMMIT = "0123456789abcdef0123456789abcdef01234567"
_RANGE = re.compile(r"bytes=(\d+)-$")


@attrs.frozen
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]


@attrs.define
class ModelFileServer:
    port: int = 0
    files: dict[str, Path] = attrs.field(factory=dict)
    # path -> status answered instead of the file
    statuses: dict[str, int] = attrs.field(factory=dict)
    # path -> bytes sent before the connection is dropped, once (the next request is served)
    drop_after: dict[str, int] = attrs.field(factory=dict)
    # paths whose GETs ignore Range and answer 200 with the whole file
    ignore_range: set[str] = attrs.field(factory=set)
    # path -> seconds to sleep between 64 KiB chunks (to watch progress); else 1 MiB chunks, no pause
    chunk_delay: dict[str, float] = attrs.field(factory=dict)
    requests: list[RecordedRequest] = attrs.field(factory=list)
    _etags: dict[Path, str] = attrs.field(factory=dict)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests_for(self, path: str, method: str = "GET") -> list[RecordedRequest]:
        return [request for request in self.requests if request.path == path and request.method == method]

    def etag_of(self, file: Path) -> str:
        if file not in self._etags:
            digest = hashlib.sha256()
            with file.open("rb") as content:
                for block in iter(lambda: content.read(1 << 20), b""):
                    digest.update(block)
            self._etags[file] = digest.hexdigest()
        return self._etags[file]

    @contextmanager
    def running(self) -> Iterator[ModelFileServer]:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), _handler_for(self))
        server.daemon_threads = True
        self.port = server.server_address[1]
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="model-file-server", daemon=True
        )
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()


def _handler_for(files: ModelFileServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self._answer(send_body=False)

        def do_GET(self) -> None:
            self._answer(send_body=True)

        def _answer(self, *, send_body: bool) -> None:
            path = self.path.split("?")[0]
            files.requests.append(RecordedRequest(self.command, path, dict(self.headers.items())))
            if path in files.statuses:
                self._status_only(files.statuses[path])
                return
            file = files.files.get(path)
            if file is None:
                self._status_only(404)
                return
            size = file.stat().st_size
            start = 0
            match = _RANGE.match(self.headers.get("Range", ""))
            if match and send_body and path not in files.ignore_range:
                start = int(match.group(1))
                if start >= size:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(size - start))
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", f'"{files.etag_of(file)}"')
            self.send_header("X-Repo-Commit", REPO_COMMIT)
            self.end_headers()
            if not send_body:
                return
            limit = files.drop_after.pop(path, None) if self.command == "GET" else None
            self._send_file(file, start, limit, files.chunk_delay.get(path, 0.0))

        def _send_file(self, file: Path, start: int, limit: int | None, delay: float) -> None:
            sent = 0
            with file.open("rb") as content:
                content.seek(start)
                while True:
                    block = content.read(1 << 16 if delay else 1 << 20)
                    if not block:
                        return
                    if limit is not None and sent + len(block) >= limit:
                        self.wfile.write(block[: limit - sent])
                        self.wfile.flush()
                        self.connection.shutdown(socket.SHUT_RDWR)  # dropped halfway
                        self.close_connection = True
                        return
                    try:
                        self.wfile.write(block)
                    except (BrokenPipeError, ConnectionResetError):
                        return
                    sent += len(block)
                    if delay:
                        time.sleep(delay)

        def _status_only(self, status: int) -> None:
            body = f"status {status}".encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(body)

    return Handler
