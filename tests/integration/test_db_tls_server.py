"""TLS to MySQL for real: a throwaway MariaDB with a self-signed CA (the shared server on 3306 stays as it is)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from escrow import config, db
from escrow.errors import DatabaseUnavailable
from tests.support.mariadb_tls import TlsServer, tls_mariadb


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    with tls_mariadb(tmp_path_factory.mktemp("tls-mariadb")) as server:
        yield server


@pytest.fixture()
def use(monkeypatch: pytest.MonkeyPatch) -> Iterator:
    def configure(url: str, *, ca: Path | None, tls: str = "required") -> None:
        monkeypatch.setenv("DATABASE_URL", url)
        monkeypatch.setenv("DB_TLS", tls)
        if ca is not None:
            monkeypatch.setenv("DB_CA_BUNDLE", str(ca))
        db.close()
        config.reset_settings()

    yield configure
    monkeypatch.undo()
    db.close()
    config.reset_settings()


def test_a_server_signed_by_the_bundle_is_reached_over_tls(tls_server: TlsServer, use) -> None:
    use(f"mysql://root:@localhost:{tls_server.port}/mysql", ca=tls_server.ca)
    with db.reader() as tx:
        row = tx.one("SHOW SESSION STATUS LIKE 'Ssl_version'")
        cipher = tx.one("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
    assert row is not None and row["Value"] in ("TLSv1.2", "TLSv1.3")
    assert cipher is not None and cipher["Value"]


def test_a_server_signed_by_another_ca_is_refused(tls_server: TlsServer, use) -> None:
    use(f"mysql://root:@localhost:{tls_server.port}/mysql", ca=tls_server.other_ca)
    with pytest.raises(DatabaseUnavailable) as caught:
        db.connection()
    assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value.__cause__)


def test_a_certificate_for_another_name_is_refused(tls_server: TlsServer, use) -> None:
    # The certificate names "localhost"; dialling the IP address does not match it.
    use(f"mysql://root:@127.0.0.1:{tls_server.port}/mysql", ca=tls_server.ca)
    with pytest.raises(DatabaseUnavailable) as caught:
        db.connection()
    assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value.__cause__)
    assert "127.0.0.1" in str(caught.value.__cause__)


def test_a_server_without_tls_is_refused_when_tls_is_required(database_url: str, use) -> None:
    # The shared local MariaDB offers no TLS: with DB_TLS=required the client does not fall back to plain text.
    use(database_url, ca=None)
    with pytest.raises(DatabaseUnavailable) as caught:
        db.connection()
    assert "SSL is required" in str(caught.value.__cause__)


def test_plain_text_is_still_used_locally(database_url: str, use) -> None:
    use(database_url, ca=None, tls="disabled")
    with db.reader() as tx:
        row = tx.one("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
    assert row is not None and row["Value"] == ""


def test_migrations_run_over_verified_tls(tls_server: TlsServer, use) -> None:
    from escrow import migrate

    use(f"mysql://root:@localhost:{tls_server.port}/escrow_tls", ca=tls_server.ca)
    result = migrate.apply_migrations(config.database_params())
    assert result.applied and result.applied == result.current
    again = migrate.apply_migrations(config.database_params())
    assert again.applied == [] and again.current == result.current
