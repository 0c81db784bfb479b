"""The model-based test runs on the same local stack as the end-to-end tests: the Toss sandbox, the local API (API
Gateway events into the real handlers) and this session's MariaDB database."""

from tests.e2e.conftest import _clean_faults, api, as_user, aws, published, sandbox, schedule, toss  # noqa: F401
