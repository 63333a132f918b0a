"""The composition root: what a vna process opens from its settings, built in one place.

The CLI, the HTTP app, the worker and the SCP processes all open the index, the object
store and the archive here, from the one settings object; `storage/` itself takes plain
values (a URL, a `StoreConfig`, a conflict policy) and never reads the settings. Each is
opened when first used (an S3 store connects when it is made), and `close()` releases
what was opened: the index's engines and their connections.
"""

from __future__ import annotations

from functools import cached_property
from types import TracebackType

from storage.archive import Archive
from storage.index.db import Index
from storage.objectstore import ObjectStore, StoreConfig, make_object_store
from vna.settings import Settings, get_settings


def store_config(settings: Settings) -> StoreConfig:
    """VNA_STORAGE, VNA_S3_*, VNA_FSYNC and the objects folder under VNA_DATA_DIR."""
    return StoreConfig(
        backend=settings.storage, objects_dir=settings.objects_dir, fsync=settings.fsync,
        s3_endpoint=settings.s3_endpoint, s3_access_key=settings.s3_access_key,
        s3_secret_key=settings.s3_secret_key, s3_bucket=settings.s3_bucket,
        s3_secure=settings.s3_secure)


def open_index(settings: Settings) -> Index:
    """The index database of VNA_DATABASE_URL (SQLite under VNA_DATA_DIR by default)."""
    return Index(settings.resolved_database_url, fsync=settings.fsync)


def open_store(settings: Settings) -> ObjectStore:
    """The object store of VNA_STORAGE."""
    return make_object_store(store_config(settings))


def open_archive(settings: Settings, *, index: Index | None = None,
                 store: ObjectStore | None = None) -> Archive:
    """The SOP Instance archive on the given (or newly opened) index and store; whoever
    opened it disposes `archive.index` when done."""
    return Archive(index or open_index(settings), store or open_store(settings),
                   patient_conflict=settings.patient_conflict)


class Runtime:
    """The index, object store and archive of one process, each opened on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @cached_property
    def index(self) -> Index:
        return open_index(self.settings)

    @cached_property
    def store(self) -> ObjectStore:
        return open_store(self.settings)

    @cached_property
    def archive(self) -> Archive:
        return open_archive(self.settings, index=self.index, store=self.store)

    def close(self) -> None:
        """Dispose of the index's engines if they were opened (the stores hold nothing
        that outlives the process: files, or an HTTP connection pool)."""
        index = self.__dict__.pop("index", None)
        self.__dict__.pop("archive", None)
        if index is not None:
            index.dispose()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def open_runtime(settings: Settings | None = None) -> Runtime:
    """The runtime of this process's settings (the environment's, if none are given)."""
    return Runtime(settings or get_settings())
