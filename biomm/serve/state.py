"""What the app holds: the cohort path, the query engine (loaded once), and the locks that keep readers
off a cohort while an ingest swaps it in. Readers share; the swap is exclusive and short."""
from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path
from typing import Iterator

from biomm.store.locks import ReadWriteLock
import biomm.store.views as cohort_view
from biomm.serve.settings import ServeConfig

log = logging.getLogger("biomm.serve")


class ServeState:
    """What the app holds: model and cohort paths, config, the query engine (loaded once) and the swap lock."""

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
        """Whether the query engine has been loaded yet."""
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
