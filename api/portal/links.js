// The pages that links in mails and Stripe's redirects open (api/routes/portal.py serves
// link.html at each path). Each does the job its path names, says how it went, and links
// onward. A token is taken out of the address bar before it is used: it is single-use, and
// the history is no place for it.

import { anonymous } from "/ui/api.js";
import { announce, formatNumber, h, message, replace } from "/ui/dom.js";
import { wireShell } from "/ui/shell.js";
import { handleSubmit } from "./forms.js";
import { API, api, takePending } from "./session.js";

const POLL_MS = 1000;
const POLL_FOR_MS = 60_000;
const title = document.getElementById("title");
const outcome = document.getElementById("outcome");

function show(heading, ...children) {
  title.textContent = heading;
  document.title = `${heading} · Your account`;
  replace(outcome, ...children);
  announce(heading);
}

function onward(label = "Go to your account", href = "/account/") {
  return h("p", { class: "actions" }, h("a", { class: "button primary", href, text: label }));
}

/** The URL's query, then the address bar without it (so no token stays in the history). */
function takeQuery() {
  const params = new URLSearchParams(window.location.search);
  window.history.replaceState(null, "", window.location.pathname);
  return params;
}

function linkProblem(err) {
  switch (err.code) {
    case "token_used": return "This link was used already.";
    case "token_expired": return "This link has expired.";
    case "invalid_token": return "This link is not valid: a newer one may have replaced it.";
    default: return err.message;
  }
}

function noToken() {
  show("Nothing to do here", message("This page opens from the link in a mail.", "info"),
    onward());
}

// --- /auth/confirm: a new account's address, or the new address of an email change -------

async function confirmEmail() {
  const token = takeQuery().get("token");
  if (!token) return noToken();
  show("Confirming your email…");
  try {
    const { email } = await anonymous("POST", "/api/auth/confirm", { token });
    show("Email confirmed", message(`${email} is confirmed.`, "success"),
      onward(api.hasSession() ? "Back to your account" : "Sign in"));
  } catch (err) {
    show("This link did not work", message(linkProblem(err), "error"),
      h("p", { text: "If your address is confirmed already, just sign in. Otherwise an "
        + "email link from the sign-in page confirms it too." }),
      onward("Go to sign in"));
  }
}

// --- /auth/magic-link: sign in -------------------------------------------------------------

async function magicLink() {
  const token = takeQuery().get("token");
  if (!token) return noToken();
  show("Signing you in…");
  try {
    api.adopt(await anonymous("POST", "/api/auth/magic-link/verify", { token }));
  } catch (err) {
    show("This sign-in link did not work", message(linkProblem(err), "error"),
      onward("Get a new link"));
    return;
  }
  show("You are signed in", onward());
  window.location.replace("/account/");
}

// --- /auth/google: back from Google's consent page ---------------------------------------

async function google() {
  const params = takeQuery();
  const forward = new URLSearchParams();
  for (const key of ["code", "state", "error"]) {
    if (params.get(key)) forward.set(key, params.get(key));
  }
  show("Signing you in with Google…");
  try {
    // The state cookie set by /authorize travels with this same-origin request.
    api.adopt(await anonymous("GET", `/api/auth/oauth/google/callback?${forward}`, undefined,
      { credentials: "same-origin" }));
  } catch (err) {
    show("Google sign-in did not work", message(err.message, "error"), onward("Try again"));
    return;
  }
  show("You are signed in", onward());
  window.location.replace("/account/");
}

// --- /auth/undo-email-change: from the note mailed to the old address -------------------

function undoEmailChange() {
  const token = takeQuery().get("token");
  if (!token) return noToken();
  // A click, not on load: mail scanners open links, and undoing is drastic.
  const box = h("div", { class: "message", role: "status" });
  const form = h("form", { class: "stack", id: "undo-form" },
    h("p", { text: "Your account's email address was changed. If you did not do this, undo "
      + "it: your old address comes back, the account's password is removed and every device "
      + "is signed out, so whoever changed it is out. You then sign in with a link mailed "
      + "to your old address." }),
    h("button", { type: "submit", class: "button danger", text: "Undo the change" }), box);
  handleSubmit(form, box, async () => {
    const { email } = await anonymous("POST", "/api/auth/email-change/undo", { token });
    api.forget();
    show("Your address is back", message(`${email} is your account's address again, and `
      + "every device is signed out.", "success"), sendLinkForm(email));
    return null;
  }, {
    explain: (err) => (err.code === "email_taken"
      ? "Another account has proven this address since; it cannot come back."
      : linkProblem(err)),
  });
  show("Undo the email change?", form);
}

