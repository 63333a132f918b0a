"""`UploadReceiver`'s state machine without a server: bodies fed chunk by chunk through a
real starlette `Request`, a fake object store that keeps what `put_stream` completes.
Whatever goes wrong, the answer is the right `UploadError` and the store holds nothing
(no object, no write in progress); test_documents.py does the same over HTTP with the real
stores."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from starlette.requests import Request

from services.xds_api.upload import (
    METADATA_LIMIT,
    ChunkPipe,
    State,
    Upload,
    UploadError,
    UploadReceiver,
)
from storage.objectstore import Readable
from tests.media import FormPart, form_body
from vna.documents import mime

KEY = "documents/2026/01/entry"
ALLOWED = frozenset({"application/pdf", "video/mp4"})
MAX = 1 << 20
PDF = b"%PDF-1.4\n" + os.urandom(20_000)  # libmagic: application/pdf; larger than the head
SMALL_PDF = b"%PDF-1.4\n%small\n"  # shorter than the sniffed head
ELF = b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 8 + b"\x02\x00\x3e\x00" + b"\x00" * 4000
META = {"patientId": "191212121212", "classCode": "report"}


class FakeStore:
    """Keeps what `put_stream` completes, like the real stores: a failed read leaves no
    object. `fail_after` bytes in, `put_stream` raises `error` (a disk that fills up)."""

    def __init__(self, fail_after: int | None = None,
                 error: BaseException | None = None,
                 delete_error: BaseException | None = None, complete_after: float = 0) -> None:
        self.objects: dict[str, bytes] = {}
        self.content_types: dict[str, str] = {}
        self.writing: set[str] = set()
        self.puts = 0
        self.deleted: list[str] = []
        self.fail_after = fail_after
        self.error = error
        self.delete_error = delete_error
        self.complete_after = complete_after  # seconds from the last byte to the object

    def put_stream(self, key: str, data: Readable, *, content_type: str) -> None:
        self.puts += 1
        self.writing.add(key)
        try:
            buf = bytearray()
            while chunk := data.read(256 << 10):
                buf += chunk
                if self.fail_after is not None and len(buf) >= self.fail_after:
                    assert self.error is not None
                    raise self.error
            time.sleep(self.complete_after)  # S3: CompleteMultipartUpload
            self.objects[key] = bytes(buf)
            self.content_types[key] = content_type
        finally:
            self.writing.discard(key)

    def delete(self, key: str) -> None:
        self.deleted.append(key)
        if self.delete_error is not None:
            raise self.delete_error
        self.objects.pop(key, None)

    @property
    def empty(self) -> bool:
        return not self.objects and not self.writing


# -- bodies and requests --------------------------------------------------------------------

Part = FormPart


def form(parts: Iterable[Part], boundary: str = "test-b", end: bool = True) -> bytes:
    return form_body(parts, boundary, end)


def metadata(**extra: object) -> Part:
    return ("metadata", None, "application/json", json.dumps({**META, **extra}).encode())


def file(data: bytes = PDF, filename: str | None = "report.pdf",
         ctype: str | None = "application/pdf") -> Part:
    return ("file", filename, ctype, data)


def pieces(body: bytes, size: int) -> list[bytes]:
    return [body[i:i + size] for i in range(0, len(body), size)]


def request(chunks: list[bytes], *, content_type: str = "multipart/form-data; boundary=test-b",
            content_length: int | None = None, disconnect: bool = False,
            stall: asyncio.Event | None = None) -> Request:
    """A request whose body arrives in `chunks`; then the end, a hang-up (`disconnect`), or
    nothing until `stall` is set."""
    headers = [(b"content-type", content_type.encode())]
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    queue: list[dict[str, Any]] = [{"type": "http.request", "body": c, "more_body": True}
                                   for c in chunks]

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(0)  # a network read lets the loop run
        if queue:
            return queue.pop(0)
        if stall is not None:
            await stall.wait()
        if disconnect:
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": b"", "more_body": False}

    return Request({"type": "http", "method": "POST", "path": "/api/v1/documents",
                    "headers": headers, "query_string": b""}, receive)


class Recorder:
    """An `on_metadata` that parses the JSON and notes what the store had at that time."""

    def __init__(self, refuse: UploadError | None = None) -> None:
        self.calls: list[tuple[State, int]] = []
        self.refuse = refuse

    def __call__(self, raw: bytes) -> Any:
        self.calls.append((self.receiver.state, self.store.puts))
        if self.refuse is not None:
            raise self.refuse
        return SimpleNamespace(**json.loads(raw))

    def bind(self, receiver: UploadReceiver, store: FakeStore) -> None:
        self.receiver, self.store = receiver, store


def receiver(store: FakeStore, recorder: Recorder | None = None,
             max_bytes: int = MAX) -> tuple[UploadReceiver, Recorder]:
    recorder = recorder or Recorder()
    r = UploadReceiver(store, KEY, allowed=ALLOWED, max_bytes=max_bytes, on_metadata=recorder)
    recorder.bind(r, store)
    return r, recorder


def receive(r: UploadReceiver, req: Request) -> Upload:
    return asyncio.run(r.receive(req))


def refused(r: UploadReceiver, req: Request) -> UploadError:
    with pytest.raises(UploadError) as info:
        receive(r, req)
    assert r.state is State.DISCARDED
    return info.value


# -- accepted ---------------------------------------------------------------------------------

@pytest.mark.parametrize("chunk", [1, 7, 1000, 8192, 1 << 20])
def test_metadata_first_is_checked_before_anything_is_stored(chunk: int) -> None:
    store = FakeStore()
    r, rec = receiver(store)
    upload = receive(r, request(pieces(form([metadata(), file()]), chunk)))
    assert rec.calls == [(State.IN_METADATA, 0)]  # before the writer was started
    assert r.state is State.STORED
    obj = upload.object
    assert (obj.storage_key, obj.size, obj.mime_type, obj.filename) == (
        KEY, len(PDF), "application/pdf", "report.pdf")
    assert obj.sha256 == hashlib.sha256(PDF).hexdigest()
    assert store.objects == {KEY: PDF} and store.content_types == {KEY: "application/pdf"}
    assert upload.metadata.patientId == META["patientId"]


@pytest.mark.parametrize("content", [PDF, SMALL_PDF], ids=["large", "small"])
@pytest.mark.parametrize("chunk", [1, 1000, 1 << 20])
def test_file_first_then_metadata(content: bytes, chunk: int) -> None:
    store = FakeStore()
    r, rec = receiver(store)
    upload = receive(r, request(pieces(form([file(content), metadata()]), chunk)))
    assert rec.calls == [(State.IN_METADATA, 1)]  # the file was on its way already
    assert store.objects == {KEY: content} and upload.object.size == len(content)


def test_an_agreeing_late_claim_and_no_content_type_are_accepted() -> None:
    store = FakeStore()
    r, _ = receiver(store)
    body = form([file(ctype=None, filename=None), metadata(mimeType="application/pdf")])
    upload = receive(r, request(pieces(body, 4096)))
    assert upload.object.filename is None and store.objects == {KEY: PDF}


def test_the_epilogue_after_the_closing_boundary_is_not_read() -> None:
    store = FakeStore()
    r, _ = receiver(store)
    body = form([metadata(), file()])
    receive(r, request([body, b"epilogue", b"never read: not multipart at all"]))
    assert store.objects == {KEY: PDF}


def test_discard_after_receive_deletes_the_object() -> None:
    store = FakeStore()
    r, _ = receiver(store)

    async def run() -> None:
        await r.receive(request([form([metadata(), file()])]))
        assert store.objects
        await r.discard()
        await r.discard()  # twice is harmless

    asyncio.run(run())
    assert r.state is State.DISCARDED and store.empty and store.deleted == [KEY]


def test_a_failing_delete_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    store = FakeStore(delete_error=ConnectionError("S3 gone"))
    r, _ = receiver(store)

    async def run() -> None:
        await r.receive(request([form([metadata(), file()])]))
        await r.discard()

    asyncio.run(run())
    assert store.deleted == [KEY]
    assert "could not remove the object of a refused upload" in caplog.text


def test_a_receiver_receives_once() -> None:
    r, _ = receiver(FakeStore())
    receive(r, request([form([metadata(), file()])]))
    with pytest.raises(RuntimeError):
        receive(r, request([form([metadata(), file()])]))


# -- refused: nothing left --------------------------------------------------------------------

CASES: dict[str, tuple[bytes, int, str]] = {
    "two files": (form([metadata(), file(), file()]), 400, "send one `file` part only"),
    "two metadata": (form([metadata(), metadata(), file()]), 400,
                     "send one `metadata` part only"),
    "missing metadata": (form([file()]), 400, "the `metadata` part is missing"),
    "missing file": (form([metadata()]), 400, "the `file` part is missing"),
    "other part": (form([metadata(), ("note", None, None, b"x"), file()]), 400,
                   "unexpected form field 'note': send `metadata` and `file`"),
    "no name": (b"--test-b\r\nContent-Disposition: form-data\r\n\r\nx\r\n--test-b--\r\n", 400,
                "each part needs Content-Disposition: form-data; name=..."),
    "not form-data": (b"--test-b\r\nContent-Disposition: attachment; name=\"file\"\r\n\r\n"
                      b"x\r\n--test-b--\r\n", 400,
                      "each part needs Content-Disposition: form-data; name=..."),
    "truncated before the end": (form([metadata(), file()], end=False), 400,
                                 "the upload is incomplete: the multipart body ended before "
                                 "its closing boundary"),
    "truncated in the file": (form([metadata(), file()])[:10_000], 400,
                              "the upload is incomplete"),
    "truncated, file first": (form([file()])[:15_000], 400, "the upload is incomplete"),
    "bad type": (form([metadata(), file(ELF, ctype=None)]), 415,
                 "content is application/x-"),
    "declared otherwise in the part": (form([metadata(), file(ctype="video/mp4")]), 415,
                                       "declared as video/mp4 but the content is "
                                       "application/pdf"),
    "declared otherwise in metadata first": (
        form([metadata(mimeType="video/mp4"), file()]), 415,
        "declared as video/mp4 but the content is application/pdf"),
    "declared otherwise in metadata last": (
        form([file(), metadata(mimeType="video/mp4")]), 415,
        "declared as video/mp4 but the content is application/pdf"),
    "declared otherwise after a small file": (
        form([file(SMALL_PDF), metadata(mimeType="video/mp4")]), 415,
        "declared as video/mp4 but the content is application/pdf"),
    "empty file": (form([metadata(), file(b"")]), 400, "the `file` part is empty"),
    "path in filename": (form([metadata(), file(filename="../../etc/passwd")]), 400,
                         "filename must be a plain file name"),
    "metadata over 64 KiB": (form([metadata(note="x" * METADATA_LIMIT), file()]), 400,
                             "the metadata part is larger than 64 KiB"),
    "over the limit, metadata first": (form([metadata(), file(PDF * 60)]), 413,
                                       f"the document is larger than {MAX} bytes"),
    "over the limit, file first": (form([file(PDF * 60), metadata()]), 413,
                                   f"the document is larger than {MAX} bytes"),
    "malformed": (b"garbage before any boundary\r\n--test-b--\r\n", 400,
                  "the multipart body is malformed"),
    "malformed header": (b"--test-b\r\nContent Disposition: form-data\r\n\r\nx\r\n", 400,
                         "the multipart body is malformed"),
    "too many headers": (b"--test-b\r\n" + b"X-A: b\r\n" * 9 + b"\r\nx\r\n--test-b--\r\n",
                         400, "the multipart body is malformed"),
}


@pytest.mark.parametrize("chunk", [1 << 20, 1000, 1])
@pytest.mark.parametrize("case", list(CASES))
def test_refused_uploads_leave_nothing(case: str, chunk: int) -> None:
    body, status, detail = CASES[case]
    if chunk == 1 and len(body) > 30_000:
        pytest.skip("byte by byte only for small bodies")
    store = FakeStore()
    r, _ = receiver(store)
    err = refused(r, request(pieces(body, chunk)))
    assert (err.status, err.detail[:len(detail)]) == (status, detail), err.detail
    assert store.empty


def test_over_the_limit_midstream_aborts_the_writer() -> None:
    """No Content-Length: the limit is enforced as the bytes come, after the writer began."""
    store = FakeStore()
    r, _ = receiver(store)
    body = form([metadata(), file(PDF * 60)])
    err = refused(r, request(pieces(body, 64 << 10)))
    assert err.status == 413 and store.puts == 1 and store.empty


def test_content_length_over_the_limit_is_refused_before_reading() -> None:
    store = FakeStore()
    r, _ = receiver(store)
    body = form([metadata(), file()])
    req = request([body], content_length=MAX + METADATA_LIMIT + 4097)
    with pytest.raises(UploadError) as info:
        receive(r, req)
    assert info.value.status == 413 and store.puts == 0
    assert r.state is State.AWAITING_PART  # nothing was read, nothing to undo


@pytest.mark.parametrize("ctype", ["application/json", "multipart/form-data",
                                   "multipart/related; boundary=test-b"])
def test_not_form_data_is_415(ctype: str) -> None:
    r, _ = receiver(FakeStore())
    with pytest.raises(UploadError) as info:
        receive(r, request([form([metadata(), file()])], content_type=ctype))
    assert info.value.status == 415


def test_an_unusable_boundary_is_a_400() -> None:
    r, _ = receiver(FakeStore())
    err = refused(r, request([b"x"], content_type="multipart/form-data; boundary=" + "b" * 300))
    assert err.status == 400 and err.detail.startswith("the multipart body is malformed")


@pytest.mark.parametrize("where", [100, 10_000, -10])
def test_client_disconnect_leaves_nothing(where: int) -> None:
    """Hung up in the metadata, in the file, or just before the closing boundary."""
    store = FakeStore()
    r, _ = receiver(store)
    body = form([metadata(), file()])
    err = refused(r, request(pieces(body[:where], 4096), disconnect=True))
    assert (err.status, err.detail) == (
        400, "the client disconnected before the upload was complete")
    assert store.empty


@pytest.mark.parametrize(("error", "status"), [
    (OSError(errno.ENOSPC, "No space left on device"), 507),
    (ConnectionError("connection refused"), 503)])
@pytest.mark.parametrize("fail_after", [1, 300 << 10])
def test_writer_failure_is_the_stores_answer(error: BaseException, status: int,
                                             fail_after: int) -> None:
    store = FakeStore(fail_after=fail_after, error=error)
    r, _ = receiver(store, max_bytes=4 << 20)
    body = form([metadata(), file(PDF * 20)])
    err = refused(r, request(pieces(body, 16 << 10)))
    assert err.status == status and store.empty


def test_late_metadata_refused_aborts_the_writer() -> None:
    """The file was streaming when the metadata came and was refused: the writer is
    aborted, so no object is ever completed (nothing to delete)."""
    store = FakeStore()
    r, rec = receiver(store, Recorder(refuse=UploadError(403, "not your department")))
    err = refused(r, request(pieces(form([file(), metadata()]), 4096)))
    assert (err.status, err.detail) == (403, "not your department")
    assert store.puts == 1 and store.empty and store.deleted == []


def test_metadata_refused_first_stores_nothing_at_all() -> None:
    store = FakeStore()
    r, _ = receiver(store, Recorder(refuse=UploadError(422, "patientId: bad")))
    err = refused(r, request(pieces(form([metadata(), file()]), 4096)))
    assert err.status == 422 and store.puts == 0


def test_a_cancelled_request_leaves_nothing() -> None:
    """The task dies mid-file (server shutdown): the undo still runs to its end."""
    store = FakeStore()
    r, _ = receiver(store)
    stall = asyncio.Event()
    body = form([metadata(), file(PDF * 10)])

    async def run() -> None:
        task = asyncio.create_task(r.receive(request(pieces(body[:150_000], 8192),
                                                     stall=stall)))
        while store.puts == 0 or r.state is not State.STREAMING:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert r.state is State.DISCARDED and store.empty


def test_an_anyio_cancelled_request_still_deletes_what_the_writer_completes() -> None:
    """anyio cancels every await in a cancelled scope, the undo's too unless it is
    shielded: cancelled while the store completes the object, it is deleted afterwards."""
    store = FakeStore(complete_after=0.3)
    r, _ = receiver(store)

    async def run() -> None:
        with anyio.CancelScope() as scope:
            async def cancel_while_finishing() -> None:
                while r.state is not State.ENDED:
                    await asyncio.sleep(0.005)
                await asyncio.sleep(0.05)
                scope.cancel()

            canceller = asyncio.create_task(cancel_while_finishing())
            await r.receive(request([form([metadata(), file()])]))
        await canceller
        assert scope.cancelled_caught

    asyncio.run(run())
    assert r.state is State.DISCARDED and store.deleted == [KEY] and store.empty


# -- the pipe ---------------------------------------------------------------------------------

def test_the_pipe_holds_at_most_its_high_water_mark() -> None:
    """The producer waits while the reader is slow; the reader gets every byte in order."""
    chunks = [bytes([i]) * 1000 for i in range(50)]
    got: list[bytes] = []

    async def run() -> None:
        pipe = ChunkPipe(asyncio.get_running_loop(), high_water=4000)
        sent = 0

        async def produce() -> None:
            nonlocal sent
            for c in chunks:
                await pipe.send(c)
                sent += 1
            pipe.close()

        task = asyncio.create_task(produce())
        await asyncio.sleep(0.05)
        assert sent == 4 and not task.done()  # full: the fifth waits for room
        go = threading.Event()

        def drain() -> None:
            go.wait()
            while data := pipe.read(1500):
                got.append(data)
            pipe.reader_done()

        thread = threading.Thread(target=drain)
        thread.start()
        go.set()
        await task
        await asyncio.to_thread(thread.join)

    asyncio.run(run())
    assert b"".join(got) == b"".join(chunks)
    assert max(len(g) for g in got) <= 1500


def test_an_aborted_pipe_fails_its_reader() -> None:
    errors: list[BaseException] = []

    async def run() -> None:
        pipe = ChunkPipe(asyncio.get_running_loop())
        await pipe.send(b"x" * 10)

        def read() -> None:
            try:
                pipe.read()
            except Exception as exc:
                errors.append(exc)

        thread = threading.Thread(target=read)
        thread.start()
        await asyncio.sleep(0.02)
        pipe.abort()
        await asyncio.to_thread(thread.join)

    asyncio.run(run())
    assert len(errors) == 1 and "aborted" in str(errors[0])


def test_sniffing_needs_no_more_than_the_head() -> None:
    """The writer starts once SNIFF_BYTES are in, not at the end of the part."""
    store = FakeStore()
    states: list[State] = []
    r, _ = receiver(store)
    body = form([metadata(), file()])
    head_end = body.index(PDF[:100]) + mime.SNIFF_BYTES
    stall = asyncio.Event()

    async def run() -> None:
        task = asyncio.create_task(r.receive(request(pieces(body[:head_end], 1024),
                                                     stall=stall)))
        for _ in range(200):
            await asyncio.sleep(0.005)
            states.append(r.state)
            if r.state is State.STREAMING:
                break
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert states[-1] is State.STREAMING and store.empty

