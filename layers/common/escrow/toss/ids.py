"""The stack prefix of everything we name at Toss: orderIds, refPayoutIds, refSellerIds and Idempotency-Keys.

Toss keeps an orderId, refPayoutId or refSellerId for good and an Idempotency-Key for 15 days, per merchant id. Our
own ids come from database sequences, so two stacks on one merchant id (dev and prod sharing test keys), or a
database rebuilt from nothing, would send Toss ids it has already seen: a refused payout (DUPLICATED_REF_PAYOUT_ID),
or worse, another operation's replayed answer. Setting TOSS_ID_PREFIX (template parameter TossIdPrefix, by default
the stage) keeps them apart; change it when a stack's database is rebuilt.

`toss_name("cancel-12-1")` is the one function every caller uses (confirm and cancel keys included).
"""

from __future__ import annotations


def stack_prefix() -> str:
    from escrow.config import get_settings

    return get_settings().toss_id_prefix


def toss_name(name: str) -> str:
    """`name` as sent to Toss: `{prefix}-{name}`, or `name` itself when no prefix is configured."""
    prefix = stack_prefix()
    return f"{prefix}-{name}" if prefix else name
