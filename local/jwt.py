"""Mint a local HS256 token: ``python -m local.jwt user_2 [--admin] [--ttl 3600]``.

The key is JWT_SECRET from the process environment, else from local/env.json, else the layer's local
default. Claims: ``sub`` and ``user_id`` (the user), ``iat``, ``exp``; ``--admin`` adds the admin role claim
(ADMIN_ROLE_CLAIM = ADMIN_ROLE, by default ``"role": "admin"``); ``iss``/``aud`` when JWT_ISSUER/JWT_AUDIENCE
are set. Only the token is printed, so ``TOKEN=$(python -m local.jwt user_2)`` works.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import jwt as pyjwt

from local.template import DEFAULT_ENV_FILE, load_env_file

try:  # the layer's own local default, so tokens match what escrow.auth accepts with no JWT_SECRET set
    from escrow.config import LOCAL_JWT_SECRET
except ImportError:  # PYTHONPATH without layers/common
    LOCAL_JWT_SECRET = "local-dev-secret-change-me-0123456789abcdef"  # noqa: S105 - the documented local-only key


def local_setting(name: str, default: str = "", env_file: str | Path | None = DEFAULT_ENV_FILE) -> str:
    """A setting as the local runner's functions see it: process environment, then env.json, then default."""
    value = os.environ.get(name)
    if value:
        return value
    sections = load_env_file(env_file)
    if sections.get("Parameters", {}).get(name):
        return sections["Parameters"][name]
    for section in sections.values():
        if section.get(name):
            return section[name]
    return default


def mint_token(
    user_id: str,
    *,
    admin: bool = False,
    ttl: int = 3600,
    secret: str | None = None,
    extra_claims: dict[str, Any] | None = None,
    env_file: str | Path | None = DEFAULT_ENV_FILE,
) -> str:
    if local_setting("JWT_ALGORITHM", "HS256", env_file) != "HS256":
        raise SystemExit("JWT_ALGORITHM is not HS256: local tokens are HS256 only")
    now = int(time.time())
    claims: dict[str, Any] = {"sub": user_id, "user_id": user_id, "iat": now, "exp": now + int(ttl)}
    issuer = local_setting("JWT_ISSUER", "", env_file)
    audience = local_setting("JWT_AUDIENCE", "", env_file)
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    if admin:
        claims[local_setting("ADMIN_ROLE_CLAIM", "role", env_file)] = local_setting("ADMIN_ROLE", "admin", env_file)
    claims.update(extra_claims or {})
    key = secret or local_setting("JWT_SECRET", LOCAL_JWT_SECRET, env_file)
    return pyjwt.encode(claims, key, algorithm="HS256")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local.jwt", description="Mint a local HS256 JWT.")
    parser.add_argument("user_id", help="the user the token is for, e.g. user_2")
    parser.add_argument("--admin", action="store_true", help="add the admin role claim")
    parser.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)")
    parser.add_argument("--claim", action="append", default=[], metavar="KEY=VALUE", help="an extra claim")
    parser.add_argument("--env-vars", default=str(DEFAULT_ENV_FILE), help="env-vars file (default local/env.json)")
    parser.add_argument("--header", action="store_true", help="print 'Authorization: Bearer <token>'")
    args = parser.parse_args(argv)
    extra = {}
    for item in args.claim:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--claim needs KEY=VALUE, got {item!r}")
        extra[key] = value
    token = mint_token(args.user_id, admin=args.admin, ttl=args.ttl, extra_claims=extra, env_file=args.env_vars)
    print(f"Authorization: Bearer {token}" if args.header else token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
