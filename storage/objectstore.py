"""Object storage: one interface, two backends (local filesystem and S3 via the minio SDK).

Keys are deterministic, derived from the UID hierarchy (see `storage.keys`), so the same
SOP Instance always lands at the same key and a re-sent copy overwrites nothing new.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol

STREAM_CHUNK = 1 << 20


class Readable(Protocol):
    """Where streamed bytes come from: `read(n)` returns up to n bytes, b"" at the end, and
    raises if the producer failed (then nothing may be left behind)."""

    def read(self, n: int, /) -> bytes: ...


class ObjectNotFound(KeyError):
    pass


@dataclass(frozen=True)
class ObjectInfo:
    """An object as a listing gives it: its key, size, and when it was last written."""

    key: str
    size: int
    modified: datetime  # aware UTC
    version: str = ""  # what changes when the object is written again (inode, ETag)


@dataclass(frozen=True)
class PartialWrite:
    """A write that never completed: a temp file whose writer died (files) or an unfinished
    multipart upload (S3). Invisible to readers; it only takes space until discarded."""

    key: str
    started: datetime  # aware UTC
    upload_id: str | None = None


class ObjectStore(ABC):
    """Where archived bytes live. Implementations must make `put_file` atomic."""

    @abstractmethod
    def put_file(self, key: str, src: str | Path, *, move: bool = False,
                 durable: bool = True) -> None:
        """Store the file at `src` under `key`. With `move`, `src` may be consumed.

        With `durable` the object is on stable storage when this returns; otherwise the
        caller must call `make_durable` before acknowledging it.
        """

    def put_new(self, key: str, src: str | Path) -> bool | None:
        """Move `src` to `key` only if nothing is there: True if stored, False if an object
        exists, None if this backend cannot tell atomically (then nothing was done)."""
        return None

    @abstractmethod
    def claim_identical(self, key: str, src: str | Path, sha256: str) -> bool:
        """If the object at `key` has exactly the bytes of `src` (SHA-256 `sha256`), mark it
        written now (so that a sweep of objects without index rows, which may have listed
        it, leaves it) and return True; False if it is absent or differs. `src` stays."""

    @abstractmethod
    def put_stream(self, key: str, data: Readable, *, content_type: str) -> None:
        """Store a stream of unknown length under `key`, in constant memory. Durable when it
        returns; if `data.read` raises, no object and no partial upload remains."""

    @abstractmethod
    def make_durable(self, keys: Iterable[str]) -> None:
        """Flush objects written with `durable=False` to stable storage."""

    @abstractmethod
    def open(self, key: str) -> BinaryIO:
        """A readable binary stream of the object."""

    @abstractmethod
    def open_range(self, key: str, start: int, length: int) -> BinaryIO:
        """A readable stream of `length` bytes of the object from offset `start`."""

    def open_seekable(self, key: str, size: int) -> BinaryIO:
        """A seekable binary stream of the object (`size` bytes long) that reads only the
        parts asked for: what parsing a header and reading single frames needs. Here
        ranged reads (`open_range`) through a small read-ahead block; files are simply
        opened."""
        return RangedReader(self, key, size)  # type: ignore[return-value]

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def list_objects(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every complete object whose key starts with `prefix`."""

    @abstractmethod
    def remove_orphan(self, info: ObjectInfo) -> bool:
        """Delete the object listed as `info` if it is still that very object (not written
        again since it was listed); whether it was deleted."""

    @abstractmethod
    def partial_writes(self) -> Iterator[PartialWrite]:
        """The writes in this store that were begun and never completed."""

    @abstractmethod
    def discard_partial(self, partial: PartialWrite) -> None: ...

    @contextmanager
    def local_copy(self, key: str, directory: Path | None = None) -> Iterator[Path]:
        """A local file with the object's bytes, valid inside the `with` block; a copy is
        made in `directory` (the system's temp folder if None), so that a process that
        sweeps its own folder also sweeps what a kill -9 mid-copy left."""
        fd, name = tempfile.mkstemp(suffix=".dcm", dir=directory)
        try:
            with os.fdopen(fd, "wb") as out, self.open(key) as src:
                shutil.copyfileobj(src, out, 1 << 20)
            yield Path(name)
        finally:
            os.unlink(name)

    def read(self, key: str) -> bytes:
        with self.open(key) as f:
            return f.read()


