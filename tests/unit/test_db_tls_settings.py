"""The TLS policy of MySQL connections: verified and required when deployed, off locally; the shipped CA bundle."""

from __future__ import annotations

import hashlib
import re
import ssl
from pathlib import Path

import pytest

from escrow import db
from escrow.config import DatabaseParams, Settings

CERTS = Path(db.__file__).with_name("certs")
PARAMS = DatabaseParams("proxy.example.internal", 3306, "escrow", "pw", "escrow")


def test_the_shipped_ca_bundle_is_the_one_its_provenance_describes() -> None:
    bundle = (CERTS / "rds-ca-bundle.pem").read_bytes()
    provenance = (CERTS / "PROVENANCE.md").read_text()
    digest = hashlib.sha256(bundle).hexdigest()
    assert digest in provenance, "rds-ca-bundle.pem changed: regenerate it and update PROVENANCE.md"
    context = ssl.create_default_context(cafile=str(CERTS / "rds-ca-bundle.pem"))
    assert context.cert_store_stats()["x509_ca"] == bundle.count(b"BEGIN CERTIFICATE") == 92


def test_the_bundle_covers_rds_proxy_and_the_seoul_rds_cas() -> None:
    subjects = re.findall(r"^# .*?: (.*)$", (CERTS / "rds-ca-bundle.pem").read_text(), flags=re.M)
    # RDS Proxy endpoints present ACM certificates (Amazon Trust Services); Aurora instances the RDS CAs.
    assert any("CN=Amazon Root CA 1," in s for s in subjects)
    for ca in ("RSA2048 G1", "RSA4096 G1", "ECC384 G1"):
        assert any(f"CN=Amazon RDS ap-northeast-2 Root CA {ca}," in s for s in subjects), ca


def test_local_connections_are_plain_and_say_so() -> None:
    kwargs = db.connect_kwargs(PARAMS, Settings(app_env="local"))
    assert kwargs["ssl_disabled"] is True and "ssl" not in kwargs


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_deployed_connections_require_tls_and_verify_the_server_name_against_the_layer_bundle(stage: str) -> None:
    kwargs = db.connect_kwargs(PARAMS, Settings(app_env=stage))
    context = kwargs["ssl"]
    assert isinstance(context, ssl.SSLContext) and "ssl_disabled" not in kwargs
    assert context.check_hostname is True
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.cert_store_stats()["x509_ca"] == 92  # the layer's bundle, not the system store
    assert kwargs["host"] == "proxy.example.internal"  # the name the certificate is checked against


def test_db_tls_setting_overrides_the_stage_default_and_a_bundle_path_can_be_given(tmp_path: Path) -> None:
    from tests.support.mariadb_tls import write_ca

    ca, _, _ = write_ca(tmp_path, "x")
    required_locally = db.connect_kwargs(PARAMS, Settings(app_env="local", db_tls="required", db_ca_bundle=str(ca)))
    assert required_locally["ssl"].cert_store_stats()["x509_ca"] == 1
    assert db.connect_kwargs(PARAMS, Settings(app_env="dev", db_tls="disabled"))["ssl_disabled"] is True


def test_plain_text_is_refused_in_prod_and_unknown_values_are_refused() -> None:
    with pytest.raises(ValueError, match="refused in prod"):
        db.connect_kwargs(PARAMS, Settings(app_env="prod", db_tls="disabled"))
    with pytest.raises(ValueError, match="DB_TLS must be"):
        Settings(db_tls="preferred")
