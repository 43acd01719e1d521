"""The service's state in SQLite: users and their hashed keys, concepts, training jobs, generated images.

One connection per thread (sqlite3's rule), WAL journaling so that readers never wait for the worker's writes. Keys
are 32 random bytes: a SHA-256 of one is as safe to store as a slow hash of a password, and fast to check. Ids are
never reused (AUTOINCREMENT): a deleted concept's id, and its file name, never come back as another user's.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, key_hash TEXT NOT NULL, revoked INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS concepts (
    id INTEGER PRIMARY KEY AUTOINCREMENT, user_id INTEGER NOT NULL REFERENCES users(id), token TEXT NOT NULL,
    supercategory TEXT NOT NULL, source TEXT NOT NULL, created REAL NOT NULL, UNIQUE (user_id, token));
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, user_id INTEGER NOT NULL REFERENCES users(id), token TEXT NOT NULL,
    supercategory TEXT NOT NULL, images INTEGER NOT NULL, steps INTEGER NOT NULL, state TEXT NOT NULL,
    step INTEGER NOT NULL DEFAULT 0, loss REAL, error TEXT, concept_id INTEGER, created REAL NOT NULL,
    updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY, user_id INTEGER NOT NULL REFERENCES users(id), prompt TEXT NOT NULL, settings TEXT NOT NULL,
    created REAL NOT NULL);
"""
ACTIVE = ("queued", "running")
MAX_ID = 2**63 - 1  # SQLite's largest integer  # a job's states before it ends: done, failed or cancelled


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass
class User:
    id: int
    name: str


