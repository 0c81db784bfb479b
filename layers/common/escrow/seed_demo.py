"""Seed the demo room of the README: room 123 (owner user_1, members user_2 and user_3) and store store_123.
`python -m escrow.seed_demo` (idempotent)."""

from __future__ import annotations

import sys

from escrow import db
from escrow.repositories import stores as stores_repo
from escrow.services import rooms

DEMO_ROOM = 123
DEMO_MEMBERS = (("user_1", True), ("user_2", False), ("user_3", False))
DEMO_STORE = "store_123"


def seed() -> None:
    with db.transaction() as tx:
        stores_repo.insert_if_absent(tx, store_id=DEMO_STORE, owner_id="store_owner_1", name="데모 식당")
    # What the chat service sends (PUT /api/v1/admin/rooms/123/members): membership only ever comes this way.
    owner = next(user for user, is_owner in DEMO_MEMBERS if is_owner)
    members = [user for user, is_owner in DEMO_MEMBERS if not is_owner]
    rooms.sync_membership(DEMO_ROOM, owner, members, updated_by="seed_demo")


def main() -> int:
    seed()
    print(f"demo data: room {DEMO_ROOM} (owner user_1; members user_2, user_3), store {DEMO_STORE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
