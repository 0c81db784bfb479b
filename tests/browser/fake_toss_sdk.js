// Stands in for Toss's browser SDK v2 (https://js.tosspayments.com/v2/standard) in the browser test, which has no
// internet: the same global TossPayments(clientKey).widgets({customerKey}) with setAmount, renderPaymentMethods,
// renderAgreement and requestPayment. It records every call the page makes (sessionStorage "fake-toss-calls", read
// by the test) and requestPayment sends the browser where Toss's window would send it: here the Toss sandbox's
// window with the same fields, which redirects to successUrl/failUrl as Toss does. __SANDBOX__ is filled in by the
// test.
"use strict";
(() => {
  const calls = [];
  const record = (name, value) => {
    calls.push([name, value]);
    sessionStorage.setItem("fake-toss-calls", JSON.stringify(calls));
  };
  window.TossPayments = function TossPayments(clientKey) {
    record("TossPayments", clientKey);
    return {
      widgets(options) {
        record("widgets", options);
        let amount = null;
        return {
          async setAmount(value) {
            record("setAmount", value);
            amount = value;
          },
          async renderPaymentMethods(options) {
            record("renderPaymentMethods", options);
            document.querySelector(options.selector).textContent = "(Toss 결제위젯: 결제수단)";
          },
          async renderAgreement(options) {
            record("renderAgreement", options);
            document.querySelector(options.selector).textContent = "(Toss 결제위젯: 약관 동의)";
          },
          requestPayment(request) {
            record("requestPayment", request);
            const query = new URLSearchParams({
              orderId: request.orderId,
              amount: String(amount.value),
              orderName: request.orderName,
              customerName: request.customerName || "",
              successUrl: request.successUrl,
              failUrl: request.failUrl,
              method: "CARD",
            });
            location.assign(`__SANDBOX__/sandbox/checkout?${query}`);
            return new Promise(() => {}); // Toss's window takes the page away; this promise never settles
          },
        };
      },
    };
  };
})();
