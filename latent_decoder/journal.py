"""The output folder's journal: one SQLite file, the single source of truth for what is done.

``OUT/.latent-decoder.db`` in rollback-journal mode, which works on NFS with one writer (the run
holding the folder's lock); WAL does not. Tables:

* ``attempts``: append-only, one row per decode attempt: status, the input it was made from
  (``identity.InputId``: files and params), the settings, the outputs written (path and size),
  timings, error;
* ``items``: the experiment's items as last scanned: their state (see ``plan.ItemState``), their
  latest attempt and their latest good attempt (whose outputs stay on disk until a new success
  replaces them, even when a later attempt failed);
* ``settings``: the distinct settings fingerprints; ``runs``: one row per run.

Every commit is one transaction: a ``kill -9`` in the middle of one leaves a hot journal that
SQLite rolls back on the next open, so a torn entry never counts. Folders written by the older
one-JSON-file-per-step ``.records/`` layout are migrated on first open. Columns added later
(``ADDED_COLUMNS``) are added by the first writable open; until then readers see them as NULL, and
older versions of the tool ignore them (so the schema version stays).
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import DiskFullError, SetupError
from .identity import InputId
from .layout import OutputLayout
from .states import DONE, FAILED, PENDING

SCHEMA_VERSION = 1
FAILURES_IN_SUMMARY = 1000

_TABLES = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS settings(id INTEGER PRIMARY KEY, fingerprint TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS runs(id INTEGER PRIMARY KEY, started_at TEXT, finished_at TEXT, info TEXT);
CREATE TABLE IF NOT EXISTS attempts(
    id INTEGER PRIMARY KEY, item TEXT NOT NULL, run INTEGER, status TEXT NOT NULL,
    latent TEXT, size INTEGER, mtime_ns INTEGER, digest TEXT, settings INTEGER,
    outputs TEXT, error TEXT, error_type TEXT, load_s REAL, decode_s REAL, encode_s REAL,
    detail TEXT, finished_at TEXT, params TEXT);
CREATE TABLE IF NOT EXISTS items(
    item TEXT PRIMARY KEY, prompt TEXT NOT NULL, video TEXT NOT NULL, step TEXT NOT NULL,
    step_index INTEGER NOT NULL, state TEXT, last INTEGER, good INTEGER);
"""
# (table, column, type) added after schema 1 first shipped; NULL in the rows written before.
ADDED_COLUMNS = (("attempts", "params", "TEXT"),)  # identity.InputId.params: NULL is "unknown" there
_DETAIL_FIELDS = ("latent_shape", "latent_dtype", "latent_stats", "frames_shape", "device", "host", "worker", "pid")


def fingerprint_text(settings: dict[str, Any]) -> str:
    return json.dumps(settings, sort_keys=True, separators=(",", ":"))


# The outputs column: one "kind<TAB>relative path<TAB>size" line per output. Plain text, not JSON: a
# resume of 100,000 items parses it for every item, and str.split is several times faster.
def _outputs_text(outputs: dict[str, str], sizes: dict[str, int | None]) -> str:
    return "\n".join(f"{kind}\t{rel}\t{sizes.get(kind, '')}" for kind, rel in outputs.items())


def _outputs_parse(text: str | None) -> tuple[tuple[str, str, int | None], ...]:
    """(kind, relative path, size) per output."""
    if not text:
        return ()
    found = []
    for line in text.split("\n"):
        kind, rel, size = line.split("\t")
        found.append((kind, rel, int(size) if size else None))
    return tuple(found)