FLUSH_THREADS = 8


def remove_stale_files(folder: Path | str, max_age: float) -> int:
    """Remove the files in `folder` nobody has written for `max_age` seconds (what dead or
    stuck writers left); returns how many."""
    cutoff = time.time() - max_age
    removed = 0
    with contextlib.suppress(OSError):  # the folder itself may be gone
        for entry in os.scandir(folder):
            with contextlib.suppress(OSError):
                if entry.is_file() and entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
    return removed


def _fsync_dir(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileObjectStore(ObjectStore):
    """Objects as files under a root directory; writes are temp file + fsync + rename."""

    # A temp file nobody has written to for this long belongs to a process that died
    # mid-write (kill -9, power cut); writers touch theirs with every chunk.
    STALE_TEMP_SECONDS = 3600

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = root.resolve()
        self.fsync = fsync
        self.root.mkdir(parents=True, exist_ok=True)
        self._root = str(self.root)
        self._tmp = self.root / ".tmp"
        self._tmp.mkdir(exist_ok=True)
        self._lock = threading.Lock()
        self._durable_dirs: set[str] = set()  # entries known flushed (see `_flush_folder`)
        self.sweep_stale_temp()

    def sweep_stale_temp(self, max_age: float | None = None) -> int:
        """Remove temp files left by writers that died; returns how many."""
        return remove_stale_files(self._tmp,
                                  self.STALE_TEMP_SECONDS if max_age is None else max_age)

    def path(self, key: str) -> Path:
        """The file of `key`; keys are relative paths without `.`/`..` parts or links."""
        return Path(self._file(key))

    def _file(self, key: str) -> str:
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"object key {key!r} escapes the store")
        return os.path.join(self._root, *parts)

    def _parent_of(self, dest: str) -> str:
        """The folder of `dest`, made if missing."""
        parent = os.path.dirname(dest)
        if parent not in self._durable_dirs:
            os.makedirs(parent, exist_ok=True)
        return parent

    def _flush_folder(self, folder: str) -> None:
        """fsync the folder an object was just written into, and, the first time this
        process uses it, the folders above it up to one known to be flushed: a new series
        folder is durable only once its study folder is, and whoever made it (another
        thread or SCP process) may not have flushed that yet."""
        todo = [folder]
        while todo[-1] not in self._durable_dirs and len(todo[-1]) > len(self._root):
            todo.append(os.path.dirname(todo[-1]))
        for d in todo:
            _fsync_dir(d)
        if len(todo) > 1:
            with self._lock:
                if len(self._durable_dirs) > self.DURABLE_DIRS_KEPT:
                    self._durable_dirs.clear()
                self._durable_dirs.update(todo[:-1])  # each entry flushed in its parent

    DURABLE_DIRS_KEPT = 100_000

    def put_file(self, key: str, src: str | Path, *, move: bool = False,
                 durable: bool = True) -> None:
        dest = self._file(key)
        parent = self._parent_of(dest)
        sync = self.fsync and durable
        if not (move and self._move(src, dest, sync)):
            with open(src, "rb") as inp:
                self._write_new(dest, inp, sync=sync)
        if sync:
            self._flush_folder(parent)

    def put_stream(self, key: str, data: Readable, *, content_type: str) -> None:
        dest = self._file(key)
        parent = self._parent_of(dest)
        self._write_new(dest, data, sync=self.fsync)
        if self.fsync:
            self._flush_folder(parent)

    def _write_new(self, dest: str, data: Readable, *, sync: bool) -> None:
        """Copy `data` to a temp file, fsync it if asked, rename it to `dest`; on any error
        (a failed read included) the temp file goes and `dest` is untouched."""
        fd, tmp = tempfile.mkstemp(dir=self._tmp)
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := data.read(STREAM_CHUNK):
                    out.write(chunk)
                if sync:
                    out.flush()
                    os.fsync(out.fileno())
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _move(self, src: str | Path, dest: str, sync: bool) -> bool:
        """Rename `src` into place; False if it is on another file system."""
        if sync:
            _fsync_file(src)
        try:
            os.replace(src, dest)
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                return False
            raise
        return True

    def put_new(self, key: str, src: str | Path) -> bool | None:
        dest = self._file(key)
        # The name first, then one flush of our own inode (held open, whatever happens to
        # the name): ext4 commits data and name in one journal transaction, and the
        # directory's fsync then finds nothing left to do. A crash in between leaves an
        # object without an index row: invisible, and replaced when the instance is resent.
        fd = os.open(src, os.O_RDONLY) if self.fsync else None
        try:
            try:
                try:
                    os.link(src, dest)  # atomic create-if-absent, unlike rename
                except FileNotFoundError:  # a new series: its folder first
                    os.makedirs(os.path.dirname(dest), exist_ok=True)
                    os.link(src, dest)
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno == errno.EXDEV:  # another file system: let put_file copy it
                    return None
                raise
            try:
                os.unlink(src)
                if fd is not None:
                    os.fsync(fd)
                    self._flush_folder(os.path.dirname(dest))
            except BaseException:  # not durable: not there either (a resend would wait)
                with contextlib.suppress(OSError):
                    os.unlink(dest)
                raise
        finally:
            if fd is not None:
                os.close(fd)
        return True

    def claim_identical(self, key: str, src: str | Path, sha256: str) -> bool:
        dest = self._file(key)
        try:
            if os.path.getsize(dest) != os.path.getsize(src) or _sha256_of(dest) != sha256:
                return False
            os.utime(dest)  # a new version as `remove_orphan` sees it
        except FileNotFoundError:
            return False
        return True

    def make_durable(self, keys: Iterable[str]) -> None:
        if not self.fsync:
            return
        paths = [self._file(key) for key in keys]
        # Several flushes in flight let the file system commit them together: about half
        # the time per file of one after the other, on ext4.
        with ThreadPoolExecutor(FLUSH_THREADS, thread_name_prefix="vna-fsync") as pool:
            list(pool.map(_fsync_file, paths))
            list(pool.map(self._flush_folder, {os.path.dirname(p) for p in paths}))

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self.path(key), "rb")
        except FileNotFoundError as exc:
            raise ObjectNotFound(key) from exc

    def open_range(self, key: str, start: int, length: int) -> BinaryIO:
        f = self.open(key)
        f.seek(start)
        return _Limited(f, length)  # type: ignore[return-value]

    def open_seekable(self, key: str, size: int) -> BinaryIO:
        return self.open(key)

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        with contextlib.suppress(OSError):
            self.path(key).unlink()

    def list_objects(self, prefix: str) -> Iterator[ObjectInfo]:
        top = self._root if not prefix else os.path.join(self._root, *prefix.rstrip("/")
                                                          .split("/"))
        for folder, dirs, files in os.walk(top):
            if folder == self._root:
                dirs[:] = [d for d in dirs if d != ".tmp"]  # partial writes, not objects
            dirs.sort()
            for name in sorted(files):
                path = os.path.join(folder, name)
                with contextlib.suppress(FileNotFoundError):  # gone meanwhile
                    st = os.stat(path)
                    key = os.path.relpath(path, self._root).replace(os.sep, "/")
                    yield ObjectInfo(key, st.st_size,
                                     datetime.fromtimestamp(st.st_mtime, UTC),
                                     f"{st.st_dev}:{st.st_ino}:{st.st_mtime_ns}")

    def remove_orphan(self, info: ObjectInfo) -> bool:
        """Claim the file by renaming it away (atomic), then look at what was claimed: the
        listed file is deleted; one written at the key since (a store replacing what it
        took for a crash's leftover) is put back."""
        claimed = os.path.join(self._tmp, f"orphan-{uuid.uuid4().hex}")
        try:
            os.rename(self._file(info.key), claimed)
        except FileNotFoundError:
            return False
        st = os.stat(claimed)
        if f"{st.st_dev}:{st.st_ino}:{st.st_mtime_ns}" == info.version:
            os.unlink(claimed)
            return True
        try:
            os.link(claimed, self._file(info.key))  # not ours to delete: back it goes
        except FileExistsError:  # and written a third time meanwhile: that one stays
            return False
        os.unlink(claimed)
        return False

    def partial_writes(self) -> Iterator[PartialWrite]:
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self._tmp):
                with contextlib.suppress(FileNotFoundError):
                    if entry.is_file():
                        yield PartialWrite(f".tmp/{entry.name}", datetime.fromtimestamp(
                            entry.stat().st_mtime, UTC))

    def discard_partial(self, partial: PartialWrite) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self._tmp, partial.key.removeprefix(".tmp/")))

    @contextmanager
    def local_copy(self, key: str, directory: Path | None = None) -> Iterator[Path]:
        p = self.path(key)
        if not p.is_file():
            raise ObjectNotFound(key)
        yield p


