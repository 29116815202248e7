"""A database server as the tracking store (`postgresql://`, `mysql://`, `mssql://`): the driver
SQLAlchemy loads for it, one connection tried before anything starts, and the URI as it may be
printed (without its password).

SQLAlchemy 2 loads psycopg (3) for a plain `postgresql://` URI; most people install
psycopg2-binary for PostgreSQL, and with only that installed MLflow died in a traceback ending
`No module named 'psycopg'`. Here a plain URI gets whichever of the two is installed. A server
that does not answer, refuses the password or has no such database made MLflow retry for two
minutes and then print two tracebacks; `check_database` says it in one line, in seconds.
"""

from __future__ import annotations

import functools
import importlib
import re

# The database schemes MLflow's SQL store accepts besides SQLite (mlflow/store/db/db_types.py).
DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")
# Seconds the pre-flight connection waits for the server (the drivers wait for ever by default),
# given to the drivers known to take it as `connect_timeout`.
CONNECT_TIMEOUT_S = 5
TIMEOUT_DRIVERS = ("psycopg", "psycopg2", "pymysql", "mysqldb")
POSTGRES_DRIVERS = (("psycopg", "psycopg"), ("psycopg2", "psycopg2"))  # (SQLAlchemy's name, module)
POSTGRES_INSTALL = "pip install 'tuning-platform[postgres]' (psycopg 3) or pip install psycopg2-binary"


class DatabaseError(Exception):
    """A database store the job could not use; the message is one line, without the password."""


def database_scheme(uri: str) -> str | None:
    """`postgresql`, `mysql` or `mssql` for a database server's URI (with or without a driver
    named after `+`); None for any other store."""
    scheme = uri.partition("://")[0].lower() if "://" in uri else ""
    base = scheme.partition("+")[0]
    if base == "postgres":  # Heroku's spelling, which SQLAlchemy refuses
        return base
    return base if base in DATABASE_SCHEMES else None


# A database URI's password in any text: `SCHEME://USER:PASSWORD@`, and `password=` in its query.
_PASSWORD_IN_NETLOC = re.compile(
    r"\b((?:postgres(?:ql)?|mysql|mssql|https?)(?:\+\w+)?://[^:/@\s'\"]*):[^\s'\"]*@(?=[^@\s'\"]*(?:[/?\s'\"]|$))"
)
_PASSWORD_IN_QUERY = re.compile(r"([?&])password=[^&\s'\"]*(&?)", re.IGNORECASE)


def printable(uri: str) -> str:
    """The text with every database URI in it less its password: the commands the job prints
    then work as they are where the password comes from PGPASSWORD or ~/.pgpass (a `***` in its
    place would be sent as the password)."""
    text = _PASSWORD_IN_NETLOC.sub(r"\1@", uri)
    return _PASSWORD_IN_QUERY.sub(lambda m: m.group(1) if m.group(2) else "", text)


@functools.lru_cache(maxsize=32)
def with_installed_driver(uri: str) -> str:
    """The URI SQLAlchemy (and so MLflow) opens: a plain `postgresql://` names the driver that is
    installed, psycopg 3 first (SQLAlchemy's own choice), then psycopg2. Raises DatabaseError
    when neither is installed; any other URI is returned as it is."""
    scheme, sep, rest = uri.partition("://")
    if scheme.lower() == "postgres":
        raise DatabaseError("SQLAlchemy does not read `postgres://`: write the URI as postgresql://USER@HOST:PORT/DB")
    if scheme.lower() != "postgresql":
        return uri
    for name, module in POSTGRES_DRIVERS:
        try:
            importlib.import_module(module)
        except ImportError:
            continue
        return uri if name == "psycopg" else f"postgresql+{name}{sep}{rest}"
    raise DatabaseError(f"no PostgreSQL driver is installed: {POSTGRES_INSTALL}")


def check_database(uri: str) -> None:
    """One connection to the database, before Ray starts; raises DatabaseError with one line
    that names the cause and what to set. MLflow makes its tables in an empty database itself."""
    import sqlalchemy
    import sqlalchemy.exc
    from sqlalchemy.pool import NullPool

    url = with_installed_driver(uri)
    scheme = database_scheme(uri)
    try:
        driver = sqlalchemy.engine.make_url(url).get_driver_name()
    except (sqlalchemy.exc.ArgumentError, ValueError) as err:  # a port that is not a number, say
        raise DatabaseError(f"not a database URI SQLAlchemy can read: {printable(str(err))}") from None
    connect_args = {"connect_timeout": CONNECT_TIMEOUT_S} if driver in TIMEOUT_DRIVERS else {}
    try:
        engine = sqlalchemy.create_engine(url, poolclass=NullPool, connect_args=connect_args)
    except sqlalchemy.exc.NoSuchModuleError:
        raise DatabaseError(f"SQLAlchemy has no dialect or driver for {uri.partition('://')[0]}://") from None
    except ImportError as err:  # the driver the URI names (`postgresql+psycopg2://`) is not installed
        hint = POSTGRES_INSTALL if scheme == "postgresql" else f"install the driver SQLAlchemy names ({err.name})"
        raise DatabaseError(f"the database driver is not installed ({err}): {hint}") from None
    except (sqlalchemy.exc.ArgumentError, ValueError, TypeError) as err:
        raise DatabaseError(f"not a database URI SQLAlchemy can read: {printable(str(err))}") from None
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.DBAPIError as err:
        raise DatabaseError(printable(_connection_problem(str(err.orig)))) from None
    finally:
        engine.dispose()


def _connection_problem(message: str) -> str:
    """The driver's reason, in one line, with what to set. psycopg's messages read
    `connection failed: connection to server at "HOST", port N failed: FATAL:  REASON`."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    reason = lines[0] if lines else "no answer"
    reason = reason.split(" failed: ")[-1].removeprefix("FATAL:").strip()
    lowered = reason.lower()
    if "password authentication failed" in lowered or "access denied" in lowered or "no password supplied" in lowered:
        hint = "check the user and password in the URI (or PGPASSWORD / ~/.pgpass for PostgreSQL)"
    elif "does not exist" in lowered or "unknown database" in lowered:
        hint = "create the database first (PostgreSQL: createdb NAME); MLflow makes its tables in it"
    elif "refused" in lowered or "timeout" in lowered or "timed out" in lowered or "could not translate" in lowered:
        hint = "is the database server running, and are the host and port right?"
    else:
        hint = "check the URI and that the server accepts this user from this machine"
    return f"database not usable: {reason}; {hint}"
