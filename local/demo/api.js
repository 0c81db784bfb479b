// The escrow API as the chat app calls it, and the page's config (config.json: where the API is, how a user gets a
// token, which payment window opens). Every API call carries the user's JWT: locally minted by the local-only
// POST /demo/token; against a deployed stack, from the chat app's login (here: --token-cmd, or pasted).
// Errors keep the API's machine-readable code.
"use strict";

const Escrow = (() => {
  const TOKENS = "escrow-demo-tokens";
  let configAnswer = null;

  function config() {
    if (!configAnswer) {
      configAnswer = fetch("config.json", { cache: "no-store" }).then((answer) => {
        if (!answer.ok) throw new Error(`config.json: HTTP ${answer.status}`);
        return answer.json();
      });
    }
    return configAnswer;
  }

  function tokens() {
    return JSON.parse(sessionStorage.getItem(TOKENS) || "{}");
  }

  function rememberToken(userId, token) {
    const all = tokens();
    all[userId] = token;
    sessionStorage.setItem(TOKENS, JSON.stringify(all));
  }

  class ApiError extends Error {
    constructor(status, error) {
      super(error.message || `HTTP ${status}`);
      this.status = status;
      this.code = error.code || `HTTP_${status}`;
      this.details = error;
    }
  }

  async function login(userId) {
    const cached = tokens()[userId];
    if (cached) return cached;
    const { token_url: tokenUrl } = await config();
    if (!tokenUrl) {
      throw new ApiError(401, {
        code: "TOKEN_REQUIRED",
        message: `${userId}의 토큰(JWT)을 위의 칸에 붙여 넣으세요 (this stack has no token route)`,
      });
    }
    const answer = await fetch(tokenUrl, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ user_id: userId }),
    });
    const body = await answer.json();
    if (!answer.ok) throw new ApiError(answer.status, body.error || { message: body.message });
    rememberToken(userId, body.token);
    return body.token;
  }

  async function call(userId, method, path, body) {
    const [{ api_base: base }, token] = await Promise.all([config(), login(userId)]);
    const answer = await fetch(`${base || ""}${path}`, {
      method,
      headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await answer.text();
    let data = {};
    try {
      data = text ? JSON.parse(text) : {};
    } catch {
      data = { message: text.slice(0, 200) };
    }
    if (!answer.ok) throw new ApiError(answer.status, data.error || { message: data.message });
    return data;
  }

  // What to tell a person for an error code. PAYMENT_OUTCOME_UNKNOWN: the charge may have gone through; paying
  // again could charge twice, so the advice is to wait (the schedule or Toss's webhook settles it).
  const ADVICE = {
    PAYMENT_OUTCOME_UNKNOWN:
      "결제 결과를 아직 확인하지 못했어요. 다시 결제하지 마세요: 잠시 후 자동으로 확인되어 이 방에 표시됩니다.",
    REFUND_OUTCOME_UNKNOWN: "환불 결과를 아직 확인하지 못했어요. 다시 요청하지 마세요: 잠시 후 자동으로 확인됩니다.",
    AMOUNT_MISMATCH: "결제 금액이 요청한 금액과 달라요. 결제를 승인하지 않았어요 (청구되지 않아요).",
    PAYMENT_DECLINED: "카드사가 결제를 거절했어요. 다른 카드로 다시 결제할 수 있어요.",
    PAYMENT_IN_PROGRESS: "이 결제는 지금 확인 중이에요. 잠시 후 다시 보세요.",
    REFUND_IN_PROGRESS: "환불이 진행 중이에요. 잠시 후 다시 보세요.",
    NOT_ROOM_OWNER: "방장만 할 수 있어요.",
    OPEN_REQUEST_EXISTS: "이 방에는 이미 진행 중인 요청이 있어요.",
    REQUEST_NOT_FUNDED: "모두 결제한 뒤에 정산할 수 있어요.",
    ORDER_ID_ALREADY_USED: "이 주문은 더 이상 쓸 수 없어요 (청구되지 않았어요). 방으로 돌아가 결제하기를 다시 누르세요.",
    ALREADY_PAID: "이미 결제했어요. 다시 결제하지 마세요.",
    TOKEN_REQUIRED: "",
  };

  function describe(error) {
    const advice = ADVICE[error.code];
    return `${error.code}: ${error.message}${advice ? ` — ${advice}` : ""}`;
  }

  return { config, login, rememberToken, call, describe, ApiError };
})();

// The order this browser prepared and is paying (set before the payment window opens, read by success.html and
// fail.html: the window's redirect carries only what Toss puts in the query).
const PendingPayment = {
  KEY: "escrow-demo-pending-payment",
  save(value) {
    sessionStorage.setItem(this.KEY, JSON.stringify(value));
  },
  load() {
    return JSON.parse(sessionStorage.getItem(this.KEY) || "null");
  },
  clear() {
    sessionStorage.removeItem(this.KEY);
  },
};

// The paymentKey of each share this browser paid (the cancel route takes it). A real app keeps it with the user's
// payment on its own server.
const PaymentKeys = {
  KEY: "escrow-demo-payment-keys",
  all() {
    return JSON.parse(localStorage.getItem(this.KEY) || "{}");
  },
  get(room, user, requestId) {
    return this.all()[`${room}:${user}:${requestId}`];
  },
  set(room, user, requestId, paymentKey) {
    const all = this.all();
    all[`${room}:${user}:${requestId}`] = paymentKey;
    localStorage.setItem(this.KEY, JSON.stringify(all));
  },
};
