// The room page: who I am, the room's request and every participant's share (polled every 2 s: paid and held,
// refunded, released, with the amounts), the actions my role allows, and the room's chat feed.
"use strict";

const $ = (selector) => document.querySelector(selector);
const won = (n) => `${Number(n || 0).toLocaleString("ko-KR")}원`;
const POLL_MS = 2000;
const clock = (iso) => new Date(iso).toLocaleTimeString("ko-KR");

// A share's state as the room sees it: [label, badge class]. "held" = paid and kept in escrow.
const SHARE_STATES = {
  pending: ["결제 전", "owed"],
  failed: ["결제 실패 · 다시 결제 가능", "owed"],
  in_progress: ["확인 중", "checking"],
  unknown: ["결과 확인 중", "checking"],
  completed: ["결제 완료 · 보관 중", "held"],
  partially_refunded: ["일부 환불 · 보관 중", "held"],
  refunded: ["환불됨", "refunded"],
  released: ["가게로 정산됨", "released"],
  removed: ["제외됨", "refunded"],
};
const REQUEST_STATES = {
  pending: "결제 모으는 중",
  completed: "모두 결제 · 보관 중",
  released: "가게로 정산됨",
  cancelled: "취소됨",
  expired: "만료됨",
};
const OPEN = ["pending", "completed"];

const current = { room: null, user: null, status: null, config: null };
let refreshing = false;

// The status answer has held_amount and owed_amount per share on newer stacks; older ones give the status and the
// refunded amount only, from which the same figures follow.
function heldAmount(share) {
  if (share.held_amount !== undefined) return share.held_amount;
  if (!["completed", "partially_refunded"].includes(share.payment_status)) return 0;
  return share.payment_amount - (share.refunded_amount || 0);
}

function owedAmount(share) {
  if (share.owed_amount !== undefined) return share.owed_amount;
  return ["pending", "failed"].includes(share.payment_status) ? share.payment_amount : 0;
}

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  node.append(...children); // text nodes: ids and texts come from other people, never innerHTML
  return node;
}

function showError(error) {
  const box = $("#error");
  if (!error) {
    box.classList.remove("shown");
    box.textContent = "";
    delete box.dataset.code;
    return;
  }
  box.textContent = error instanceof Escrow.ApiError ? Escrow.describe(error) : String(error.message || error);
  box.dataset.code = error.code || "";
  box.classList.add("shown");
}

async function refresh() {
  if (!current.user || refreshing) return;
  refreshing = true;
  try {
    current.status = await Escrow.call(current.user, "GET", `/api/v1/payment/status/${current.room}`);
  } catch (error) {
    current.status = null;
    if (error.code !== "PAYMENT_REQUEST_NOT_FOUND") showError(error);
  } finally {
    refreshing = false;
  }
  render();
  await refreshFeed();
}

function shareRow(share, request, isOwner) {
  const [label, kind] = SHARE_STATES[share.payment_status] || [share.payment_status, "owed"];
  const badge = element("span", { class: `status ${kind}`, "data-status": share.payment_status }, label);
  const actions = element("td", { class: "owner-only" });
  if (isOwner && OPEN.includes(request.status)) {
    const remove = element("button", { class: "remove", "data-user": share.payer_id }, "제외");
    remove.addEventListener("click", () => removeParticipant(share.payer_id));
    actions.append(remove);
  }
  return element(
    "tr",
    { "data-payer": share.payer_id, "data-status": share.payment_status },
    element("td", {}, share.payer_id === current.user ? `${share.payer_id} (나)` : share.payer_id),
    element("td", {}, badge),
    element("td", { class: "amount" }, won(share.payment_amount)),
    element("td", { class: "amount held-amount" }, won(heldAmount(share))),
    element("td", { class: "amount refunded-amount" }, won(share.refunded_amount)),
    element("td", { class: "amount owed-amount" }, won(owedAmount(share))),
    actions,
  );
}

function render() {
  const status = current.status;
  const request = status && status.payment_request;
  const summary = $("#request-summary");
  const table = $("#shares");
  const owner = request ? request.owner_id || request.requester_id : null;
  const isOwner = Boolean(request) && owner === current.user;
  if (!request) {
    summary.textContent = "이 방에는 예약금 요청이 없어요.";
    summary.dataset.status = "none";
    table.hidden = true;
  } else {
    const held = status.payments.reduce((sum, p) => sum + heldAmount(p), 0);
    summary.textContent =
      `#${request.payment_request_id} ${REQUEST_STATES[request.status] || request.status} · ` +
      `1인 ${won(request.amount)} · ${request.paid_count}/${request.participant_count}명 결제 · ` +
      `합계 ${won(request.total_amount)} · 보관 중 ${won(request.held_amount ?? held)} · 가게 ${request.store_id}`;
    summary.dataset.status = request.status;
    table.querySelector("tbody").replaceChildren(...status.payments.map((p) => shareRow(p, request, isOwner)));
    table.classList.toggle("owner", isOwner && OPEN.includes(request.status));
    table.hidden = false;
  }
  const removed = (status && status.removed_participants) || [];
  $("#removed").hidden = removed.length === 0;
  $("#removed-list").replaceChildren(
    ...removed.map((r) =>
      element(
        "li",
        { "data-payer": r.payer_id },
        `${r.payer_id}: 제외됨 · 환불 ${won(r.refunded_amount)}` + (r.held_amount ? ` · 환불 진행 중 ${won(r.held_amount)}` : ""),
      ),
    ),
  );

  const open = Boolean(request) && OPEN.includes(request.status);
  $("#owner-actions").hidden = !current.user || (open && !isOwner);
  $("#open-request").hidden = open;
  $("#manage-request").hidden = !open;
  $("#release").disabled = !request || request.status !== "completed";
  const participants = new Set(((status && status.payments) || []).map((p) => p.payer_id));
  $("#members").replaceChildren(
    ...[...$("#user").options]
      .map((o) => o.value)
      .filter((u) => u && u !== owner && !participants.has(u))
      .map((u) => element("option", { value: u })),
  );

  const share = request && status.payments.find((p) => p.payer_id === current.user);
  $("#payer-actions").hidden = !share;
  if (share) {
    const checking = ["in_progress", "unknown"].includes(share.payment_status);
    const paymentKey = PaymentKeys.get(current.room, current.user, request.payment_request_id);
    $("#my-share").textContent = checking
      ? "결제 결과를 확인하고 있어요. 다시 결제하지 마세요."
      : `낼 금액 ${won(owedAmount(share))} · 보관 중 ${won(heldAmount(share))} · 환불 ${won(share.refunded_amount)}`;
    $("#pay").disabled = request.status !== "pending" || checking || owedAmount(share) <= 0;
    $("#cancel-share").disabled = !open || heldAmount(share) <= 0 || !paymentKey;
  }
}

