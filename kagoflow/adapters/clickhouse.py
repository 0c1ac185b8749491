"""The ClickHouse archive behind one narrow interface: apply the schema, insert rows, run a query.

clickhouse-driver speaks the native protocol and works with ClickHouse 18.16 (the machines' server) as well
as current releases. Rows are always passed as parameters and inserted column-wise: inline ``VALUES``
literals hang on 18.16, and columnar blocks are the fast path. The driver is synchronous and not
thread-safe, so every call holds a lock; the ``*_async`` twins run it in a worker thread so the event loop
(and with it Kafka heartbeats) never blocks on ClickHouse.
"""

from __future__ import annotations

import asyncio
import re
import struct
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from clickhouse_driver import Client, errors

from kagoflow.settings import PROJECT_ROOT, Settings

SCHEMA_PATH = PROJECT_ROOT / "infra" / "clickhouse" / "schema.sql"
_SCHEMA_DATABASE = "kagoflow"
"""The database name written in schema.sql; replaced by the configured one when applied."""
_SCHEMA_TIMEZONE = "'Asia/Tokyo'"
"""The shop time zone literal written in schema.sql; replaced by ``KAGOFLOW_SHOP_TIMEZONE`` when applied."""
_SCHEMA_CANCELLED = "('cancelled', 'canceled', 'returned')"
"""The default cancelled order statuses written in schema.sql (SPEC §13); replaced by shop.yaml
``cancelled_statuses`` when applied."""
DEFAULT_CANCELLED = ("cancelled", "canceled", "returned")
_TIMEZONE = re.compile(r"[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+)*")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MISSING_OBJECT_CODES = frozenset({errors.ErrorCodes.UNKNOWN_TABLE, errors.ErrorCodes.UNKNOWN_DATABASE})


class ArchiveError(Exception):
    """ClickHouse refused a statement (bad SQL, type mismatch, ...). ``code`` is ClickHouse's error code."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code

    @property
    def missing_object(self) -> bool:
        """The table or database does not exist (a fresh server): applying the schema fixes it."""
        return self.code in _MISSING_OBJECT_CODES


class ArchiveUnavailable(ArchiveError):
    """ClickHouse cannot be reached (down, restarting, network). Retrying later is the remedy."""


class ArchiveRowError(ArchiveError):
    """The driver could not encode the rows for their columns: retrying the same rows never helps."""


def schema_statements(sql: str, *, database: str = _SCHEMA_DATABASE, timezone: str = "Asia/Tokyo",
                      cancelled: Iterable[str] = DEFAULT_CANCELLED) -> list[str]:
    """Split schema.sql into statements (a ``;`` ends a line), drop ``--`` comment lines, and put the
    configured database name in place of ``kagoflow``, the shop time zone in place of ``'Asia/Tokyo'`` and the
    shop's cancelled order statuses in place of ``('cancelled', 'canceled', 'returned')``."""
    if not _IDENTIFIER.fullmatch(database):
        raise ValueError(f"clickhouse database: not an identifier: {database!r}")
    if not _TIMEZONE.fullmatch(timezone):
        raise ValueError(f"shop time zone: not a time zone name: {timezone!r}")
    lines = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
    text = re.sub(rf"\b{_SCHEMA_DATABASE}\b", database, "\n".join(lines))
    text = text.replace(_SCHEMA_TIMEZONE, f"'{timezone}'")
    statuses = _string_tuple(sorted(set(cancelled)))  # after the split: a status may hold anything
    return [stmt.strip().replace(_SCHEMA_CANCELLED, statuses)
            for stmt in re.split(r";\s*$", text, flags=re.MULTILINE) if stmt.strip()]


def _string_tuple(values: Sequence[str]) -> str:
    """``('a', 'b')`` with each value a quoted ClickHouse string literal; ``('')`` for none (no order has an
    empty status)."""
    quoted = ("'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'" for value in values or ("",))
    return "(" + ", ".join(quoted) + ")"


def shop_cancelled_statuses(settings: Settings) -> tuple[str, ...]:
    """shop.yaml ``cancelled_statuses`` of the rules directory (the defaults without a shop file); a bad shop
    file is an error, as it is for the worker."""
    from kagoflow.core.rules import load_shop

    return tuple(sorted(load_shop(settings.rules_dir).segments.cancelled_statuses))


_CREATE_TABLE = re.compile(r"CREATE TABLE IF NOT EXISTS \w+\.(\w+)\s*\((.*?)\n\)\s*ENGINE", re.DOTALL)


def table_columns(sql: str) -> dict[str, list[tuple[str, str]]]:
    """table → [(column, full definition)] of every ``CREATE TABLE`` in schema.sql (one column a line)."""
    out: dict[str, list[tuple[str, str]]] = {}
    for table, body in _CREATE_TABLE.findall("\n".join(schema_statements(sql))):
        lines = (line.strip().rstrip(",") for line in body.splitlines())
        out[table] = [(line.split()[0], line) for line in lines if line]
    return out


