// The room page: who I am, the room's request and every participant's share (refreshed every 2 s), the actions my
// role allows, and the chat feed of the room's notifications.
"use strict";

const $ = (selector) => document.querySelector(selector);
const won = (n) => `${Number(n || 0).toLocaleString("ko-KR")}원`;
const PENDING_PAYMENT = "escrow-demo-pending-payment";
const LABELS = {
  pending: "미결제",
  in_progress: "확인 중",
  unknown: "확인 중",
  failed: "실패",
  completed: "결제 (보관 중)",
  partially_refunded: "일부 환불",
  refunded: "환불",
  released: "가게로 정산",
};
const SHOWN = { completed: "held", in_progress: "pending", unknown: "pending", failed: "pending" };

let current = { room: null, user: null, status: null };

function element(tag, attributes = {}) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  return node;
}

function cell(content, className) {
  const td = element("td", className ? { class: className } : {});
  td.append(content);
  return td;
}

function showError(error) {
  const box = $("#error");
  if (!error) {
    box.classList.remove("shown");
    box.textContent = "";
    return;
  }
  box.textContent = error instanceof Escrow.ApiError ? Escrow.describe(error) : String(error);
  box.classList.add("shown");
}

function paymentKeyStore() {
  return JSON.parse(localStorage.getItem("escrow-demo-payment-keys") || "{}");
}

function myPaymentKey() {
  return paymentKeyStore()[`${current.room}:${current.user}`];
}

async function refresh() {
  if (!current.user) return;
  try {
    current.status = await Escrow.call(current.user, "GET", `/api/v1/payment/status/${current.room}`);
  } catch (error) {
    current.status = null;
    if (error.code !== "PAYMENT_REQUEST_NOT_FOUND") showError(error);
  }
  render();
  await refreshFeed();
}

function render() {
  const status = current.status;
  const request = status && status.payment_request;
  const summary = $("#request-summary");
  const table = $("#shares");
  if (!request) {
    summary.textContent = "이 방에는 예약금 요청이 없어요.";
    table.hidden = true;
  } else {
    summary.textContent =
      `#${request.payment_request_id} ${request.status} · 1인 ${won(request.amount)} · ` +
      `${request.paid_count}/${request.participant_count}명 결제 · 합계 ${won(request.total_amount)} · 가게 ${request.store_id}`;
    // Built with textContent, never innerHTML: ids and texts come from other people.
    const body = table.querySelector("tbody");
    body.replaceChildren(
      ...status.payments.map((p) => {
        const row = element("tr", { "data-payer": p.payer_id });
        const badge = element("span", {
          class: `status ${SHOWN[p.payment_status] || p.payment_status}`,
          "data-status": p.payment_status,
        });
        badge.textContent = LABELS[p.payment_status] || p.payment_status;
        row.append(
          cell(p.payer_id),
          cell(badge),
          cell(won(p.payment_amount), "amount"),
          cell(won(p.refunded_amount), "amount"),
        );
        return row;
      }),
    );
    table.hidden = false;
  }
  const isOwner = !request || request.requester_id === current.user;
  const share = request && status.payments.find((p) => p.payer_id === current.user);
  $("#owner-actions").hidden = !current.user || !isOwner;
  $("#payer-actions").hidden = !share;
  if (share) {
    $("#pay").disabled = !["pending", "failed"].includes(share.payment_status) || request.status !== "pending";
    $("#cancel-share").disabled = !["completed", "partially_refunded"].includes(share.payment_status) || !myPaymentKey();
  }
}

async function refreshFeed() {
  const answer = await fetch(`/demo/feed?chat_room_id=${current.room}`);
  const feed = await answer.json();
  $("#feed").replaceChildren(
    ...feed.items.map((item) => {
      const line = element("li", { "data-type": item.type });
      const meta = element("small");
      meta.textContent = `${item.type} · #${item.outbox_id}`;
      line.append(item.text, meta);
      return line;
    }),
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

// Paying: prepare an order with our API (the server decides the amount), then the payment window. With a real
// Toss client key the window is Toss's widget:
//   const widgets = TossPayments(clientKey).widgets({ customerKey: order.customerKey });
//   await widgets.setAmount({ currency: "KRW", value: order.amount });
//   await widgets.requestPayment({ orderId: order.orderId, orderName: order.orderName,
//                                 successUrl: `${location.origin}/demo/success.html`,
//                                 failUrl: `${location.origin}/demo/fail.html` });
// Toss then redirects to successUrl?paymentKey=...&orderId=...&amount=...&paymentType=NORMAL (or failUrl?code=...),
// and success.html confirms through our API.
async function pay() {
  const order = await Escrow.call(current.user, "POST", "/api/v1/payment/prepare", { chat_room_id: current.room });
  sessionStorage.setItem(PENDING_PAYMENT, JSON.stringify({ room: current.room, user: current.user, order }));
  await openPaymentWindow(order);
}

async function openPaymentWindow(order) {
  // Locally the Toss sandbox plays the window: it authenticates a payment for the order and we go where Toss's
  // window would send us.
  const answer = await fetch("/demo/widget", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ orderId: order.orderId, amount: order.amount, orderName: order.orderName }),
  });
  const payment = await answer.json();
  if (!answer.ok) throw new Error(payment.message || `the payment window failed (${answer.status})`);
  const query = new URLSearchParams({
    paymentKey: payment.paymentKey,
    orderId: order.orderId,
    amount: String(order.amount),
    paymentType: "NORMAL",
  });
  location.href = `success.html?${query}`;
}

function choose() {
  current.room = Number($("#room").value);
  current.user = $("#user").value || null;
  $("#whoami").textContent = current.user ? `${current.user} 로 보는 중` : "";
  showError(null);
  refresh();
}

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
      message: form.get("message"),
    }),
  );
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
$("#cancel-share").addEventListener("click", () =>
  act(() =>
    Escrow.call(current.user, "POST", "/api/v1/payment/cancel", {
      paymentKey: myPaymentKey(),
      cancelReason: "참여자가 결제를 취소했습니다.",
    }),
  ),
);

const params = new URLSearchParams(location.search);
if (params.get("room")) $("#room").value = params.get("room");
if (params.get("user")) $("#user").value = params.get("user");
choose();
setInterval(refresh, 2000);