function sendLinkForm(email) {
  const box = h("div", { class: "message", role: "status" });
  const form = h("form", { class: "stack", id: "send-link-form" },
    h("button", { type: "submit", class: "button primary",
      text: `Mail a sign-in link to ${email}` }), box);
  return handleSubmit(form, box, async () => {
    await anonymous("POST", "/api/auth/magic-link", { email });
    return `A sign-in link is on its way to ${email}.`;
  });
}

// --- /billing/success and /billing/cancel: back from paying -------------------------------

function poll(check) {
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const tick = async () => {
      try {
        const done = await check();
        if (done) return resolve(done);
        if (Date.now() - started > POLL_FOR_MS) return resolve(null);
        window.setTimeout(tick, POLL_MS);
      } catch (err) {
        reject(err);
      }
    };
    tick();
  });
}

async function paymentOutcome(paymentId) {
  show("Confirming your payment…", message("Waiting for Stripe to confirm the payment. "
    + "This takes a few seconds.", "info"));
  const payment = await poll(async () => {
    const p = await api.get(`${API}/payments/${paymentId}`);
    return p.status === "pending" ? null : p;
  });
  if (!payment) {
    show("Still confirming", message("Stripe has not confirmed the payment yet. The credits "
      + "appear in your account as soon as it does.", "info"), onward());
  } else if (["succeeded", "partially_refunded", "refunded"].includes(payment.status)) {
    const { balance } = await api.get(`${API}/credits`);
    show("Payment received",
      message(`${formatNumber(payment.credits)} credits were added. `
        + `Your balance is ${formatNumber(balance)} credits.`, "success"),
      h("p", { class: "actions" },
        h("a", { class: "button primary", href: "/account/#/credits", id: "back-to-account",
          text: "Back to your account" }),
        h("a", { class: "button", href: `/account/#/activity/receipts/${payment.id}`,
          text: "View the receipt" })));
  } else {
    show("The payment did not go through",
      message(payment.failure_reason || "Nothing was charged.", "error"),
      onward("Back to your account", "/account/#/credits"));
  }
}

async function subscriptionOutcome() {
  show("Starting your subscription…", message("Waiting for Stripe to confirm it.", "info"));
  const state = await poll(async () => {
    const s = await api.get(`${API}/subscription`);
    return s.subscription && ["active", "trialing"].includes(s.subscription.status) ? s : null;
  });
  show(state ? "Subscription active" : "Still confirming",
    message(state ? `Your ${state.plan.name} subscription is active.`
      : "Stripe has not confirmed it yet; your account shows it as soon as it does.",
    state ? "success" : "info"),
    onward("Back to your account", "/account/#/subscription"));
}

async function billingSuccess() {
  const pending = takePending() || {};
  const paymentId = takeQuery().get("payment_id") || pending.payment_id;
  if (!api.hasSession()) {
    show("Thank you", message("Your payment is being confirmed. Sign in to see your credits.",
      "info"), onward("Sign in"));
    return;
  }
  try {
    if (paymentId) await paymentOutcome(paymentId);
    else if (pending.subscription) await subscriptionOutcome();
    else {
      show("Thank you", message("Your payment is being confirmed; the credits appear in your "
        + "account as soon as Stripe confirms it.", "info"), onward());
    }
  } catch (err) {
    show("Could not check the payment", message(err.message, "error"), onward());
  }
}

function billingCancel() {
  takePending();
  takeQuery();
  show("Payment cancelled", message("Nothing was charged.", "info"),
    onward("Back to your account", "/account/#/credits"));
}

const PAGES = {
  "/auth/confirm": confirmEmail,
  "/auth/magic-link": magicLink,
  "/auth/google": google,
  "/auth/undo-email-change": undoEmailChange,
  "/billing/success": billingSuccess,
  "/billing/cancel": billingCancel,
};

wireShell();
(PAGES[window.location.pathname] || noToken)();
