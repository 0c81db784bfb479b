"""Korean banks by bank, not by code: the codes our API accepts and the code each Toss endpoint expects.

Three code lists name the same banks differently, and the same two digits can mean different banks in two of them
(the brief's 하나 `05` is the old 외환은행's code; KB is `04` in the brief, `06` at Toss). So a code is never padded
or trimmed into another list's code: it is looked up, and the bank it names gives the code an endpoint expects.

* **Accepted on our API**: the brief's codes (`seeds` bank list: KB `04`, 하나 `05`, 신한 `88`, ...), Toss's Core API
  codes (KB `06`, 하나 `81`, ...), the 3-digit standard codes (KB `004`, 하나 `081`, ...), the bank's Korean name
  (with or without `은행`, and common short forms) and Toss's English code (`KOOKMIN`, `HANA`, ...). Anything else
  is refused with 422 `UNKNOWN_BANK`.
* **Payouts v2** (a seller's `account.bankCode`): the 3-digit standard codes (KFTC). Toss's own `seller.changed`
  example shows `"092"` and a real seller registration used `"004"`; one third-party comment says two digits:
  UNCONFIRMED (docs/toss-behaviours.md, "Bank codes"), so the choice lives here, in `payout_code`.
* **Core API refund accounts** (`refundReceiveAccount.bank`, `virtualAccount.bankCode`): Toss's 2-digit codes
  (Toss's code table `/reference/codes`, reproduced by third-party SDKs; real payloads show `"88"`, `"11"`).

Securities firms (Toss's letter codes) are not payout or refund destinations here and are not listed.
"""

from __future__ import annotations

from dataclasses import dataclass

from escrow.errors import ValidationFailed


@dataclass(frozen=True)
class Bank:
    name: str  # the bank's Korean name as Toss's code table spells it
    standard: str  # 3-digit standard (KFTC) code: payouts v2
    toss: str  # Toss's Core API code: refund accounts, virtual accounts
    english: str  # Toss's English code
    brief: str | None = None  # the brief's code, when the brief lists the bank
    aliases: tuple[str, ...] = ()

    def public(self) -> dict[str, str]:
        """How answers show a bank: never an account, only which bank."""
        return {"name": self.name, "standard_code": self.standard, "toss_code": self.toss}


BANKS: tuple[Bank, ...] = (
    Bank("KB국민은행", "004", "06", "KOOKMIN", "04", ("국민은행", "국민", "KB", "KB국민")),
    Bank("하나은행", "081", "81", "HANA", "05", ("하나", "KEB하나은행", "KEB하나")),
    Bank("신한은행", "088", "88", "SHINHAN", "88", ("신한",)),
    Bank("우리은행", "020", "20", "WOORI", "20", ("우리",)),
    Bank("NH농협은행", "011", "11", "NONGHYEOP", "11", ("농협은행", "농협", "NH농협")),
    Bank("IBK기업은행", "003", "03", "IBK", "03", ("기업은행", "기업", "IBK기업")),
    Bank("SC제일은행", "023", "23", "SC", "23", ("SC제일", "제일은행")),
    Bank("씨티은행", "027", "27", "CITI", "27", ("한국씨티은행", "씨티")),
    Bank("부산은행", "032", "32", "BUSANBANK", "32", ("부산", "BNK부산은행")),
    Bank("DGB대구은행", "031", "31", "DAEGUBANK", "31", ("대구은행", "대구", "iM뱅크")),
    Bank("광주은행", "034", "34", "GWANGJUBANK", "34", ("광주",)),
    Bank("제주은행", "035", "35", "JEJUBANK", "35", ("제주",)),
    Bank("경남은행", "039", "39", "KYONGNAMBANK", "39", ("경남", "BNK경남은행")),
    Bank("토스뱅크", "092", "92", "TOSSBANK", "92", ("토스",)),
    Bank("케이뱅크", "089", "89", "KBANK", "89", ("K뱅크",)),
    Bank("카카오뱅크", "090", "90", "KAKAOBANK", "90", ("카카오",)),
    Bank("새마을금고", "045", "45", "SAEMAUL", "45", ("새마을", "MG새마을금고")),
    Bank("Sh수협은행", "007", "07", "SUHYEOP", "07", ("수협은행", "수협")),
    Bank("저축은행중앙회", "050", "50", "SAVINGBANK", "50", ("저축은행",)),
    Bank("우체국예금보험", "071", "71", "POST", "71", ("우체국",)),
    Bank("산림조합", "064", "64", "SANLIM", "64", ()),
    Bank("KDB산업은행", "002", "02", "KDBBANK", None, ("산업은행", "산업")),
    Bank("단위농협(지역농축협)", "012", "12", "LOCALNONGHYEOP", None, ("단위농협", "지역농축협")),
    Bank("전북은행", "037", "37", "JEONBUKBANK", None, ("전북",)),
    Bank("신협", "048", "48", "SHINHYEOP", None, ("신협중앙회",)),
    Bank("홍콩상하이은행", "054", "54", "HSBC", None, ()),
)


def _key(value: str) -> str:
    return "".join(value.split()).casefold()


def _index() -> dict[str, Bank]:
    index: dict[str, Bank] = {}
    for bank in BANKS:
        names = {bank.name, bank.standard, bank.toss, bank.english, *bank.aliases}
        if bank.brief is not None:
            names.add(bank.brief)
        for name in names:
            key = _key(name)
            other = index.setdefault(key, bank)
            if other is not bank:  # a code or name that could mean two banks must never be guessed
                raise AssertionError(f"{name!r} names both {other.name} and {bank.name}")
    return index


_BY_NAME = _index()


class UnknownBank(ValidationFailed):
    code = "UNKNOWN_BANK"


def find(value: str | None) -> Bank | None:
    if not isinstance(value, str) or not value.strip() or len(value) > 40:
        return None
    return _BY_NAME.get(_key(value))


def resolve(value: str | None, *, field: str = "bank_code") -> Bank:
    """The bank a code or name on our API means; 422 UNKNOWN_BANK when it names none (or could name two)."""
    bank = find(value)
    if bank is None:
        raise UnknownBank(
            "unknown bank: give a bank code (the brief's, Toss's or the 3-digit standard code) or the bank's name",
            details=[{"field": field, "message": "not a known bank code or name"}],
        )
    return bank


def payout_code(value: str) -> str:
    """The code a payouts v2 seller account carries (3-digit standard code)."""
    return resolve(value).standard


def refund_code(value: str) -> str:
    """The code a Core API refund account (`refundReceiveAccount.bank`) carries (Toss's 2-digit code)."""
    return resolve(value, field="bank").toss
