// The escrow API as the chat app calls it. Every call carries the user's JWT (here minted by the local-only
// POST /demo/token; a real app gets it from its own login). Errors keep the API's machine-readable code.
"use strict";

const Escrow = (() => {
  const TOKENS = "escrow-demo-tokens";

  function tokens() {
    return JSON.parse(sessionStorage.getItem(TOKENS) || "{}");
  }

  async function login(userId) {
    const cached = tokens()[userId];
    if (cached) return cached;
    const answer = await fetch("/demo/token", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ user_id: userId }),
    });
    const body = await answer.json();
    const all = tokens();
    all[userId] = body.token;
    sessionStorage.setItem(TOKENS, JSON.stringify(all));
    return body.token;
  }

  class ApiError extends Error {
    constructor(status, error) {
      super(error.message || `HTTP ${status}`);
      this.status = status;
      this.code = error.code || `HTTP_${status}`;
      this.details = error;
    }
  }

  async function call(userId, method, path, body) {
    const token = await login(userId);
    const answer = await fetch(path, {
      method,
      headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await answer.text();
    const data = text ? JSON.parse(text) : {};
    if (!answer.ok) throw new ApiError(answer.status, data.error || { message: data.message });
    return data;
  }

  // What to tell a person for an error code. PAYMENT_OUTCOME_UNKNOWN: the charge may have gone through; paying
  // again could charge twice, so the advice is to wait (the schedule or Toss's webhook settles it).
  const ADVICE = {
    PAYMENT_OUTCOME_UNKNOWN: "결제 결과를 아직 확인하지 못했어요. 다시 결제하지 마세요: 잠시 후 자동으로 확인됩니다.",
    AMOUNT_MISMATCH: "결제 금액이 요청 금액과 달라요. 결제되지 않았어요.",
    PAYMENT_DECLINED: "카드사가 결제를 거절했어요. 다른 카드로 다시 시도할 수 있어요.",
    REFUND_OUTCOME_UNKNOWN: "환불 결과를 아직 확인하지 못했어요. 잠시 후 자동으로 확인됩니다.",
  };

  function describe(error) {
    const advice = ADVICE[error.code];
    return `${error.code}: ${error.message}${advice ? ` — ${advice}` : ""}`;
  }

  return { login, call, describe, ApiError };
})();
