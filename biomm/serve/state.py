"""What the app holds: the cohort path, the query engine (loaded once), and the locks that keep readers
off a cohort while an ingest swaps it in. Readers share; the swap is exclusive and short."""
from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path
from typing import Iterator

from biomm.serve import cohort_view
from biomm.serve.settings import ServeConfig

log = logging.getLogger("biomm.serve")


class ReadWriteLock:
    """Many readers or one writer; a waiting writer blocks new readers (no writer starvation)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting = 0

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class ServeState:
    def __init__(self, model_dir: Path, cohort_dir: Path, config: ServeConfig, engine=None):
        self.model_dir = Path(model_dir).resolve()
        self.cohort_dir = Path(cohort_dir).resolve()
        if not (self.cohort_dir / "cohort.duckdb").exists():
            raise FileNotFoundError(f"no cohort at {self.cohort_dir} (missing cohort.duckdb)")
        self.config = config
        self.swap = ReadWriteLock()          # readers vs the cohort swap
        self.ingest_mutex = threading.Lock()  # one ingest at a time
        self._engine = engine
        self._engine_lock = threading.Lock()

    @property
    def engine_loaded(self) -> bool:
        return self._engine is not None

    @property
    def engine(self):
        """The query engine, loaded on first use (`biomm serve` loads it before listening)."""
        if self._engine is None:
            with self._engine_lock:
                if self._engine is None:
                    from biomm.query.engine import QueryEngine

                    with self.swap.read():
                        self._engine = QueryEngine(self.model_dir, self.cohort_dir)
                    log.info("query engine loaded: model %s", self._engine.model_name)
        return self._engine

    @contextlib.contextmanager
    def reader(self) -> Iterator:
        """A read-only manifest connection, closed on exit, held off while an ingest swaps the cohort."""
        with self.swap.read():
            con = cohort_view.connect(self.cohort_dir)
            try:
                yield con
            finally:
                con.close()
