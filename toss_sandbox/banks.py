"""Bank codes: Toss's own numeric codes (refund accounts) and the 3-digit standard codes (payout sellers).

Two tables, because Toss uses two code systems and they differ for at least one bank (KB: ``06`` vs ``004``):

* **Core API (refunds, virtual accounts)**: Toss's 2-digit codes. Source: Toss's code table
  https://docs.tosspayments.com/reference/codes ("은행 코드"), reproduced identically by third-party SDKs
  (e.g. github.com/seokju-na/tosspayments-rs ``src/data/bank_code.rs``) [DOC via 3P]. Real payloads use them:
  ``refundReceiveAccount.bank: "88"`` [TC https://techchat.tosspayments.com/m/1313689625872826430],
  ``virtualAccount.bankCode: "11"`` [TC https://techchat.tosspayments.com/m/1444558775297249371].
  Since API version 2022-11-16 requests also accept the institution's Korean name
  [DOC https://docs.tosspayments.com/reference/release-note]; the sandbox accepts the full Korean names of the
  table (``신한은행``) and, INFERRED, the short names (``신한``).
* **Payouts v2 (``POST /v2/sellers`` ``account.bankCode``)**: the 3-digit standard (KFTC) codes. Evidence: the
  official ``seller.changed`` example shows ``"bankCode": "092"``
  [DOC https://docs.tosspayments.com/reference/using-api/webhook-events] and a real seller registration used
  ``"004"`` for KB [TC https://techchat.tosspayments.com/m/1461347481341132882]. A third-party SDK comment says
  "은행 두 자리 코드": UNCONFIRMED / conflicting, hence the setting ``seller_bank_code_table``.

Rows of ``BANKS`` whose ``source`` is ``"inferred"`` are not shown by any Toss source we have: they are the
standard KFTC code of that bank (which, except for KB, is Toss's 2-digit code with a leading zero).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Bank:
    name: str  # the name in Toss's code table
    short: str  # short Korean name (INFERRED, accepted as a name)
    toss: str  # Toss's numeric code (refunds, virtual accounts)
    standard: str  # 3-digit standard (KFTC) code (payout sellers)
    # Where the standard code comes from: "toss" (shown in a Toss payload: 004, 092), "listed" (listed as the
    # standard code beside that evidence in our Toss notes), "inferred" (the standard KFTC table only).
    source: str

    @property
    def inferred(self) -> bool:
        return self.source == "inferred"


# Banks of Toss's code table with their standard codes and where each standard code comes from.
BANKS: tuple[Bank, ...] = (
    Bank("경남은행", "경남", "39", "039", "inferred"),
    Bank("광주은행", "광주", "34", "034", "inferred"),
    Bank("단위농협(지역농축협)", "단위농협", "12", "012", "inferred"),
    Bank("부산은행", "부산", "32", "032", "inferred"),
    Bank("새마을금고", "새마을", "45", "045", "inferred"),
    Bank("산림조합", "산림", "64", "064", "inferred"),
    Bank("신한은행", "신한", "88", "088", "listed"),
    Bank("신협", "신협", "48", "048", "inferred"),
    Bank("씨티은행", "씨티", "27", "027", "inferred"),
    Bank("우리은행", "우리", "20", "020", "listed"),
    Bank("우체국예금보험", "우체국", "71", "071", "inferred"),
    Bank("저축은행중앙회", "저축", "50", "050", "inferred"),
    Bank("전북은행", "전북", "37", "037", "inferred"),
    Bank("제주은행", "제주", "35", "035", "inferred"),
    Bank("카카오뱅크", "카카오", "90", "090", "listed"),
    Bank("케이뱅크", "케이", "89", "089", "listed"),
    Bank("토스뱅크", "토스", "92", "092", "toss"),
    Bank("하나은행", "하나", "81", "081", "listed"),
    Bank("홍콩상하이은행", "HSBC", "54", "054", "inferred"),
    Bank("IBK기업은행", "기업", "03", "003", "listed"),
    Bank("KB국민은행", "국민", "06", "004", "toss"),
    Bank("DGB대구은행", "대구", "31", "031", "inferred"),
    Bank("KDB산업은행", "산업", "02", "002", "inferred"),
    Bank("NH농협은행", "농협", "11", "011", "listed"),
    Bank("SC제일은행", "SC제일", "23", "023", "inferred"),
    Bank("Sh수협은행", "수협", "07", "007", "inferred"),
    # Securities firms: Toss uses letter codes; the standard codes 261 (교보) and 267 (대신) are listed in our
    # notes on seller accounts, the others are the standard KFTC codes (inferred).
    Bank("교보증권", "교보", "S8", "261", "listed"),
    Bank("대신증권", "대신", "SE", "267", "listed"),
    Bank("미래에셋증권", "미래에셋", "S5", "238", "inferred"),
    Bank("삼성증권", "삼성", "S3", "240", "inferred"),
    Bank("한국투자증권", "한국투자", "S6", "243", "inferred"),
    Bank("KB증권", "KB증권", "S4", "218", "inferred"),
    Bank("NH투자증권", "NH투자", "SL", "247", "inferred"),
    Bank("토스증권", "토스증권", "ST", "271", "inferred"),
    Bank("카카오페이증권", "카카오페이증권", "SQ", "288", "inferred"),
)

# Toss's numeric codes -> bank; names (full and short) -> bank.
BY_TOSS_CODE: dict[str, Bank] = {b.toss: b for b in BANKS}
BY_STANDARD_CODE: dict[str, Bank] = {b.standard: b for b in BANKS}
BY_NAME: dict[str, Bank] = {**{b.short: b for b in BANKS}, **{b.name: b for b in BANKS}}


def refund_bank(value: object) -> Bank | None:
    """The bank of a ``refundReceiveAccount.bank`` value: Toss's code or a Korean name; None when unknown."""
    if not isinstance(value, str):
        return None
    return BY_TOSS_CODE.get(value) or BY_NAME.get(value)


def seller_bank(value: object, table: str = "standard") -> Bank | None:
    """The bank of a seller ``account.bankCode``: 3-digit standard codes (``table="standard"``, default) or
    Toss's 2-digit codes (``table="toss"``); None when unknown."""
    if not isinstance(value, str):
        return None
    if table == "toss":
        return BY_TOSS_CODE.get(value)
    return BY_STANDARD_CODE.get(value)