# The minio SDK's public API has no conditional PUT and no listing of unfinished multipart
# uploads; these private methods are used here, and only here, and checked at start.
_MINIO_PRIVATE = ("_put_object", "_list_multipart_uploads", "_abort_multipart_upload")


class S3ObjectStore(ObjectStore):
    """Objects in an S3 bucket (MinIO in production), through the minio SDK.

    A successful PUT is durable by the server's contract, so `make_durable` has nothing to do.
    Requests are bounded: a server that is down or hangs fails a request within seconds
    (CONNECT_TIMEOUT, a few quick retries), never minio's default of minutes.
    """

    CONNECT_TIMEOUT = 5.0
    READ_TIMEOUT = 60.0

    def __init__(self, endpoint: str, access_key: str, secret_key: str, bucket: str,
                 *, secure: bool = False) -> None:
        import urllib3
        from minio import Minio

        missing = [m for m in _MINIO_PRIVATE if not callable(getattr(Minio, m, None))]
        if missing:
            raise RuntimeError(f"this minio SDK lacks {', '.join(missing)}; vna needs "
                               "minio 7.2 (see pyproject.toml)")
        tls: dict[str, Any] = {}
        if secure:
            import certifi

            tls = {"cert_reqs": "CERT_REQUIRED",
                   "ca_certs": os.environ.get("SSL_CERT_FILE") or certifi.where()}
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=self.CONNECT_TIMEOUT, read=self.READ_TIMEOUT),
            retries=urllib3.Retry(total=3, backoff_factor=0.2,
                                  status_forcelist=[500, 502, 503, 504]),
            maxsize=16, **tls)
        self.client = Minio(endpoint, access_key=access_key, secret_key=secret_key,
                            secure=secure, http_client=http)
        self.bucket = bucket
        self._conditional_puts = True  # until the server says it has none
        if not self.client.bucket_exists(bucket):
            from minio.error import S3Error

            try:
                self.client.make_bucket(bucket)
            except S3Error as exc:  # another process made it first
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    def put_file(self, key: str, src: str | Path, *, move: bool = False,
                 durable: bool = True) -> None:
        self.client.fput_object(self.bucket, key, str(src),
                                content_type="application/dicom")
        if move:
            with contextlib.suppress(OSError):
                os.unlink(src)

    def claim_identical(self, key: str, src: str | Path, sha256: str) -> bool:
        """The same size and, for an object PUT in one part, an ETag that is the MD5 of
        `src` (else its bytes are read and hashed); then `src` is PUT again, identical,
        which gives the object a new version for `remove_orphan`."""
        from minio.error import S3Error

        try:
            st = self.client.stat_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                return False
            raise
        if st.size != os.path.getsize(src):
            return False
        etag = (st.etag or "").strip('"')
        if "-" in etag or not etag:  # a multipart ETag is no MD5 of the whole
            with self.open(key) as f:
                digest = hashlib.sha256()
                while chunk := f.read(STREAM_CHUNK):
                    digest.update(chunk)
            same = digest.hexdigest() == sha256
        else:
            same = _hash_of(src, lambda: hashlib.md5(usedforsecurity=False)) == etag
        if same:
            self.put_file(key, src)
        return same

    # A conditional PUT sends the object in one request, read into memory: up to this size
    # (nearly every instance). Larger ones go the way without it (`put_new` says None).
    PUT_NEW_LIMIT = 64 << 20

    def put_new(self, key: str, src: str | Path) -> bool | None:
        """A PUT with `If-None-Match: *` (S3 conditional writes; MinIO and SeaweedFS have
        them): two nodes storing one SOP Instance at once cannot overwrite each other."""
        from minio.error import S3Error

        if not self._conditional_puts or os.path.getsize(src) > self.PUT_NEW_LIMIT:
            return None
        with open(src, "rb") as f:
            data = f.read()
        try:
            self.client._put_object(self.bucket, key, data, {  # noqa: SLF001
                "If-None-Match": "*", "Content-Type": "application/dicom"})
        except S3Error as exc:
            if exc.code == "PreconditionFailed":
                return False
            if exc.code == "NotImplemented":  # a server without conditional writes
                self._conditional_puts = False
                return None
            raise
        with contextlib.suppress(OSError):
            os.unlink(src)
        return True

    # A streamed upload holds STREAM_PARALLEL parts in flight plus the one being read (and
    # a transient copy of it): about 50 MB whatever the size. 8 MiB parts allow objects of
    # up to 80 GiB (S3 allows 10,000 parts).
    STREAM_PART = 8 << 20
    STREAM_PARALLEL = 2

    def put_stream(self, key: str, data: Readable, *, content_type: str) -> None:
        # If a read raised inside minio, its part-upload threads would never be stopped
        # (minio 7.2 aborts the upload but not its pool). So a failed read ends the stream
        # instead, the truncated object is completed and deleted, and the failure re-raised.
        reader = _StopOnError(data)
        self.client.put_object(self.bucket, key, reader, length=-1,  # type: ignore[arg-type]
                               part_size=self.STREAM_PART, content_type=content_type,
                               num_parallel_uploads=self.STREAM_PARALLEL)
        if reader.error is not None:
            self.delete(key)
            raise reader.error

    def make_durable(self, keys: Iterable[str]) -> None:
        return None

    def open(self, key: str) -> BinaryIO:
        return self._get(key)

    def open_range(self, key: str, start: int, length: int) -> BinaryIO:
        return self._get(key, start, length)

    def _get(self, key: str, offset: int = 0, length: int = 0) -> BinaryIO:
        from minio.error import S3Error

        try:
            resp = self.client.get_object(self.bucket, key, offset=offset, length=length)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject"):
                raise ObjectNotFound(key) from exc
            raise
        return _ResponseReader(resp)  # type: ignore[return-value]

    def exists(self, key: str) -> bool:
        from minio.error import S3Error

        try:
            self.client.stat_object(self.bucket, key)
            return True
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                return False
            raise

    def delete(self, key: str) -> None:
        self.client.remove_object(self.bucket, key)

    def list_objects(self, prefix: str) -> Iterator[ObjectInfo]:
        for o in self.client.list_objects(self.bucket, prefix=prefix, recursive=True):
            if o.object_name is None or o.is_dir:
                continue
            modified = o.last_modified or datetime.now(UTC)
            yield ObjectInfo(o.object_name, int(o.size or 0), modified.astimezone(UTC),
                             f"{o.etag}:{modified.isoformat()}")

    def remove_orphan(self, info: ObjectInfo) -> bool:
        """S3 has no conditional delete: the object is looked at once more just before, and
        left if it was written again since it was listed."""
        from minio.error import S3Error

        try:
            st = self.client.stat_object(self.bucket, info.key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                return False
            raise
        modified = (st.last_modified or datetime.now(UTC)).astimezone(UTC)
        if f"{st.etag}:{modified.isoformat()}" != info.version:
            return False
        self.client.remove_object(self.bucket, info.key)
        return True

    def partial_writes(self) -> Iterator[PartialWrite]:
        key_marker = upload_marker = None
        while True:
            page = self.client._list_multipart_uploads(  # noqa: SLF001
                self.bucket, key_marker=key_marker, upload_id_marker=upload_marker)
            for u in page.uploads:
                yield PartialWrite(u.object_name, (u.initiated_time or datetime.now(UTC))
                                   .astimezone(UTC), u.upload_id)
            if not page.is_truncated:
                return
            key_marker, upload_marker = page.next_key_marker, page.next_upload_id_marker

    def discard_partial(self, partial: PartialWrite) -> None:
        if partial.upload_id is not None:
            self.client._abort_multipart_upload(  # noqa: SLF001
                self.bucket, partial.key, partial.upload_id)


class _ResponseReader:
    """A urllib3 response as a closable binary file object (released on close)."""

    def __init__(self, resp: object) -> None:
        self._resp = resp

    def read(self, n: int = -1) -> bytes:
        return self._resp.read(None if n < 0 else n)  # type: ignore[attr-defined]

    def close(self) -> None:
        self._resp.close()  # type: ignore[attr-defined]
        self._resp.release_conn()  # type: ignore[attr-defined]

    def __enter__(self) -> _ResponseReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RangedReader:
    """A seekable, read-only view of an object of known size made of ranged reads: a read
    within the last fetched block is served from it, a small one elsewhere fetches the next
    `block` bytes, a large one is fetched exactly. pydicom parses a header with many small
    reads; one block holds a typical header."""

    def __init__(self, store: ObjectStore, key: str, size: int, block: int = 128 << 10) -> None:
        self._store = store
        self._key = key
        self._size = size
        self._block = block
        self._pos = 0
        self._cached_at = 0
        self._cached = b""
        self.name = key

    def _fetch(self, start: int, length: int) -> bytes:
        with self._store.open_range(self._key, start, length) as f:
            parts = []
            while length > 0:
                data = f.read(length)
                if not data:
                    break
                parts.append(data)
                length -= len(data)
            return b"".join(parts)

    def read(self, n: int = -1) -> bytes:
        end = self._size if n is None or n < 0 else min(self._size, self._pos + n)
        if end <= self._pos:
            return b""
        lo, hi = self._cached_at, self._cached_at + len(self._cached)
        if not (lo <= self._pos and end <= hi):
            if end - self._pos >= self._block:
                data = self._fetch(self._pos, end - self._pos)
                self._pos += len(data)
                return data
            self._cached_at = self._pos
            self._cached = self._fetch(self._pos, min(self._block, self._size - self._pos))
            lo = self._cached_at
        data = self._cached[self._pos - lo:end - lo]
        self._pos += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._cached = b""

    def __enter__(self) -> RangedReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _StopOnError:
    """A reader that turns a failed read into the end of the stream, keeping the error."""

    def __init__(self, data: Readable) -> None:
        self._data = data
        self.error: BaseException | None = None

    def read(self, n: int = -1) -> bytes:
        if self.error is not None:
            return b""
        try:
            return self._data.read(n)
        except Exception as exc:
            self.error = exc
            return b""


class _Limited:
    """At most `remaining` bytes of an open file."""

    def __init__(self, f: BinaryIO, remaining: int) -> None:
        self._f = f
        self._remaining = remaining

    def read(self, n: int = -1) -> bytes:
        n = self._remaining if n < 0 else min(n, self._remaining)
        data = self._f.read(n) if n else b""
        self._remaining -= len(data)
        return data

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> _Limited:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _hash_of(path: Path | str, algorithm: Any) -> str:
    digest = algorithm()
    with open(path, "rb") as f:
        while chunk := f.read(STREAM_CHUNK):
            digest.update(chunk)
    return str(digest.hexdigest())


def _sha256_of(path: Path | str) -> str:
    return _hash_of(path, hashlib.sha256)


def _fsync_file(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class StoreConfig:
    """Which backend holds the objects, and where: plain values, so that this module needs
    no settings object (`services.runtime` builds it from VNA_STORAGE, VNA_S3_*, ...)."""

    backend: Literal["file", "s3"]
    objects_dir: Path  # the file backend's root
    fsync: bool = True
    s3_endpoint: str = ""
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_bucket: str = "vna"
    s3_secure: bool = False


def make_object_store(config: StoreConfig) -> ObjectStore:
    """The configured backend."""
    if config.backend == "s3":
        return S3ObjectStore(config.s3_endpoint, config.s3_access_key, config.s3_secret_key,
                             config.s3_bucket, secure=config.s3_secure)
    return FileObjectStore(config.objects_dir, fsync=config.fsync)