@dataclass
class StepRecord:
    """One attempt at one item, as the journal stores it."""

    item: str
    prompt: str
    video: str
    step: str
    step_index: int
    status: str  # "ok" | "failed"
    latent_path: str
    settings: dict[str, Any]
    input: InputId | None = None
    outputs: dict[str, str] = field(default_factory=dict)  # kind -> path relative to the output folder
    output_sizes: dict[str, int] = field(default_factory=dict)  # kind -> bytes (frame count for a png folder)
    error: str | None = None
    error_type: str | None = None
    decode_seconds: float = 0.0
    encode_seconds: float = 0.0
    load_seconds: float = 0.0
    latent_shape: list[int] | None = None
    latent_dtype: str | None = None
    latent_stats: dict[str, Any] | None = None  # mean, std, channel_norms of the stored latent
    frames_shape: list[int] | None = None
    device: str | None = None
    host: str | None = None
    worker: str | None = None  # "inline", or the Ray actor ("ray-0", ...) that decoded it
    pid: int | None = None
    finished_at: str | None = None
    state: str | None = None  # the item's state when read back from the journal
    attempt: int | None = None  # the attempt's id in the journal, when read back

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["input"] = None if self.input is None else dict(self.input.__dict__)
        return data


@dataclass(slots=True)
class ItemEntry:
    """What the journal knows of one item: enough to decide whether it is done, without any file read."""

    key: str
    prompt: str
    video: str
    step: str
    state: str | None
    status: str | None  # of the latest attempt; None: never attempted
    input: InputId | None
    settings: str | None  # fingerprint text of the latest attempt
    outputs: tuple[tuple[str, str, int | None], ...]  # (kind, relative path, size) of the latest attempt


@dataclass(frozen=True)
class Migration:
    """How records of the older ``.records/`` layout map onto today's experiment."""

    latents_dir: Path
    geometry: dict[str, Any]  # frames/height/width: part of today's fingerprint, absent from old records


