"""The reference chat client in a real browser: headless Chromium (Debian's package) driven by Playwright.

The stack is `python -m local.run` in a subprocess on free ports and its own freshly migrated and seeded database
(room 123 with user_1 as its owner, user_2 and user_3): the Toss sandbox with its payment window, the local API with
the real handlers and the client at /demo/, the local EventBridge bus delivering the chat notifications to the
client's feed (/demo/chat), and the schedule every second (publishing, reconciling). Each person is a browser
context of their own (their own token and storage, as on their own phone).

`make browser-test` installs Chromium when it can (scripts/browser-check.sh) and says in one line when it cannot;
run by hand without Chromium, these tests fail with that reason rather than pass. Screenshots go to
$BROWSER_SCREENSHOTS when set (`make screenshots`: docs/screenshots), else to a temporary folder.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import MYSQL_URL, ROOT, _server_conn
from tests.ops.conftest import _security_key, base_environment, eventually
from tests.support.events import token

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# The flags the machine's notes give for Debian's Chromium as root with no network: no sandbox (root), no GPU, and
# none of the background connections (updates, sync, field trials) that a closed network refuses many at a time.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
VIEWPORT = {"width": 960, "height": 640}
EXPECT_TIMEOUT_MS = 20_000  # a loaded 2-CPU machine: polling every 2 s, the schedule every 1 s


# --- the stack --------------------------------------------------------------------------------------------------


@dataclass
class Stack:
    database_url: str
    api: str
    sandbox: str
    log: Path

    @property
    def demo(self) -> str:
        return f"{self.api}/demo/"

    def post(self, path: str, body: Any, user: str, **claims: Any) -> requests.Response:
        headers = {"authorization": f"Bearer {token(user, **claims)}"}
        return requests.post(self.api + path, json=body, headers=headers, timeout=30)

    def get(self, path: str, user: str) -> requests.Response:
        return requests.get(self.api + path, headers={"authorization": f"Bearer {token(user)}"}, timeout=30)

    def status(self, room: int, user: str = "user_1") -> dict[str, Any]:
        r = self.get(f"/api/v1/payment/status/{room}", user)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def control(self, path: str, body: Any = None, method: str = "POST") -> Any:
        r = requests.request(method, f"{self.sandbox}/sandbox/{path}", json=body, timeout=10)
        assert r.status_code == 200, r.text
        return r.json()

    def toss_calls(self, path_part: str, method: str | None = None) -> list[dict[str, Any]]:
        items = requests.get(f"{self.sandbox}/sandbox/calls", timeout=10).json()["items"]
        return [c for c in items if path_part in c["path"] and (method is None or c["method"] == method)]

    def register_store(self, store_id: str) -> None:
        """An admin registers the store's payout account, the schedule registers its seller with Toss, and Toss approves
        the seller (as the walkthrough does)."""
        r = self.post(
            "/api/v1/admin/stores",
            {
                "store_id": store_id,
                "owner_id": f"owner_of_{store_id}",
                "bank_code": "88",
                "account_number": "110123456789",
                "holder_name": "홍길동",
                "business_type": "INDIVIDUAL",
                "email": "owner@example.com",
                "phone": "01012345678",
            },
            "browser_admin",
            role="admin",
        )
        assert r.status_code == 202, r.text  # answered at once: the schedule's sellers job registers it with Toss

        def registered() -> str | None:
            r = requests.get(
                f"{self.api}/api/v1/admin/stores/{store_id}",
                headers={"authorization": f"Bearer {token('browser_admin', role='admin')}"},
                timeout=30,
            )
            assert r.status_code == 200, r.text
            return r.json()["seller_id"] if r.json()["registration_status"] == "registered" else None

        seller_id = eventually(registered, timeout=30, interval=0.2)
        self.control(f"sellers/{seller_id}/status", {"status": "APPROVED"})

    def new_room(self) -> tuple[int, str]:
        """A room like the demo room (owner user_1, members user_2 and user_3) with a store of its own, so a test
        that does not need room 123 shares nothing with the others. The membership comes as the chat service sends
        it (PUT /api/v1/admin/rooms/{id}/members); the store row is the chat app's data."""
        room = 10_000 + uuid.uuid4().int % 10**8
        store = f"store_{uuid.uuid4().hex[:8]}"
        conn = _database(self.database_url)
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "INSERT INTO stores (store_id, owner_id, name) VALUES (%s, %s, %s)", (store, "store_owner", "가게")
                )
        finally:
            conn.close()
        r = requests.put(
            f"{self.api}/api/v1/admin/rooms/{room}/members",
            json={"owner_id": "user_1", "member_ids": ["user_2", "user_3"]},
            headers={"authorization": f"Bearer {token('chat_service', role='admin')}"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        self.register_store(store)
        return room, store


def _database(url: str) -> Any:
    import pymysql

    from escrow.config import parse_database_url

    p = parse_database_url(url)
    return pymysql.connect(
        host=p.host, port=p.port, user=p.user, password=p.password, database=p.database, autocommit=True
    )


@pytest.fixture(scope="session")
def browser_database() -> Iterator[str]:
    name = f"escrow_browser_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}_{uuid.uuid4().hex[:8]}"
    url = f"{MYSQL_URL}/{name}"
    done = subprocess.run(
        [sys.executable, "-m", "escrow.migrate"],
        env=base_environment(DATABASE_URL=url),
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    yield url
    conn = _server_conn()
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        conn.close()


@pytest.fixture(scope="session")
def stack(browser_database: str) -> Iterator[Stack]:
    log = Path(tempfile.mkstemp(prefix="escrow-browser-stack-", suffix=".log")[1])
    env = base_environment(
        DATABASE_URL=browser_database,
        TOSS_SECURITY_KEY=_security_key(),
        RECONCILE_AFTER_SECONDS="2",
        TOSS_READ_TIMEOUT="3",
        POWERTOOLS_LOG_LEVEL="WARNING",
    )
    with log.open("w") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "local.run",
                "--api-port",
                "0",
                "--toss-port",
                "0",
                "--schedule-interval",
                "1",
                "--skip-migrations",
                "--workers",
                "4",
            ],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        text = eventually(lambda: _started(log, process), timeout=60, interval=0.1)
        api = re.search(r"==> local API on (\S+)", text).group(1)  # type: ignore[union-attr]
        sandbox = re.search(r"==> Toss sandbox on (\S+)", text).group(1)  # type: ignore[union-attr]
        chat = re.search(r"chat notifications to (\S+)\)", text).group(1)  # type: ignore[union-attr]
        assert chat == f"{api}/demo/chat", text  # the feed is the client's own
        yield Stack(browser_database, api, sandbox, log)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        if os.environ.get("BROWSER_KEEP_LOG"):
            print(f"stack log: {log}")
        else:
            log.unlink(missing_ok=True)


def _started(log: Path, process: subprocess.Popen[str]) -> str | None:
    text = log.read_text()
    if process.poll() is not None:
        raise AssertionError(f"the local stack exited ({process.returncode}):\n{text}")
    return text if "Escrow local stack is up" in text else None


@pytest.fixture(autouse=True)
def _no_faults_left(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "stack" in request.fixturenames:
        requests.delete(f"{request.getfixturevalue('stack').sandbox}/sandbox/faults", timeout=5)


# --- the browser ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(
            f"no Chromium at {CHROMIUM}: `make browser-test` installs Debian's (apt-get install chromium "
            "fonts-noto-cjk, as root), or set CHROMIUM to a Chromium binary",
            pytrace=False,
        )
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class Person:
    """One member of the room, in a browser context of their own, on the room page."""

    user: str
    room: int
    page: Any
    stack: Stack
    errors: list[str] = field(default_factory=list)

    def open_room(self) -> None:
        from playwright.sync_api import expect

        self.page.goto(f"{self.stack.demo}?room={self.room}&user={self.user}")
        expect(self.page.locator("#whoami")).to_contain_text(self.user)

    def row(self, payer: str) -> Any:
        return self.page.locator(f'#shares tbody tr[data-payer="{payer}"]')

    def expect_share(self, payer: str, status: str) -> None:
        from playwright.sync_api import expect

        expect(self.row(payer)).to_have_attribute("data-status", status)

    def expect_request(self, status: str) -> None:
        from playwright.sync_api import expect

        expect(self.page.locator("#request-summary")).to_have_attribute("data-status", status)

    def expect_feed(self, kind: str, text: str) -> None:
        from playwright.sync_api import expect

        # any message of that kind saying it (a room may hear, say, EscrowFunded twice)
        expect(self.page.locator(f'#feed li[data-type="{kind}"]').filter(has_text=text).first).to_be_visible()

    def back_to_room(self) -> None:
        self.page.click("#back")
        self.page.wait_for_url(re.compile(r".*/demo/index\.html\?room="))


@pytest.fixture()
def people(browser: Any, stack: Stack) -> Iterator[Callable[..., Person]]:
    """`people(user, room)`: that member on the room page, in a browser context of their own. `before_open(context)`
    runs first (routes, say); `outside` lists the URLs outside this machine the page may ask for (none by default:
    the client loads nothing from elsewhere, and the machine has no internet)."""
    contexts: list[Any] = []
    persons: list[Person] = []

    def person(
        user: str, room: int, *, before_open: Callable[[Any], None] | None = None, outside: tuple[str, ...] = ()
    ) -> Person:
        context = browser.new_context(viewport=VIEWPORT, locale="ko-KR", timezone_id="Asia/Seoul")
        contexts.append(context)
        page = context.new_page()
        p = Person(user, room, page, stack)
        # A script error on any of our pages fails the test; so does a request that leaves this machine.
        page.on("pageerror", lambda error: p.errors.append(f"pageerror: {error}"))
        page.on("console", lambda m: m.type == "error" and p.errors.append(f"console: {m.text} at {page.url}"))

        def leaves_machine(request: Any) -> None:
            url = request.url
            if not url.startswith(("http://127.0.0.1:", "data:", "about:")) and url not in outside:
                p.errors.append(f"request outside this machine: {url}")

        context.on("request", leaves_machine)
        if before_open:
            before_open(context)
        persons.append(p)
        p.open_room()
        return p

    yield person
    for context in contexts:
        context.close()
    errors = [e for p in persons for e in p.errors if not _expected_console_error(e)]
    assert not errors, "\n".join(errors)


def _expected_console_error(text: str) -> bool:
    # The browser logs every 4xx/5xx answer a fetch gets ("Failed to load resource"); the API's refusals are part
    # of the flows tested here (and the page shows them), so only script errors count.
    return text.startswith("console: Failed to load resource")


@pytest.fixture(scope="session")
def screenshots_dir() -> Iterator[Path]:
    wanted = os.environ.get("BROWSER_SCREENSHOTS")
    if wanted:
        path = Path(wanted)
        if not path.is_absolute():
            path = ROOT / path
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    path = Path(tempfile.mkdtemp(prefix="escrow-browser-shots-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture()
def shot(screenshots_dir: Path) -> Callable[..., Path]:
    """`shot(page, name)`: the viewport; `shot(page, name, "main")`: one element (the single-card pages)."""

    def take(page: Any, name: str, selector: str | None = None) -> Path:
        path = screenshots_dir / f"{name}.png"
        if selector:
            page.locator(selector).screenshot(path=str(path))
        else:
            page.screenshot(path=str(path))
        assert path.stat().st_size > 1000, path
        return path

    return take