class Store:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.local = threading.local()
        with self.connection() as db:
            db.executescript(SCHEMA)

    def connection(self) -> sqlite3.Connection:
        db = getattr(self.local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)  # autocommit; BEGIN where several
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA foreign_keys=ON")
            self.local.db = db
        return db

    def rows(self, sql: str, *args) -> list[dict]:
        return [dict(row) for row in self.connection().execute(sql, args).fetchall()]

    def row(self, sql: str, *args) -> dict | None:
        found = self.rows(sql, *args)
        return found[0] if found else None

    @contextmanager
    def transaction(self):
        """BEGIN IMMEDIATE ... COMMIT: checks and writes inside it see no other writer in between."""
        db = self.connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def execute(self, sql: str, *args) -> int:
        """Run one statement; the new row's id (an INSERT) or the number of rows changed."""
        cursor = self.connection().execute(sql, args)
        return cursor.lastrowid if sql.lstrip().upper().startswith("INSERT") else cursor.rowcount

    # -- users --------------------------------------------------------------------------------------
    def add_user(self, name: str) -> str:
        """A new user's key (shown once; only its hash is kept). A revoked user's name gets a fresh key."""
        key = "pk_" + secrets.token_urlsafe(32)
        existing = self.row("SELECT id, revoked FROM users WHERE name = ?", name)
        if existing is not None and not existing["revoked"]:
            raise ValueError(f"user {name} exists (revoke the key first to issue a new one)")
        if existing is None:
            self.execute(
                "INSERT INTO users (name, key_hash, created) VALUES (?, ?, ?)", name, key_hash(key), time.time()
            )
        else:
            self.execute("UPDATE users SET key_hash = ?, revoked = 0 WHERE id = ?", key_hash(key), existing["id"])
        return key

    def revoke_user(self, name: str) -> None:
        if not self.execute("UPDATE users SET revoked = 1 WHERE name = ?", name):
            raise ValueError(f"no user named {name}")

    def user_for_key(self, key: str) -> User | None:
        wanted = key_hash(key)
        for row in self.rows("SELECT id, name, key_hash FROM users WHERE revoked = 0"):
            if hmac.compare_digest(row["key_hash"], wanted):
                return User(row["id"], row["name"])
        return None

    # -- concepts -----------------------------------------------------------------------------------
    def concepts(self, user_id: int) -> list[dict]:
        return self.rows("SELECT * FROM concepts WHERE user_id = ? ORDER BY id", user_id)

    def concept(self, user_id: int, concept_id: int) -> dict | None:
        return self.row("SELECT * FROM concepts WHERE id = ? AND user_id = ?", concept_id, user_id)

    def add_concept(self, user_id: int, token: str, supercategory: str, source: str) -> int:
        return self.execute(
            "INSERT INTO concepts (user_id, token, supercategory, source, created) VALUES (?, ?, ?, ?, ?)",
            user_id,
            token,
            supercategory,
            source,
            time.time(),
        )

    def delete_concept(self, user_id: int, concept_id: int) -> bool:
        return bool(self.execute("DELETE FROM concepts WHERE id = ? AND user_id = ?", concept_id, user_id))

    def token_taken(self, user_id: int, token: str) -> bool:
        """The user has a concept, or an unfinished job, with this token."""
        placeholders = ", ".join("?" for _ in ACTIVE)
        return bool(
            self.row("SELECT 1 FROM concepts WHERE user_id = ? AND token = ?", user_id, token)
            or self.row(
                f"SELECT 1 FROM jobs WHERE user_id = ? AND token = ? AND state IN ({placeholders})",
                user_id,
                token,
                *ACTIVE,
            )
        )

    # -- jobs ---------------------------------------------------------------------------------------
    def add_job(self, user_id: int, token: str, supercategory: str, images: int, steps: int) -> int:
        now = time.time()
        return self.execute(
            "INSERT INTO jobs (user_id, token, supercategory, images, steps, state, created, updated) "
            "VALUES (?, ?, ?, ?, ?, 'queued', ?, ?)",
            user_id,
            token,
            supercategory,
            images,
            steps,
            now,
            now,
        )

    def job(self, job_id: int, user_id: int | None = None) -> dict | None:
        if user_id is None:
            return self.row("SELECT * FROM jobs WHERE id = ?", job_id)
        return self.row("SELECT * FROM jobs WHERE id = ? AND user_id = ?", job_id, user_id)

    def jobs(self, user_id: int) -> list[dict]:
        return self.rows("SELECT * FROM jobs WHERE user_id = ? ORDER BY id", user_id)

    def active_jobs(self, user_id: int | None = None) -> int:
        placeholders = ", ".join("?" for _ in ACTIVE)
        if user_id is None:
            return self.row(f"SELECT COUNT(*) AS n FROM jobs WHERE state IN ({placeholders})", *ACTIVE)["n"]
        query = f"SELECT COUNT(*) AS n FROM jobs WHERE user_id = ? AND state IN ({placeholders})"
        return self.row(query, user_id, *ACTIVE)["n"]

    def next_job(self) -> dict | None:
        """The job to work on: one left running by a server that stopped, else the oldest queued."""
        return self.row(
            "SELECT * FROM jobs WHERE state IN ('running', 'queued') ORDER BY state = 'running' DESC, id LIMIT 1"
        )

    def update_job(self, job_id: int, only_if: str | None = None, **values) -> bool:
        """Set a job's fields (only while its state is ``only_if``, when given); whether it changed."""
        values["updated"] = time.time()
        assignments = ", ".join(f"{name} = ?" for name in values)
        if only_if is None:
            return bool(self.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", *values.values(), job_id))
        query = f"UPDATE jobs SET {assignments} WHERE id = ? AND state = ?"
        return bool(self.execute(query, *values.values(), job_id, only_if))

    def claim_job(self, job_id: int) -> bool:
        """The worker takes a job: running, unless it was cancelled meanwhile."""
        return bool(
            self.execute(
                "UPDATE jobs SET state = 'running', updated = ? WHERE id = ? AND state IN ('queued', 'running')",
                time.time(),
                job_id,
            )
        )

    def cancel_job(self, job_id: int, user_id: int) -> str | None:
        """Cancel an unfinished job; its state when cancelled (None: no such job of the user's). A queued one is no
        longer claimed by the worker; a running one stops at its next step (the worker sees the state)."""
        for state in ACTIVE:
            changed = self.execute(
                "UPDATE jobs SET state = 'cancelled', updated = ? WHERE id = ? AND user_id = ? AND state = ?",
                time.time(),
                job_id,
                user_id,
                state,
            )
            if changed:
                return state
        job = self.job(job_id, user_id)
        return None if job is None else job["state"]

    # -- images -------------------------------------------------------------------------------------
    def add_image(self, image_id: str, user_id: int, prompt: str, settings: dict) -> None:
        self.execute(
            "INSERT INTO images (id, user_id, prompt, settings, created) VALUES (?, ?, ?, ?, ?)",
            image_id,
            user_id,
            prompt,
            json.dumps(settings, sort_keys=True),
            time.time(),
        )

    def images(self, user_id: int, limit: int = 100) -> list[dict]:
        rows = self.rows("SELECT * FROM images WHERE user_id = ? ORDER BY created DESC LIMIT ?", user_id, limit)
        for row in rows:
            row["settings"] = json.loads(row["settings"])
        return rows

    def image(self, image_id: str, user_id: int) -> dict | None:
        return self.row("SELECT * FROM images WHERE id = ? AND user_id = ?", image_id, user_id)
