"""Apply the versioned SQL migrations in escrow/migrations with yoyo: `python -m escrow.migrate`.

Creates the database first when it does not exist. Uses DATABASE_URL (or the DB secret when deployed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from urllib.parse import quote

import pymysql

from escrow.config import DatabaseParams, database_params, parse_database_url

MIGRATIONS = Path(__file__).with_name("migrations")


def create_database(params: DatabaseParams) -> None:
    conn = pymysql.connect(
        host=params.host,
        port=params.port,
        user=params.user,
        password=params.password,
        charset="utf8mb4",
        autocommit=True,
    )
    try:
        with conn.cursor() as cur:
            # The name cannot be a parameter; it comes from our own configuration and is quoted as an identifier.
            name = params.database.replace("`", "``")
            cur.execute(f"CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    finally:
        conn.close()


def apply_migrations(params: DatabaseParams) -> list[str]:
    from yoyo import get_backend, read_migrations  # a dev/ops dependency, not shipped in the layer

    create_database(params)
    url = (
        f"mysql://{quote(params.user, safe='')}:{quote(params.password, safe='')}"
        f"@{params.host}:{params.port}/{params.database}"
    )
    backend = get_backend(url)
    migrations = read_migrations(str(MIGRATIONS))
    with backend.lock():
        pending = backend.to_apply(migrations)
        backend.apply_migrations(pending)
    return [m.id for m in pending]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", help="overrides DATABASE_URL")
    args = parser.parse_args(argv)
    params = parse_database_url(args.database_url) if args.database_url else database_params()
    applied = apply_migrations(params)
    print(
        f"database {params.database} on {params.host}:{params.port}: "
        f"{len(applied)} migration(s) applied{': ' + ', '.join(applied) if applied else ''}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
