"""Where a sweep's Optuna study lives, and the heartbeat that tells a running point from a dead one.

``--storage`` takes an Optuna storage URL:

* ``sqlite:///sweeps/<name>/study.db`` (the default; embedded, nothing to start), or any SQLAlchemy
  URL Optuna's ``RDBStorage`` takes (``postgresql://user:pw@host/db``, ``mysql+pymysql://...``):
  workers on several machines share a study through one database;
* ``journal:<path>``: Optuna's ``JournalStorage`` over a ``JournalFileBackend`` log file, for a
  shared file system (NFS) without a database server;
* ``redis://host:port/db``: ``JournalStorage`` over ``JournalRedisBackend``.

Optuna's own heartbeat exists only for RDB storages, so workers record theirs as a trial system
attribute (``sweep:beat``, wall-clock seconds) every few seconds, whatever the storage: a RUNNING
trial whose beat is older than ``stale_after`` belongs to a worker that died (machines must keep
their clocks roughly in sync), and its point runs again.
"""

import threading
import time
from pathlib import Path
from typing import Optional

from secure_ml.errors import ConfigError

BEAT = "sweep:beat"


def default_storage(out_dir: Path) -> str:
    return f"sqlite:///{out_dir / 'study.db'}"


def open_storage(url: str):
    """An Optuna storage object for ``url`` (see the module docstring); ConfigError naming --storage when it cannot be opened."""
    import optuna

    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend

            path = Path(url[len("journal:") :].removeprefix("//"))
            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        if url.startswith(("redis://", "rediss://", "unix://")):
            from optuna.storages.journal import JournalRedisBackend

            return optuna.storages.JournalStorage(JournalRedisBackend(url))
        kwargs = {}
        if url.startswith("sqlite:///"):
            _wal(Path(url[len("sqlite:///") :]))
            kwargs["engine_kwargs"] = {"connect_args": {"timeout": 300}}  # several workers write to one file
        storage = optuna.storages.RDBStorage(url, **kwargs)
        if url.startswith("sqlite:///"):
            _normal_sync(storage.engine)
        return storage
    except Exception as exc:
        raise ConfigError(f"--storage '{url}' cannot be opened: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def _wal(path: Path) -> None:
    """Create the SQLite file in write-ahead-log mode (persistent): readers stop blocking the workers' writes."""
    import sqlite3
    from contextlib import closing

    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(path, timeout=300)) as con:
        con.execute("PRAGMA journal_mode=WAL")


def _normal_sync(engine) -> None:
    """``PRAGMA synchronous=NORMAL`` on every connection: in WAL mode a commit no longer waits for an fsync (a power cut may
    lose the last commits, never corrupt the file); bookkeeping of a point drops from ~25 fsyncs to a few."""
    from sqlalchemy import event

    def _pragma(connection, _record) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(engine, "connect", _pragma)
    engine.dispose()  # connections opened before the listener are dropped


class Heartbeat:
    """Records ``time.time()`` under ``sweep:beat`` on a RUNNING trial every ``interval`` seconds until stopped."""

    def __init__(self, storage, trial_id: int, interval: float):
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def beat(self) -> None:
        self.storage.set_trial_system_attr(self.trial_id, BEAT, time.time())

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception:  # a transient storage error must not kill the point; the next beat retries
                continue

    def __enter__(self) -> "Heartbeat":
        self.beat()
        self._thread = threading.Thread(target=self._loop, name=f"sweep-heartbeat-{self.trial_id}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def is_live(trial, now: float, stale_after: float) -> bool:
    """A RUNNING trial whose worker beat within ``stale_after`` seconds (or that started that recently)."""
    beat = trial.system_attrs.get(BEAT)
    if beat is None and trial.datetime_start is not None:
        beat = trial.datetime_start.timestamp()
    return beat is not None and now - float(beat) < stale_after
