"""The durable state of IPDR usage: service-flow instance baselines and session watermarks, as a snapshot plus an
appended, checksummed journal (see :mod:`mediation.ipdr.usage` for how it makes the usage exactly-once)."""

from __future__ import annotations

import json
import logging
import os
import struct
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from storage.durable import fsync_dir

log = logging.getLogger(__name__)

STATE_DTYPE = np.dtype([("key", "<u8"), ("octets", "<u8"), ("packets", "<u8"), ("rec_time", "<i8"),
                        ("sys_up", "<i8"), ("stopped", "u1")])
_MAGIC = b"IPDJ"
_CHUNK = struct.Struct("<4sIII")  # magic, json length, rows, crc32 of json + rows
FIRST_SESSIONS = "first_sessions.json"


class StateJournal:
    """SF instance baselines as growable numpy arrays indexed by a dict, plus small JSON metadata.

    Durable as ``snapshot-<gen>.npz`` + ``journal-<gen>.bin`` (appended chunks of changed rows, each with a CRC;
    a torn last chunk is ignored: it was never acknowledged to the CMTS, so its records come again).
    """

    def __init__(self, directory: Path | None, readonly: bool = False) -> None:
        self.dir = directory
        self.readonly = readonly  # inspection while the daemon runs: never truncate or delete its files
        self.rows = np.zeros(1024, dtype=STATE_DTYPE)
        self.n = 0
        self.index: dict[int, int] = {}
        self.meta: dict[str, Any] = {"since_ms": {}, "watermarks": {}}
        self.first_sessions: dict[str, int] = {}
        """Exporter name -> when flowmed first started a session with it (ms); durable on its own file."""
        self.gen = 0
        self.dirty: list[np.ndarray] = []
        self.journal_rows = 0
        self._undo: list[tuple[np.ndarray, np.ndarray]] | None = None
        """Undo information since the last ``checkpoint()`` (None: no checkpoint taken, nothing recorded)."""
        self._journal: BinaryIO | None = None
        if directory is not None:
            if not readonly:
                directory.mkdir(parents=True, exist_ok=True)
            if directory.exists():
                self._load()

    # -- rows
    def lookup(self, keys: np.ndarray) -> np.ndarray:
        get = self.index.get
        return np.fromiter((get(k, -1) for k in keys.tolist()), dtype=np.int64, count=len(keys))

    def checkpoint(self) -> tuple[Any, ...]:
        """Undo information for the changes that follow (see :meth:`rollback`)."""
        undo: list[tuple[np.ndarray, np.ndarray]] = []
        self._undo = undo
        return (self.n, json.dumps(self.meta), undo)

    def rollback(self, token: tuple[Any, ...]) -> None:
        """Undo every change since ``checkpoint()`` returned ``token`` (nothing else may have changed since)."""
        n0, meta, undo = token
        for rows, old in reversed(undo):
            self.rows[rows] = old
        for key in self.rows["key"][n0 : self.n].tolist():
            self.index.pop(key, None)
        self.rows[n0 : self.n] = np.zeros(self.n - n0, dtype=STATE_DTYPE)
        self.n = n0
        self.meta = json.loads(meta)
        undo.clear()

    def upsert(self, rows: np.ndarray, values: np.ndarray) -> None:
        """Write ``values`` (state dtype) at ``rows``; rows of -1 are new keys, appended."""
        undo = self._undo
        if undo is not None:
            existing = rows[rows >= 0]
            undo.append((existing, self.rows[existing].copy()))
        new = rows < 0
        if new.any():
            k = int(new.sum())
            while self.n + k > len(self.rows):
                self.rows = np.concatenate([self.rows, np.zeros(len(self.rows), dtype=STATE_DTYPE)])
            idx = np.arange(self.n, self.n + k)
            for key, i in zip(values["key"][new].tolist(), idx.tolist(), strict=True):
                self.index[key] = i
            rows = rows.copy()
            rows[new] = idx
            self.n += k
        self.rows[rows] = values
        self.dirty.append(rows)

    # -- durability
    def _paths(self, gen: int) -> tuple[Path, Path]:
        assert self.dir is not None
        return self.dir / f"snapshot-{gen}.npz", self.dir / f"journal-{gen}.bin"

    def _load(self) -> None:
        directory = self.dir
        assert directory is not None  # only called with a directory
        first = directory / FIRST_SESSIONS
        if first.exists():
            try:
                self.first_sessions = {str(k): int(v) for k, v in json.loads(first.read_text()).items()}
            except (ValueError, AttributeError) as exc:  # written atomically, so only a hand edit gets here
                raise ValueError(f"ipdr state: {first} is not a JSON object of exporter -> ms: {exc}") from None
        snaps = sorted(self.dir.glob("snapshot-*.npz"), key=lambda p: int(p.stem.split("-")[1]))  # type: ignore
        if snaps:
            self.gen = int(snaps[-1].stem.split("-")[1])
            with np.load(snaps[-1], allow_pickle=False) as z:
                rows = z["rows"]
                self.meta = json.loads(bytes(z["meta"]).decode())
            self._put(rows)
        journal = self._paths(self.gen)[1]
        if journal.exists():
            data = journal.read_bytes()
            pos = 0
            while pos + _CHUNK.size <= len(data):
                magic, jlen, nrows, crc = _CHUNK.unpack_from(data, pos)
                body_end = pos + _CHUNK.size + jlen + nrows * STATE_DTYPE.itemsize
                if magic != _MAGIC or body_end > len(data) or zlib.crc32(data[pos + _CHUNK.size:body_end]) != crc:
                    log.warning("ipdr state: journal %s ends with a torn chunk at %d (ignored)", journal, pos)
                    break
                meta = json.loads(data[pos + _CHUNK.size:pos + _CHUNK.size + jlen])
                rows = np.frombuffer(data, STATE_DTYPE, nrows, pos + _CHUNK.size + jlen)
                self.meta = meta
                self._put(rows)
                self.journal_rows += nrows
                pos = body_end
            if not self.readonly:
                with open(journal, "r+b") as f:  # cut a torn tail so later appends stay readable
                    f.truncate(pos)
        self.dirty.clear()
        if self.readonly:
            return
        for old in directory.glob("*"):  # leftovers of an interrupted compaction
            if old.name not in (f"snapshot-{self.gen}.npz", f"journal-{self.gen}.bin", FIRST_SESSIONS):
                old.unlink(missing_ok=True)

    def _put(self, rows: np.ndarray) -> None:
        if len(rows):
            self.upsert(self.lookup(rows["key"]), np.array(rows))

    def record_first_session(self, exporter: str, ms: int) -> int:
        """Keep ``ms`` as the first session with ``exporter`` unless one is known; durable before returning (its
        own small file, replaced atomically: unlike the journal it must not wait for a flush, and must not carry
        the uncommitted baselines with it). Returns the first session's time."""
        known = self.first_sessions.get(exporter)
        if known is not None:
            return known
        self.first_sessions[exporter] = int(ms)
        if self.dir is not None and not self.readonly:
            path = self.dir / FIRST_SESSIONS
            tmp = path.with_suffix(".tmp")
            with open(tmp, "w") as f:
                json.dump(self.first_sessions, f, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            fsync_dir(self.dir)
        return int(ms)

    def commit(self) -> None:
        """Append the changed rows and the metadata to the journal and fsync it."""
        if self.dir is None:
            self.dirty.clear()
            return
        idx = np.unique(np.concatenate(self.dirty)) if self.dirty else np.zeros(0, np.int64)
        rows = self.rows[idx[idx < self.n]]  # rows past n were undone
        meta = json.dumps(self.meta, separators=(",", ":")).encode()
        body = meta + rows.tobytes()
        chunk = _CHUNK.pack(_MAGIC, len(meta), len(rows), zlib.crc32(body)) + body
        if self._journal is None:
            self._journal = open(self._paths(self.gen)[1], "ab")  # noqa: SIM115 - kept open between commits
        self._journal.write(chunk)
        self._journal.flush()
        os.fsync(self._journal.fileno())
        self.journal_rows += len(rows)
        self.dirty.clear()

    def compact(self, drop_before_ms: int) -> None:
        """Write a new snapshot without instances last seen before ``drop_before_ms`` (tombstones of stopped flows,
        and flows that vanished without a Stop, e.g. in a CMTS reboot), start a new journal, remove the old files."""
        if self.dir is None:
            return
        live = self.rows[: self.n]
        keep = live["rec_time"] >= drop_before_ms
        rows = np.ascontiguousarray(live[keep])
        gen = self.gen + 1
        snap, _ = self._paths(gen)
        tmp = snap.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, rows=rows, meta=np.frombuffer(json.dumps(self.meta).encode(), dtype=np.uint8))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, snap)
        fsync_dir(self.dir)
        old_snap, old_journal = self._paths(self.gen)
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        self.gen, self.journal_rows = gen, 0
        old_snap.unlink(missing_ok=True)
        old_journal.unlink(missing_ok=True)
        self.rows, self.n, self.index = np.zeros(max(1024, len(rows) * 2), dtype=STATE_DTYPE), 0, {}
        self._put(rows)
        self.dirty.clear()

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    def summary(self) -> dict[str, Any]:
        """What the state holds (for ``flowmed ipdr state``)."""
        live = self.rows[: self.n]
        last = int(live["rec_time"].max()) if self.n else 0
        return {"generation": self.gen, "instances": int(self.n), "stopped": int((live["stopped"] == 1).sum()),
                "journal_rows": self.journal_rows, "last_record_ms": last, "since_ms": self.meta["since_ms"],
                "first_sessions": self.first_sessions, "watermarks": self.meta["watermarks"]}
