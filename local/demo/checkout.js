// Opening the payment window for an order our API prepared (POST /api/v1/payment/prepare decided the orderId and
// the amount; the browser never chooses them). config.json's payment_window chooses the window:
//
// - "toss": Toss's payment widget (SDK v2, loaded from Toss; a *widget* client key test_gck_/live_gck_, paired with
//   the stack's widget secret key). This is the code an app copies.
// - "sandbox": the Toss sandbox's test window (GET /sandbox/checkout), which takes the same order fields and
//   redirects exactly as Toss's window does, so everything after the window (success.html, fail.html) is the same.
//
// Either way the window ends in a redirect, and nothing is charged until our API confirms:
//   successUrl?paymentKey=...&orderId=...&amount=...&paymentType=NORMAL   -> success.html confirms (within 10 min)
//   failUrl?code=...&message=...&orderId=...                              -> fail.html (nothing was charged)
"use strict";

const PaymentWindow = (() => {
  function redirectUrls() {
    // Absolute URLs of this client's own pages: Toss appends its query to them.
    return {
      successUrl: new URL("success.html", location.href).href,
      failUrl: new URL("fail.html", location.href).href,
    };
  }

  function loadScript(src) {
    return new Promise((resolve, reject) => {
      if (window.TossPayments) return resolve();
      const script = document.createElement("script");
      script.src = src;
      script.onload = () => resolve();
      script.onerror = () => reject(new Error(`could not load Toss's SDK from ${src}`));
      document.head.append(script);
    });
  }

  // Toss's payment widget. Each step is the real SDK call (docs.tosspayments.com, 결제위젯 SDK v2).
  async function openTossWidget(order, config, customerName, elements) {
    if (!/^(test|live)_gck_/.test(config.toss_client_key)) {
      throw new Error("Toss's widget needs a widget client key (test_gck_... / live_gck_...) in config.json");
    }
    // <script src="https://js.tosspayments.com/v2/standard"></script>
    await loadScript(config.toss_sdk_url);
    // const tossPayments = TossPayments(clientKey);
    const tossPayments = window.TossPayments(config.toss_client_key);
    // const widgets = tossPayments.widgets({ customerKey });   our API gives each payer a stable, opaque customerKey
    const widgets = tossPayments.widgets({ customerKey: order.customerKey });
    // await widgets.setAmount({ currency: "KRW", value });      the amount our API prepared, never a typed one
    await widgets.setAmount({ currency: "KRW", value: order.amount });
    // await widgets.renderPaymentMethods(...) and renderAgreement(...): Toss draws its UI into our two elements
    elements.dialog.hidden = false;
    await Promise.all([
      widgets.renderPaymentMethods({ selector: elements.methods, variantKey: "DEFAULT" }),
      widgets.renderAgreement({ selector: elements.agreement, variantKey: "AGREEMENT" }),
    ]);
    // The payer presses our pay button: widgets.requestPayment({...}) opens Toss's window, which then redirects
    // to successUrl (or failUrl) with the query above.
    return new Promise((resolve, reject) => {
      elements.pay.onclick = () => {
        elements.pay.disabled = true;
        widgets
          .requestPayment({
            orderId: order.orderId,
            orderName: order.orderName,
            customerName,
            ...redirectUrls(),
          })
          .then(resolve, (error) => {
            // The payer closed the window (USER_CANCEL) or the SDK refused: no redirect, nothing charged.
            elements.pay.disabled = false;
            reject(error);
          });
      };
      elements.close.onclick = () => {
        elements.dialog.hidden = true;
        reject(new Error("결제를 취소했어요."));
      };
    });
  }

  // The Toss sandbox's window: a top-level navigation, like Toss's window in redirect mode.
  function openSandboxWindow(order, config, customerName) {
    if (!config.toss_sandbox) throw new Error("config.json names no Toss sandbox (toss_sandbox)");
    const query = new URLSearchParams({
      orderId: order.orderId,
      amount: String(order.amount),
      orderName: order.orderName,
      customerName,
      method: "CARD",
      ...redirectUrls(),
    });
    location.assign(`${config.toss_sandbox}/sandbox/checkout?${query}`);
  }

  async function open(order, config, customerName, elements) {
    if (config.payment_window !== "toss") return openSandboxWindow(order, config, customerName);
    try {
      return await openTossWidget(order, config, customerName, elements);
    } catch (error) {
      elements.dialog.hidden = true; // nothing was charged: the room page shows the error, 결제하기 works again
      throw error;
    }
  }

  return { open };
})();
