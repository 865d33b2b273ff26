"""Study store on SQLAlchemy: SQLite by default, any SQLAlchemy URL (PostgreSQL, ...).

Every change to a study happens inside one transaction that holds the study's write
lock (SQLite: ``BEGIN IMMEDIATE``; other databases: ``SELECT ... FOR UPDATE`` on the
study row). Asking reads the history, lets the optimizer propose and inserts the new
pending trials under that lock, so two processes on one database never hand out the
same trial, and a told value is committed before ``tell`` returns.
"""

from __future__ import annotations

import copy
import json
import math
import sqlite3
import threading
from collections import namedtuple
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from bbopt.errors import StorageError, StudyError, TrialError, UnknownStudyError, UnknownTrialError
from bbopt.trial import Trial, TrialState

metadata = sa.MetaData()

studies_table = sa.Table(
    "bbopt_studies",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(255), nullable=False, unique=True),
    sa.Column("space", sa.Text, nullable=False),  # JSON, Space.to_dict()
    sa.Column("direction", sa.String(16), nullable=False),
    sa.Column("method", sa.String(64), nullable=False),
    sa.Column("options", sa.Text, nullable=False),  # JSON, optimizer options
    sa.Column("seed", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
)

trials_table = sa.Table(
    "bbopt_trials",
    metadata,
    sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("study_id", sa.Integer, sa.ForeignKey("bbopt_studies.id"), nullable=False),
    sa.Column("number", sa.Integer, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("params", sa.Text, nullable=False),  # JSON
    sa.Column("value", sa.Float, nullable=True),
    sa.Column("info", sa.Text, nullable=False),  # JSON
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("finished_at", sa.DateTime, nullable=True),
    # Last sign of life of the worker evaluating a pending trial; NULL: nobody watches
    # it (a plain ask), so it never goes stale (see SQLStorage.fail_stale).
    sa.Column("heartbeat_at", sa.DateTime, nullable=True),
    sa.UniqueConstraint("study_id", "number", name="uq_bbopt_trial_number"),
)


@dataclass(frozen=True)
class StudyRecord:
    """What the store keeps about a study besides its trials."""

    id: int
    name: str
    space: dict[str, Any]
    direction: str
    method: str
    options: dict[str, Any]
    seed: int
    created_at: datetime


def _driver(conn: Connection | sqlite3.Connection) -> Any:
    """The DBAPI connection under ``conn`` (in its transaction), or ``conn`` itself when it
    is one (the ask's, ``SQLStorage._ask_transaction``)."""
    return conn if isinstance(conn, sqlite3.Connection) else conn.connection.dbapi_connection


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _sqlite_file(url: sa.URL) -> Path | None:
    if url.get_backend_name() != "sqlite":
        return None
    db = url.database
    if not db or db == ":memory:" or db.startswith("file:"):
        return None
    return Path(db)


# Statements of every ask, built once so that SQLAlchemy compiles them once per process.
_INSERT_TRIAL = trials_table.insert()
_READ_TAIL = (  # trial 0 and the trials from number `known` on
    sa.select(trials_table)
    .where(trials_table.c.study_id == sa.bindparam("study"),
           (trials_table.c.number >= sa.bindparam("known")) | (trials_table.c.number == 0))
    .order_by(trials_table.c.number))


class _DriverSQL:
    """The ask path's two statements (``_READ_TAIL``, ``_INSERT_TRIAL``) compiled once for
    SQLite and run on the driver's connection inside SQLAlchemy's transaction, with
    SQLAlchemy's own conversions of the datetime columns. Executing them through
    SQLAlchemy cost about 60 us each against 10 us on the driver, most of the store's part
    of an ask. Other statements, and other databases, go through SQLAlchemy."""

    def __init__(self, dialect: Any) -> None:
        self.read = _READ_TAIL.compile(dialect=dialect)
        self.insert = _INSERT_TRIAL.compile(dialect=dialect, column_keys=[
            c.name for c in trials_table.c if c.name != "pk"])
        self.read_sql, self.insert_sql = str(self.read), str(self.insert)
        dt = trials_table.c.created_at.type.dialect_impl(dialect)
        self.to_db, self.from_db = dt.bind_processor(dialect), dt.result_processor(dialect, None)
        self.row = namedtuple("row", [c.name for c in self.read.statement.selected_columns])
        self.datetimes = [i for i, c in enumerate(self.read.statement.selected_columns)
                          if isinstance(c.type, sa.DateTime)]

    def read_tail(self, driver: Any, study_id: int, known: int) -> list[Any]:
        values = self.read.construct_params({"study": study_id, "known": known})
        out = []
        for raw in driver.execute(self.read_sql, [values[k] for k in self.read.positiontup]):
            raw = list(raw)
            for i in self.datetimes:
                raw[i] = self.from_db(raw[i])
            out.append(self.row(*raw))
        return out

    def insert_trial(self, driver: Any, values: dict[str, Any]) -> None:
        values = {k: self.to_db(v) if isinstance(v, datetime) else v for k, v in values.items()}
        driver.execute(self.insert_sql, [values[k] for k in self.insert.positiontup])


def _copy(trial: Trial) -> Trial:
    return replace(trial, params=dict(trial.params),
                   info=copy.deepcopy(trial.info) if trial.info else {})


class SQLStorage:
    """One database holding any number of studies.

    ``url`` is an SQLAlchemy URL: ``sqlite:///path.db`` (created if missing unless
    ``create=False``), ``sqlite://`` (in memory, this process only) or
    ``postgresql+psycopg2://user:pass@host/db``.
    """

    def __init__(self, url: str = "sqlite://", *, create: bool = True) -> None:
        try:
            parsed = sa.make_url(url)
        except sa.exc.ArgumentError:
            raise StorageError(f"not a database URL: {url!r} (try sqlite:///study.db)") from None
        self.url = url
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        path = _sqlite_file(parsed)
        if path is not None:
            if not create and not path.exists():
                raise StorageError(f"database file {str(path)!r} does not exist")
            if not path.parent.exists():
                raise StorageError(f"folder {str(path.parent)!r} for the database does not exist")
        self._lock = threading.RLock()  # one in-process writer at a time (in-memory SQLite)
        # study id -> (primary key of trial 0, the leading finished trials read; see _trials)
        self._finished: dict[int, tuple[int, list[Trial]]] = {}
        self.engine = self._make_engine(parsed)
        self._driver_sql = _DriverSQL(self.engine.dialect) if self.is_sqlite else None
        try:
            with self._read() as conn:  # creating takes the write lock: only when needed
                inspector = sa.inspect(conn)
                missing = not all(inspector.has_table(t) for t in metadata.tables)
                old = not missing and "heartbeat_at" not in {
                    c["name"] for c in inspector.get_columns(trials_table.name)}
            if missing:
                metadata.create_all(self.engine)
            if old:  # a store written before heartbeats: add the column, keep every row
                with self._transaction() as conn:
                    if "heartbeat_at" not in {
                            c["name"] for c in sa.inspect(conn).get_columns(trials_table.name)}:
                        conn.exec_driver_sql(
                            f"ALTER TABLE {trials_table.name} ADD COLUMN heartbeat_at TIMESTAMP")
        except SQLAlchemyError as e:
            raise StorageError(f"cannot open database {self._safe_url()}: {e.orig or e}") from None

    def _safe_url(self) -> str:
        return sa.make_url(self.url).render_as_string(hide_password=True)

    def _make_engine(self, url: sa.URL) -> Engine:
        if not self.is_sqlite:
            try:
                return sa.create_engine(url, pool_pre_ping=True)
            except (ImportError, SQLAlchemyError) as e:
                raise StorageError(f"cannot use database {self._safe_url()}: {e}") from None
        kwargs: dict[str, Any] = {"connect_args": {"timeout": 60, "check_same_thread": False}}
        if _sqlite_file(url) is None:  # in memory: every connection must be the same one
            kwargs["poolclass"] = sa.pool.StaticPool
        engine = sa.create_engine(url, **kwargs)

        @sa.event.listens_for(engine, "connect")
        def _connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, below
            cur = dbapi_conn.cursor()
            if _sqlite_file(url) is not None:
                cur.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @sa.event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            if conn.get_execution_options().get("bbopt_read"):
                conn.exec_driver_sql("BEGIN")  # readers never wait for a writer (WAL)
            else:
                conn.exec_driver_sql("BEGIN IMMEDIATE")  # take the write lock up front

        return engine

    # -- transactions -----------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[None]:
        """This store's in-process lock, with database errors (through SQLAlchemy or
        from the driver, ``_DriverSQL``) raised as StorageError."""
        with self._lock:
            try:
                yield
            except (OperationalError, sqlite3.OperationalError) as e:
                raise StorageError(f"database error on {self._safe_url()}: "
                                   f"{getattr(e, 'orig', None) or e}") from None

    @contextmanager
    def _transaction(self, study_id: int | None = None) -> Iterator[Connection]:
        """A write transaction; with ``study_id``, it holds that study's lock."""
        with self._locked(), self.engine.begin() as conn:
            if study_id is not None and not self.is_sqlite:
                conn.execute(
                    sa.select(studies_table.c.id)
                    .where(studies_table.c.id == study_id)
                    .with_for_update()
                )
            yield conn

    @contextmanager
    def _ask_transaction(self, study_id: int) -> Iterator[Connection | sqlite3.Connection]:
        """The ask's write transaction. On SQLite it runs on the driver's connection
        (``BEGIN IMMEDIATE`` .. ``COMMIT``, rolled back on any error), with the ask's
        statements (``_DriverSQL``): SQLAlchemy's begin and commit cost about 100 us more
        per ask. Elsewhere it is ``_transaction``."""
        if self._driver_sql is None:
            with self._transaction(study_id) as conn:
                yield conn
            return
        with self._locked():
            pooled = self.engine.raw_connection()
            try:
                driver = pooled.driver_connection
                driver.execute("BEGIN IMMEDIATE")
                try:
                    yield driver
                except BaseException:
                    driver.rollback()
                    raise
                driver.commit()
            finally:
                pooled.close()  # back to the pool, which rolls back what is left

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._locked(), self.engine.connect().execution_options(bbopt_read=True) as conn:
            yield conn

    # -- studies ------------------------------------------------------------------
    def create_study(
        self,
        name: str,
        space: dict[str, Any],
        direction: str,
        method: str,
        options: dict[str, Any],
        seed: int,
    ) -> StudyRecord:
        """Create a study; raise StudyError if the name is taken."""
        row = {
            "name": name,
            "space": json.dumps(space),
            "direction": direction,
            "method": method,
            "options": json.dumps(options),
            "seed": seed,
            "created_at": _now(),
        }
        try:
            with self._transaction() as conn:
                conn.execute(studies_table.insert().values(**row))
        except IntegrityError:
            raise StudyError(f"a study named {name!r} already exists") from None
        record = self.get_study(name)
        assert record is not None
        return record

    def get_study(self, name: str) -> StudyRecord | None:
        with self._read() as conn:
            row = conn.execute(
                sa.select(studies_table).where(studies_table.c.name == name)
            ).first()
        if row is None:
            return None
        return StudyRecord(
            id=row.id,
            name=row.name,
            space=json.loads(row.space),
            direction=row.direction,
            method=row.method,
            options=json.loads(row.options),
            seed=row.seed,
            created_at=row.created_at,
        )

    def study_names(self) -> list[str]:
        with self._read() as conn:
            rows = conn.execute(sa.select(studies_table.c.name).order_by(studies_table.c.id))
            return [r.name for r in rows]

    def delete_study(self, name: str) -> None:
        record = self.get_study(name)
        if record is None:
            raise UnknownStudyError(f"no study named {name!r} in {self._safe_url()}")
        with self._transaction(record.id) as conn:
            conn.execute(trials_table.delete().where(trials_table.c.study_id == record.id))
            conn.execute(studies_table.delete().where(studies_table.c.id == record.id))
        self._finished.pop(record.id, None)

    # -- trials ---------------------------------------------------------------------
    @staticmethod
    def _trial(row: Any) -> Trial:
        return Trial(
            id=row.number,
            params=json.loads(row.params),
            state=TrialState(row.state),
            value=row.value,
            created_at=row.created_at,
            finished_at=row.finished_at,
            info={} if row.info == "{}" else json.loads(row.info),
        )

    def _trials(self, conn: Connection | sqlite3.Connection, study_id: int) -> list[Trial]:
        """The study's trials in id order. A finished trial never changes, so this process
        keeps the leading run of finished trials it has read (shared objects: callers
        outside this class get copies, see ``trials``) and reads only the rows after it:
        building every row again was most of an ask's cost at 100 trials. Rows are only
        ever deleted with their study, so the first row, read again each time and known
        by its primary key and creation time, tells whether the study was deleted and
        made again elsewhere (which may reuse both ids): then everything is read afresh."""
        pk0, kept = self._finished.get(study_id, (None, []))
        if self._driver_sql is not None:
            rows = self._driver_sql.read_tail(_driver(conn), study_id, len(kept))
        else:
            rows = conn.execute(_READ_TAIL, {"study": study_id, "known": len(kept)}).all()
        if kept and (not rows or (rows[0].pk, rows[0].created_at) != (pk0, kept[0].created_at)):
            self._finished.pop(study_id)
            return self._trials(conn, study_id)
        known = len(kept)
        out = kept + [self._trial(r) for r in rows if r.number >= known]
        while len(kept) < len(out) and out[len(kept)].state is not TrialState.PENDING:
            kept.append(out[len(kept)])  # the leading run of finished trials grows
        if kept:
            self._finished[study_id] = (rows[0].pk, kept)
        return out

    def trials(self, study_id: int) -> list[Trial]:
        """The study's trials in id order, each a copy the caller may change."""
        with self._read() as conn:
            return [_copy(t) for t in self._trials(conn, study_id)]

    def _insert(self, conn: Connection | sqlite3.Connection, study_id: int, number: int,
                params: dict[str, Any], state: TrialState = TrialState.PENDING,
                value: float | None = None, info: dict[str, Any] | None = None,
                **cols: Any) -> Trial:
        """Store one trial; returns it as a later read will (no second round trip)."""
        text, info_text, now = json.dumps(params), json.dumps(info or {}), _now()
        values = {"study_id": study_id, "number": number, "params": text, "state": state.value,
                  "value": value, "info": info_text, "created_at": now, "finished_at": None,
                  "heartbeat_at": None, **cols}
        if self._driver_sql is not None:
            self._driver_sql.insert_trial(_driver(conn), values)
        else:
            conn.execute(_INSERT_TRIAL, values)
        return Trial(id=number, params=json.loads(text), state=state, value=value,
                     created_at=now, finished_at=cols.get("finished_at"),
                     info=json.loads(info_text))

    def ask(
        self,
        study_id: int,
        propose: Callable[[list[Trial]], Sequence[tuple[dict[str, Any], dict[str, Any]]]],
        heartbeat: bool = False,
    ) -> list[Trial]:
        """Atomically: read the study's trials, call ``propose(trials)`` for a list of
        (params, info) pairs, and store each as a new pending trial (with ``heartbeat``,
        one whose worker will send heartbeats, so that it can go stale)."""
        with self._ask_transaction(study_id) as conn:
            history = self._trials(conn, study_id)
            proposals = propose(history)
            start = len(history)
            beat = {"heartbeat_at": _now()} if heartbeat else {}
            new = []
            for i, (params, info) in enumerate(proposals):
                if heartbeat:
                    info = {**info, "heartbeat": True}  # others may wait for it (tune)
                new.append(self._insert(conn, study_id, start + i, params, info=info, **beat))
        return new

    def add(
        self,
        study_id: int,
        params: dict[str, Any],
        state: TrialState,
        value: float | None,
        info: dict[str, Any],
    ) -> Trial:
        """Store an already evaluated trial (warm starts, user-chosen points)."""
        with self._transaction(study_id) as conn:
            number = conn.execute(
                sa.select(sa.func.count()).where(trials_table.c.study_id == study_id)
            ).scalar_one()
            return self._insert(conn, study_id, number, params, state=state, value=value,
                                info=info, finished_at=_now())

    def finish(
        self,
        study_id: int,
        number: int,
        state: TrialState,
        value: float | None,
        info: dict[str, Any] | None = None,
    ) -> Trial:
        """Move a pending trial to COMPLETE or FAILED; raise TrialError if it is unknown
        or already finished."""
        assert state is not TrialState.PENDING
        assert value is None or math.isfinite(value)
        with self._transaction(study_id) as conn:
            where = (trials_table.c.study_id == study_id) & (trials_table.c.number == number)
            row = conn.execute(sa.select(trials_table).where(where)).first()
            if row is None:
                raise UnknownTrialError(f"unknown trial id {number}")
            if row.state != TrialState.PENDING.value:
                raise TrialError(
                    f"trial {number} is already finished ({row.state}"
                    + (f", value {row.value}" if row.value is not None else "")
                    + "); a trial is told once"
                )
            merged = {**json.loads(row.info), **(info or {})}
            conn.execute(
                trials_table.update()
                .where(where)
                .values(state=state.value, value=value, info=json.dumps(merged), finished_at=_now())
            )
            return self._trial(conn.execute(sa.select(trials_table).where(where)).one())

    def heartbeat(self, study_id: int, numbers: Sequence[int]) -> list[int]:
        """Record that the workers of trials ``numbers`` are alive; returns those of them
        that are no longer pending (told elsewhere, or failed as stale): their worker
        should stop. UnknownTrialError, changing nothing, for an id the study lacks."""
        numbers = sorted({int(n) for n in numbers})
        with self._transaction(study_id) as conn:
            rows = {r.number: r.state for r in conn.execute(
                sa.select(trials_table.c.number, trials_table.c.state).where(
                    trials_table.c.study_id == study_id, trials_table.c.number.in_(numbers)))}
            unknown = [n for n in numbers if n not in rows]
            if unknown:
                raise UnknownTrialError(f"unknown trial id(s) {unknown}")
            alive = [n for n in numbers if rows[n] == TrialState.PENDING.value]
            if alive:
                conn.execute(trials_table.update().where(
                    trials_table.c.study_id == study_id, trials_table.c.number.in_(alive)
                ).values(heartbeat_at=_now()))
        return [n for n in numbers if n not in alive]

    def fail_stale(self, study_id: int, grace: float) -> list[Trial]:
        """Mark FAILED every pending trial whose worker sent no heartbeat for ``grace``
        seconds (a killed or lost worker), so that it stops counting as running; the
        others, and trials asked without heartbeats, are left alone."""
        if not (isinstance(grace, int | float) and math.isfinite(grace) and grace > 0):
            raise ValueError(f"grace must be a positive number of seconds, got {grace!r}")
        now = _now()
        cutoff = now - timedelta(seconds=float(grace))
        with self._transaction(study_id) as conn:
            stale = conn.execute(sa.select(trials_table).where(
                trials_table.c.study_id == study_id,
                trials_table.c.state == TrialState.PENDING.value,
                trials_table.c.heartbeat_at.is_not(None),
                trials_table.c.heartbeat_at < cutoff)).all()
            for row in stale:
                quiet = (now - row.heartbeat_at).total_seconds()
                info = {**json.loads(row.info), "stale": True, "reason": (
                    f"stale: no heartbeat from its worker for {quiet:.0f} s "
                    f"(grace {grace:g} s); the worker was killed or lost")}
                conn.execute(trials_table.update().where(trials_table.c.pk == row.pk).values(
                    state=TrialState.FAILED.value, info=json.dumps(info), finished_at=now))
            rows = conn.execute(sa.select(trials_table).where(
                trials_table.c.study_id == study_id,
                trials_table.c.number.in_([row.number for row in stale]),
            ).order_by(trials_table.c.number))
            return [self._trial(r) for r in rows]

    def import_trials(self, study_id: int, trials: Sequence[Trial]) -> list[Trial]:
        """Store ``trials`` exactly as given (ids, states, values, info, timestamps) in a
        study that has no trials yet, in one transaction: how a study saved elsewhere (a
        Ray Tune searcher's checkpoint) comes back with its pending trials under their ids.

        The ids must number the trials 0, 1, 2, ... in order, as the store itself does; a
        complete trial needs a finite value and any other trial none. Raises StudyError,
        storing nothing, if the study already has trials; TrialError for a bad trial.
        """
        rows = []
        for i, t in enumerate(trials):
            if t.id != i:
                raise TrialError(f"trials to import must have ids 0..{len(trials) - 1} in "
                                 f"order; trial {i} has id {t.id!r}")
            state = TrialState(t.state)
            if state is TrialState.COMPLETE:
                if not (isinstance(t.value, int | float) and math.isfinite(t.value)):
                    raise TrialError(f"complete trial {t.id} needs a finite value, "
                                     f"got {t.value!r}")
            elif t.value is not None:
                raise TrialError(f"{state.value} trial {t.id} cannot have a value")
            rows.append({
                "study_id": study_id,
                "number": t.id,
                "state": state.value,
                "params": json.dumps(t.params),
                "value": None if t.value is None else float(t.value),
                "info": json.dumps(t.info),
                "created_at": t.created_at or _now(),
                "finished_at": t.finished_at,
            })
        with self._transaction(study_id) as conn:
            if conn.execute(
                sa.select(studies_table.c.id).where(studies_table.c.id == study_id)
            ).first() is None:
                raise UnknownStudyError(f"no study with id {study_id} in {self._safe_url()}")
            count = conn.execute(
                sa.select(sa.func.count()).where(trials_table.c.study_id == study_id)
            ).scalar_one()
            if count:
                raise StudyError(f"study {study_id} already has {count} trials; trials are "
                                 "imported into an empty study only")
            if rows:
                conn.execute(trials_table.insert(), rows)
            return [_copy(t) for t in self._trials(conn, study_id)]