class ClickHouseArchive:
    """A connection to the archive database. Reconnects by itself after an outage."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 19000,
        database: str = _SCHEMA_DATABASE,
        connect_timeout: float = 2.0,
        send_receive_timeout: float = 60.0,
        schema_path: Path = SCHEMA_PATH,
        timezone: str = "Asia/Tokyo",
        cancelled_statuses: Iterable[str] = DEFAULT_CANCELLED,
    ) -> None:
        if not _IDENTIFIER.fullmatch(database):
            raise ValueError(f"clickhouse database: not an identifier: {database!r}")
        self.database = database
        self.schema_path = schema_path
        self.timezone = timezone
        self.cancelled_statuses = tuple(cancelled_statuses)
        """Order statuses that are no purchase in the views (shop.yaml ``cancelled_statuses``)."""
        # No default database on the connection: the database may not exist before ensure_schema().
        self._client = Client(
            host=host,
            port=port,
            connect_timeout=connect_timeout,
            send_receive_timeout=send_receive_timeout,
            sync_request_timeout=connect_timeout,
        )
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> ClickHouseArchive:
        return cls(host=settings.clickhouse_host, port=settings.clickhouse_port,
                   database=settings.clickhouse_database, timezone=settings.shop_timezone,
                   cancelled_statuses=shop_cancelled_statuses(settings))

    def table(self, name: str) -> str:
        """``database.name`` for SQL text (names are identifiers, checked)."""
        if not _IDENTIFIER.fullmatch(name):
            raise ValueError(f"clickhouse table: not an identifier: {name!r}")
        return f"{self.database}.{name}"

    # -- synchronous API -------------------------------------------------------------------------

    def ensure_schema(self) -> None:
        """Create the database, tables and views if missing (views are re-created: they hold no data).

        A table that exists from an older schema.sql gets the columns added since (18.16 has no
        ``ADD COLUMN IF NOT EXISTS``), before the views that read them are created."""
        sql = self.schema_path.read_text(encoding="utf-8")
        migrated = False
        for statement in schema_statements(sql, database=self.database, timezone=self.timezone,
                                           cancelled=self.cancelled_statuses):
            if not migrated and not statement.startswith(("CREATE DATABASE", "CREATE TABLE")):
                self._add_missing_columns(sql)
                migrated = True
            self._execute(statement)

    def _add_missing_columns(self, sql: str) -> None:
        existing: dict[str, set[str]] = {}
        for table, column in self._execute("SELECT table, name FROM system.columns WHERE database = %(db)s",
                                           {"db": self.database}):
            existing.setdefault(table, set()).add(column)
        for table, columns in table_columns(sql).items():
            if table not in existing:
                continue
            for name, definition in columns:
                if name not in existing[table]:
                    self._execute(f"ALTER TABLE {self.table(table)} ADD COLUMN {definition}")

    def insert(self, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> int:
        """Insert ``rows`` (tuples in ``columns`` order) as one block; returns the number of rows."""
        if not rows:
            return 0
        return self.insert_columns(table, columns, [list(column) for column in zip(*rows, strict=True)])

    def insert_columns(self, table: str, columns: Sequence[str], data: list[list[Any]]) -> int:
        """Insert column-wise data (one list per column, equal lengths) as one block."""
        if not data or not data[0]:
            return 0
        names = ", ".join(_checked(c) for c in columns)
        self._execute(f"INSERT INTO {self.table(table)} ({names}) VALUES", data, columnar=True)
        return len(data[0])

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Run a SELECT; ``%(name)s`` placeholders are filled from ``params`` by the driver (escaped)."""
        result = self._execute(sql, params)
        return list(result)

    def ping(self) -> bool:
        try:
            self._execute("SELECT 1")
        except ArchiveError:
            return False
        return True

    def close(self) -> None:
        with self._lock:
            self._client.disconnect()

    # -- asynchronous twins ----------------------------------------------------------------------

    async def ensure_schema_async(self) -> None:
        await asyncio.to_thread(self.ensure_schema)

    async def insert_async(self, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> int:
        return await asyncio.to_thread(self.insert, table, columns, rows)

    async def insert_columns_async(self, table: str, columns: Sequence[str], data: list[list[Any]]) -> int:
        return await asyncio.to_thread(self.insert_columns, table, columns, data)

    async def query_async(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        return await asyncio.to_thread(self.query, sql, params)

    # -- internals -------------------------------------------------------------------------------

    def _execute(self, sql: str, params: Any = None, *, columnar: bool = False) -> Any:
        with self._lock:
            try:
                return self._client.execute(sql, params, columnar=columnar)
            except (errors.TypeMismatchError, TypeError, ValueError, AttributeError, OverflowError,
                    struct.error) as exc:
                self._client.disconnect()
                raise ArchiveRowError(f"clickhouse: cannot encode rows: {type(exc).__name__}: {exc}") from exc
            except errors.ServerException as exc:
                raise ArchiveError(f"clickhouse: {exc.message.splitlines()[0]}", code=exc.code) from exc
            except (errors.NetworkError, errors.SocketTimeoutError, EOFError, OSError) as exc:
                self._client.disconnect()
                raise ArchiveUnavailable(f"clickhouse unavailable: {exc}") from exc
            except errors.Error as exc:
                self._client.disconnect()
                raise ArchiveError(f"clickhouse: {exc}", code=getattr(exc, "code", None)) from exc


def _checked(name: str) -> str:
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"clickhouse column: not an identifier: {name!r}")
    return name
