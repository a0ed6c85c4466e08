"""Open the store a configuration names: the one place that picks an adapter."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recognizer.config import Config
from recognizer.store import keys
from recognizer.store.crypto import TemplateCipher
from recognizer.store.files import private_dir
from recognizer.store.ports import Store


@dataclass(frozen=True, slots=True)
class StoreLocation:
    """Where a store is, for the commands that check or change its key: a SQLite file, or
    a PostgreSQL URL."""

    sqlite_path: Path | None = None
    url: str = ""

    @classmethod
    def of(cls, config: Config) -> StoreLocation:
        return cls(url=config.database_url) if config.uses_postgres else cls(config.db_path)

    def open(
        self,
        cipher: TemplateCipher,
        pool_size: int = 2,
        wait_s: float = 0.0,
        retry_max_s: float = 1.0,
    ) -> Any:
        """The adapter (SqlStore), key-checked and migrated; `pool_size` connections on
        PostgreSQL (a command needs few, a server `database_pool_size`), waiting up to
        `wait_s` for a database that is down (a server's `database_wait_s`)."""
        if self.url:
            from recognizer.store.postgres import PostgresStore  # psycopg only when used

            return PostgresStore(
                self.url,
                cipher,
                pool_size=pool_size,
                database_wait_s=wait_s,
                retry_max_s=retry_max_s,
            )
        from recognizer.store.sqlite import SqliteStore

        return SqliteStore(self._path, cipher)

    def read_key_state(self) -> keys.KeyState | None:
        if self.url:
            from recognizer.store import postgres

            return postgres.read_key_state(self.url)
        from recognizer.store import sqlite as store

        return store.read_key_state(self._path)

    def check_key(self, cipher: TemplateCipher) -> keys.Unlocked:
        """Raises TemplateKeyError if `cipher` does not fit; writes nothing."""
        if self.url:
            from recognizer.store import postgres

            return postgres.check_key(self.url, cipher)
        from recognizer.store import sqlite as store

        return store.check_key(self._path, cipher)

    @property
    def _path(self) -> Path:
        assert self.sqlite_path is not None
        return self.sqlite_path

    def __str__(self) -> str:
        return _redact(self.url) if self.url else str(self.sqlite_path)


def open_store(config: Config, cipher: TemplateCipher) -> Store:
    """SQLite under data_dir (the embedded default), or PostgreSQL for `postgresql://` URLs.
    Either way the key is checked first and pending schema migrations are applied."""
    if not config.uses_postgres:
        private_dir(config.db_path.parent)
    store: Store = StoreLocation.of(config).open(
        cipher, config.database_pool_size, config.database_wait_s, config.database_retry_max_s
    )
    return store


def describe(config: Config) -> str:
    """Where the store is, for logs and commands: never the URL's password."""
    return str(StoreLocation.of(config))


def _redact(url: str) -> str:
    from psycopg.conninfo import conninfo_to_dict

    info = conninfo_to_dict(url)
    user, host, port = (info.get(k, "") for k in ("user", "host", "port"))
    return f"postgresql://{user}@{host}:{port}/{info.get('dbname', '')}"