async function refreshFeed() {
  let feed = { items: [] };
  try {
    const answer = await fetch(`feed?chat_room_id=${current.room}`);
    if (answer.ok) feed = await answer.json();
  } catch {
    // no feed on this stack (against a deployed one the notifications go to the chat service)
  }
  $("#feed").replaceChildren(
    ...feed.items.map((item) =>
      element(
        "li",
        { "data-type": item.type },
        item.text,
        element("small", {}, `${item.type} · 요청 #${item.payment_request_id}${item.time ? ` · ${clock(item.time)}` : ""}`),
      ),
    ),
  );
}

async function act(action) {
  showError(null);
  try {
    await action();
  } catch (error) {
    showError(error);
  }
  await refresh();
}

// Paying: our API prepares the order (orderId, amount, customerKey), this browser remembers it, then the payment
// window opens (checkout.js). The window redirects to success.html, which confirms through our API.
async function pay() {
  const request = current.status.payment_request;
  const order = await Escrow.call(current.user, "POST", "/api/v1/payment/prepare", { chat_room_id: current.room });
  PendingPayment.save({ room: current.room, user: current.user, requestId: request.payment_request_id, order });
  await PaymentWindow.open(order, current.config, current.user, {
    dialog: $("#checkout"),
    methods: "#payment-method",
    agreement: "#agreement",
    pay: $("#checkout-pay"),
    close: $("#checkout-close"),
  });
}

async function cancelShare() {
  const request = current.status.payment_request;
  const answer = await Escrow.call(current.user, "POST", "/api/v1/payment/cancel", {
    paymentKey: PaymentKeys.get(current.room, current.user, request.payment_request_id),
    cancelReason: "참여자가 결제를 취소했습니다.",
  });
  showNotice(
    answer.refund_status === "refund_pending"
      ? "취소를 받았어요. 환불은 곧 자동으로 처리돼요."
      : `내 결제를 취소했어요: ${won(answer.refunded_amount)} 환불 (${answer.refund_status})`,
  );
}

function removeParticipant(userId) {
  act(() =>
    Escrow.call(current.user, "POST", "/api/v1/payment/participants/remove", {
      chat_room_id: current.room,
      user_id: userId,
      reason: "방장이 참여자에서 제외했습니다.",
    }),
  );
}

function showNotice(text) {
  const notice = $("#error");
  notice.textContent = text;
  notice.dataset.code = "OK";
  notice.classList.add("shown", "notice");
}

async function choose() {
  current.room = Number($("#room").value);
  current.user = $("#user").value || null;
  $("#whoami").textContent = current.user ? `${current.user} 로 보는 중` : "";
  history.replaceState(null, "", current.user ? `?room=${current.room}&user=${current.user}` : "?");
  showError(null);
  $("#error").classList.remove("notice");
  await refresh();
}

async function start() {
  current.config = await Escrow.config();
  $("#token-field").hidden = Boolean(current.config.token_url);
  $("#token").addEventListener("change", () => {
    if (current.user && $("#token").value) Escrow.rememberToken(current.user, $("#token").value.trim());
    refresh();
  });
  $("#user").addEventListener("change", choose);
  $("#room").addEventListener("change", choose);
  $("#open-request").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    act(() =>
      Escrow.call(current.user, "POST", "/api/v1/payment/request", {
        chat_room_id: current.room,
        store_id: form.get("store_id"),
        amount: Number(form.get("amount")),
        message: form.get("message") || null,
      }),
    );
  });
  $("#add-participant").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = event.target.elements.user_id;
    act(async () => {
      await Escrow.call(current.user, "POST", "/api/v1/payment/participants/add", {
        chat_room_id: current.room,
        user_id: input.value.trim(),
      });
      input.value = "";
    });
  });
  $("#release").addEventListener("click", () =>
    act(() => Escrow.call(current.user, "POST", "/api/v1/payment/release", { chat_room_id: current.room })),
  );
  $("#cancel-request").addEventListener("click", () =>
    act(() =>
      Escrow.call(current.user, "POST", "/api/v1/payment/cancel", {
        chat_room_id: current.room,
        cancelReason: "방장이 요청을 취소했습니다.",
      }),
    ),
  );
  $("#pay").addEventListener("click", () => act(pay));
  $("#cancel-share").addEventListener("click", () => act(cancelShare));

  const params = new URLSearchParams(location.search);
  if (params.get("room")) $("#room").value = params.get("room");
  if (params.get("user")) $("#user").value = params.get("user");
  await choose();
  setInterval(refresh, POLL_MS);
}

start().catch(showError);