class Journal:
    """Owned by the driver; safe to call from its threads (one connection, one lock)."""

    def __init__(self, conn: sqlite3.Connection, path: Path, writable: bool) -> None:
        self.conn = conn
        self.path = path
        self.writable = writable
        self._lock = threading.RLock()
        self._settings_ids: dict[str, int] = {}
        self._params = "a.params"  # or NULL, reading a journal written before that column

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, layout: OutputLayout, write: bool, migration: Migration | None = None) -> "Journal":
        """The folder's journal. Read-only where the folder is not ours to write (a dry run, ``status``):
        a folder without a journal then gets an in-memory one, filled from old records if any."""
        path = layout.journal_path
        try:
            if write:
                conn = sqlite3.connect(path, timeout=60, check_same_thread=False, isolation_level=None)
                conn.execute("PRAGMA journal_mode=DELETE")
                conn.execute("PRAGMA synchronous=FULL")
                journal = cls(conn, path, True)
                journal._init_schema(create=True)
            else:
                journal = cls._open_for_reading(path)
        except sqlite3.DatabaseError as exc:
            raise _journal_error(path, exc) from exc
        legacy = layout.legacy_records_dir
        if migration is not None and legacy.is_dir() and (write or not path.is_file()):
            journal._migrate(legacy, migration, remove=write)
        return journal

    @classmethod
    def _open_for_reading(cls, path: Path) -> "Journal":
        """Read-only where possible. A hot journal left by a killed run needs a rollback, which only a
        writable connection does (SQLite does it on open); a journal never filled counts as empty."""
        if path.is_file():
            for uri in (f"{path.absolute().as_uri()}?mode=ro", f"{path.absolute().as_uri()}?mode=rw"):
                conn = sqlite3.connect(uri, uri=True, timeout=60, check_same_thread=False, isolation_level=None)
                journal = cls(conn, path, False)
                try:
                    journal._init_schema(create=False)
                    return journal
                except sqlite3.OperationalError as exc:
                    conn.close()
                    if "no such table" in str(exc):
                        break
                    if "readonly" not in str(exc) or not os.access(path.parent, os.W_OK):
                        raise
        conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        journal = cls(conn, path, False)
        journal._init_schema(create=True)
        return journal

    def _init_schema(self, create: bool) -> None:
        if create:  # one transaction, so that a reader never sees tables without their schema version
            self.conn.executescript(f"BEGIN IMMEDIATE; {_TABLES} INSERT OR IGNORE INTO meta VALUES "
                                    f"('schema', '{SCHEMA_VERSION}'); COMMIT;")
        row = self.conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if row is None:
            raise sqlite3.OperationalError("no such table: journal not initialised")
        if int(row[0]) > SCHEMA_VERSION:
            raise SetupError(f"{self.path}: journal schema {row[0]} is newer than this "
                             f"latent-decoder understands ({SCHEMA_VERSION}); upgrade latent-decoder")
        if create:
            self._add_columns()
        if "params" not in self._columns("attempts"):
            self._params = "NULL"

    def _columns(self, table: str) -> set[str]:
        return {row[1] for row in self.conn.execute(f"PRAGMA table_info({table})")}

    def _add_columns(self) -> None:
        """Bring a journal written by an earlier version up to today's columns (one transaction)."""
        if all(column in self._columns(table) for table, column, _ in ADDED_COLUMNS):
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            for table, column, kind in ADDED_COLUMNS:
                if column not in self._columns(table):
                    self.conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writing

    def _write(self, fn: Any, *args: Any) -> Any:
        """Run ``fn`` in one transaction; a full disk stops the run, other failures name the journal."""
        with self._lock:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(*args)
                except BaseException:
                    if self.conn.in_transaction:  # SQLite ends it by itself on some errors (disk full)
                        self.conn.execute("ROLLBACK")
                    raise
                self.conn.execute("COMMIT")
                return result
            except sqlite3.DatabaseError as exc:
                raise _journal_error(self.path, exc) from exc

    def _settings_id(self, fingerprint: str) -> int:
        known = self._settings_ids.get(fingerprint)
        if known is None:
            self.conn.execute("INSERT OR IGNORE INTO settings(fingerprint) VALUES (?)", (fingerprint,))
            known = self.conn.execute("SELECT id FROM settings WHERE fingerprint=?", (fingerprint,)).fetchone()[0]
            self._settings_ids[fingerprint] = known
        return known

    def begin_run(self, info: dict[str, Any]) -> int:
        return self._write(lambda: self.conn.execute(
            "INSERT INTO runs(started_at, info) VALUES (?, ?)", (_now(), json.dumps(info))).lastrowid)

    def end_run(self, run: int, info: dict[str, Any]) -> None:
        self._write(lambda: self.conn.execute("UPDATE runs SET finished_at=?, info=? WHERE id=?",
                                              (_now(), json.dumps(info), run)))

    def append(self, records: Iterable[StepRecord], run: int | None = None) -> list[dict[str, str]]:
        """Store attempts (one transaction) and make each its item's latest; a success also becomes the
        item's good attempt. Returns, per record, the outputs of the good attempt it replaced."""
        return self._write(self._append, list(records), run)

    def _append(self, records: list[StepRecord], run: int | None) -> list[dict[str, str]]:
        replaced = []
        for r in records:
            inp = r.input
            detail = {k: getattr(r, k) for k in _DETAIL_FIELDS if getattr(r, k) is not None}
            attempt = self.conn.execute(
                "INSERT INTO attempts(item, run, status, latent, size, mtime_ns, digest, params, settings, outputs,"
                " error, error_type, load_s, decode_s, encode_s, detail, finished_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (r.item, run, r.status, inp.path if inp else r.latent_path, inp.size if inp else None,
                 inp.mtime_ns if inp else None, inp.digest if inp else None, inp.params if inp else None,
                 self._settings_id(fingerprint_text(r.settings)), _outputs_text(r.outputs, r.output_sizes), r.error, r.error_type,
                 r.load_seconds, r.decode_seconds, r.encode_seconds, json.dumps(detail), r.finished_at or _now()),
            ).lastrowid
            old = self.conn.execute("SELECT a.outputs FROM items i JOIN attempts a ON a.id = i.good WHERE i.item=?",
                                    (r.item,)).fetchone()
            replaced.append({kind: rel for kind, rel, _ in _outputs_parse(old[0])} if old and r.ok else {})
            self.conn.execute(
                "INSERT INTO items(item, prompt, video, step, step_index, state, last, good) VALUES (?,?,?,?,?,?,?,?)"
                " ON CONFLICT(item) DO UPDATE SET state=excluded.state, last=excluded.last,"
                " good=COALESCE(excluded.good, items.good)",
                (r.item, r.prompt, r.video, r.step, r.step_index, DONE if r.ok else FAILED, attempt,
                 attempt if r.ok else None))
        return replaced

    def sync(self, steps: Iterable[Any], states: dict[str, str], refreshed: dict[str, InputId],
             entries: dict[str, ItemEntry] | None = None) -> bool:
        """Make the journal's items the experiment's as scanned now (``steps``), with ``states``: new
        items are added, items whose latent is gone are dropped, and latents found unchanged after a
        stat change get their new stat. Returns whether anything had to change; writes only then,
        and only to a writable journal. ``entries``: what ``entries()`` just returned, if at hand."""
        if entries is None:
            entries = self.entries()
        present = {s.key for s in steps}
        add = [s for s in steps if s.key not in entries or entries[s.key].state != states[s.key]]
        gone = [k for k in entries if k not in present]
        if not (add or gone or refreshed):
            return False
        if self.writable:
            self._write(self._sync, add, states, gone, refreshed)
        return True

    def _sync(self, add: list[Any], states: dict[str, str], gone: list[str], refreshed: dict[str, InputId]) -> None:
        self.conn.executemany(
            "INSERT INTO items(item, prompt, video, step, step_index, state) VALUES (?,?,?,?,?,?)"
            " ON CONFLICT(item) DO UPDATE SET state=excluded.state",
            [(s.key, s.prompt, s.video, s.step, s.step_index, states[s.key]) for s in add])
        self.conn.executemany("DELETE FROM items WHERE item=?", [(k,) for k in gone])
        self.conn.executemany(
            "UPDATE attempts SET latent=?, size=?, mtime_ns=?, params=? WHERE id=(SELECT last FROM items WHERE item=?)",
            [(i.path, i.size, i.mtime_ns, i.params, key) for key, i in refreshed.items()])

    # ------------------------------------------------------------------ reading

    def entries(self) -> dict[str, ItemEntry]:
        """Every item the journal knows, with its latest attempt's identity, settings and outputs."""
        with self._lock:
            rows = self.conn.execute(
                "SELECT i.item, i.prompt, i.video, i.step, i.state, a.status, a.latent, a.size, a.mtime_ns, a.digest,"
                f" {self._params}, s.fingerprint, a.outputs FROM items i LEFT JOIN attempts a ON a.id = i.last"
                " LEFT JOIN settings s ON s.id = a.settings").fetchall()
        found = {}
        for key, prompt, video, step, state, status, latent, size, mtime, dig, params, fp, outputs in rows:
            inp = InputId(latent, size, mtime, dig, params) if status is not None and size is not None else None
            found[key] = ItemEntry(key, prompt, video, step, state, status, inp, fp, _outputs_parse(outputs))
        return found

    def counts(self) -> list[tuple[str, str, str, int, float, float]]:
        """(prompt, video, state, items, decode seconds, encode seconds) per video and state; the
        seconds are those of the items' latest attempts."""
        with self._lock:
            return self.conn.execute(
                f"SELECT i.prompt, i.video, COALESCE(i.state, '{PENDING}'), COUNT(*), COALESCE(SUM(a.decode_s), 0),"
                " COALESCE(SUM(a.encode_s), 0) FROM items i LEFT JOIN attempts a ON a.id = i.last"
                " GROUP BY i.prompt, i.video, i.state ORDER BY i.prompt, i.video").fetchall()

    def records(self, state: str | None = None, prompt: str | None = None, video: str | None = None,
                limit: int | None = None) -> Iterator[StepRecord]:
        """The latest attempt of each item (items never attempted come with status None), in item order."""
        where, args = [], []
        for column, value in (("i.state", state), ("i.prompt", prompt), ("i.video", video)):
            if value is not None:
                where.append(f"{column}=?")
                args.append(value)
        sql = ("SELECT i.item, i.prompt, i.video, i.step, i.step_index, i.state, a.status, a.latent, a.size,"
               f" a.mtime_ns, a.digest, {self._params}, s.fingerprint, a.outputs, a.error, a.error_type, a.load_s,"
               " a.decode_s, a.encode_s, a.detail, a.finished_at, a.id"
               " FROM items i LEFT JOIN attempts a ON a.id = i.last LEFT JOIN settings s ON s.id = a.settings")
        sql += (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY i.prompt, i.video, i.step_index"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._lock:
            rows = self.conn.execute(sql, args).fetchall()
        for row in rows:
            yield _record(row)

    def last_run(self) -> dict[str, Any] | None:
        with self._lock:
            row = self.conn.execute("SELECT info FROM runs ORDER BY id DESC LIMIT 1").fetchone()
        return json.loads(row[0]) if row and row[0] else None

    # ------------------------------------------------------------------ migration

    def _migrate(self, legacy: Path, migration: Migration, remove: bool) -> None:
        """Import ``.records/<prompt>/<video>/<step>.json``. An old record does not say which bytes it
        was made from: it is trusted for the latent file now at its place when that file was last
        modified before the record was written, and counts as changed input otherwise."""
        records = []
        for path in sorted(legacy.rglob("*.json")):
            try:
                data = json.loads(path.read_text())
                records.append(_legacy_record(data, migration))
            except (OSError, ValueError, TypeError, KeyError):
                continue  # a torn or foreign file: that item is simply not done
        if self.writable:
            self._write(self._append, records, None)
            if remove:
                shutil.rmtree(legacy, ignore_errors=True)
        else:
            self._append(records, None)


def _legacy_record(data: dict[str, Any], migration: Migration) -> StepRecord:
    latent = migration.latents_dir / data["prompt"] / data["video"] / Path(data["latent_path"]).name
    settings = {**migration.geometry, **data["settings"]}
    finished = datetime.fromisoformat(data["finished_at"]).timestamp() if data.get("finished_at") else 0
    try:
        st = os.stat(latent)
        trusted = st.st_mtime_ns <= (finished + 1) * 1e9
        identity = InputId(str(latent), st.st_size if trusted else -1, st.st_mtime_ns if trusted else -1, None)
    except OSError:
        identity = InputId(str(latent), -1, -1, None)
    fields = {k: v for k, v in data.items() if k in StepRecord.__dataclass_fields__ and k not in ("settings", "input")}
    return StepRecord(**{**fields, "settings": settings, "input": identity, "latent_path": str(latent)})


def _record(row: tuple[Any, ...]) -> StepRecord:
    (item, prompt, video, step, index, state, status, latent, size, mtime, dig, params, fp, outputs, error, error_type,
     load_s, decode_s, encode_s, detail, finished, attempt) = row
    outs = _outputs_parse(outputs)
    return StepRecord(
        item=item, prompt=prompt, video=video, step=step, step_index=index, status=status, latent_path=latent,
        settings=json.loads(fp) if fp else {}, input=InputId(latent, size, mtime, dig, params) if status else None,
        outputs={kind: rel for kind, rel, _ in outs}, output_sizes={kind: size for kind, _, size in outs},
        error=error, error_type=error_type, load_seconds=load_s or 0.0, decode_seconds=decode_s or 0.0,
        encode_seconds=encode_s or 0.0, finished_at=finished, state=state, attempt=attempt,
        **(json.loads(detail) if detail else {}))


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def _journal_error(path: Path, exc: sqlite3.DatabaseError) -> Exception:
    text = str(exc)
    if "full" in text:
        return DiskFullError(f"{path}: disk full while writing the journal ({text})")
    if "readonly" in text or "unable to open" in text:
        return SetupError(f"{path}: cannot write the journal ({text}); is the output folder writable?")
    return SetupError(f"{path}: journal unusable ({text}); move it away to start the folder's bookkeeping anew")
