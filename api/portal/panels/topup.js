// Auto top-up: saved cards, buying a package automatically when the balance falls below a
// threshold, the low-balance alert, and the history of automatic top-ups. A card is saved
// with a SetupIntent that Stripe.js confirms; it is listed here once Stripe's event says so.

import { formatNumber, h, inputField, message, replace, selectField, statusBadge, table,
  timeEl } from "/ui/dom.js";
import { handleSubmit } from "../forms.js";

function explain(err) {
  switch (err.code) {
    case "no_payment_method": return "Save a card first: automatic top-ups charge it.";
    case "threshold_above_package":
      return "The threshold must not be above the credits of the package bought.";
    case "package_retired": return "That package is no longer for sale. Choose another.";
    default: return err.message;
  }
}

function form(ctx, id, children, work) {
  const status = h("div", { class: "message", role: "status", id: `${id}-status` });
  const node = h("form", { class: "stack", id, novalidate: true }, children, status);
  return handleSubmit(node, status, work, {
    explain, intercept: (err) => err.status === 401 && ctx.handleError(err, status),
  });
}

const number = (node, id) => {
  const raw = node.querySelector(`#${id}`).value.trim();
  return raw === "" ? null : Number(raw);
};

function methodsSection(ctx, methods) {
  const list = methods.length
    ? h("ul", { class: "stack", id: "payment-methods" }, methods.map((m, i) => h("li", {},
      `${m.brand || m.type} •••• ${m.last4 || "????"}`,
      m.exp_month ? ` (expires ${m.exp_month}/${m.exp_year})` : "",
      i === 0 ? h("span", { class: "muted", text: " — charged for top-ups" }) : null)))
    : h("p", { class: "empty", id: "payment-methods", text: "No saved card yet." });
  const save = form(ctx, "setup-form", [
    h("button", { type: "submit", class: "button", text: "Save a card" }),
  ], async () => {
    const started = await ctx.api.post(`${ctx.API}/payment-methods/setup`, {});
    return `Card setup started (${started.setup_intent_id}): confirm it with Stripe. `
      + "The card appears here once Stripe has saved it.";
  });
  return h("section", { class: "panel", "aria-labelledby": "methods-title" },
    h("h2", { id: "methods-title", text: "Saved cards" }), list, save);
}

function topupSection(ctx, settings, packages) {
  const disabledNote = settings.disabled_reason
    ? message(`Automatic top-up was turned off: ${settings.disabled_reason}. `
      + "Check your card, then turn it on again.", "error") : null;
  const pkg = settings.package_id || (packages[0] && packages[0].id) || "";
  const save = form(ctx, "auto-topup-form", [
    h("div", { class: "choice" },
      h("input", { type: "checkbox", id: "topup-enabled", checked: settings.enabled }),
      h("label", { for: "topup-enabled", text: "Top up automatically" })),
    inputField("topup-threshold", "When the balance falls below", { type: "number", min: "1",
      inputmode: "numeric", value: settings.threshold ?? "" }, "credits"),
    selectField({ id: "topup-package", label: "Buy", value: pkg, options: packages.map(
      (p) => [p.id, `${p.name}: ${formatNumber(p.credits)} credits`]) }),
    inputField("topup-max", "At most, per month", { type: "number", min: "1", max: "100",
      inputmode: "numeric", value: settings.max_per_month ?? 5 }, "top-ups"),
    h("button", { type: "submit", class: "button primary", text: "Save auto top-up" }),
  ], async (node) => {
    const saved = await ctx.api.put(`${ctx.API}/credits/auto-topup`, {
      enabled: node.querySelector("#topup-enabled").checked,
      threshold: number(node, "topup-threshold"),
      package_id: node.querySelector("#topup-package").value,
      max_per_month: number(node, "topup-max"),
    });
    return saved.enabled ? "Automatic top-up is on." : "Automatic top-up is off.";
  });
  return h("section", { class: "panel", "aria-labelledby": "topup-title" },
    h("h2", { id: "topup-title", text: "Automatic top-up" }), disabledNote, save);
}

function alertSection(ctx, alerts) {
  const save = form(ctx, "alerts-form", [
    inputField("alert-low", "Mail me when the balance falls below", { type: "number",
      min: "1", inputmode: "numeric", value: alerts.low_balance ?? "" },
    "credits; leave empty for no alert"),
    h("button", { type: "submit", class: "button primary", text: "Save alert" }),
  ], async (node) => {
    const saved = await ctx.api.put(`${ctx.API}/credits/alerts`,
      { low_balance: number(node, "alert-low") });
    return saved.low_balance === null ? "No low-balance alert."
      : `We will mail you below ${formatNumber(saved.low_balance)} credits.`;
  });
  return h("section", { class: "panel", "aria-labelledby": "alerts-title" },
    h("h2", { id: "alerts-title", text: "Low-balance alert" }), save);
}

function historySection(history) {
  return h("section", { class: "panel", "aria-labelledby": "topups-title" },
    h("h2", { id: "topups-title", text: "Automatic top-ups" }),
    table({
      caption: "Automatic top-ups, newest first",
      empty: "No automatic top-up yet.",
      rows: history.items,
      columns: [
        { label: "When", cell: (t) => timeEl(t.created_at) },
        { label: "Package", cell: (t) => t.package_id },
        { label: "Status", cell: (t) => statusBadge(t.status) },
        { label: "Why", cell: (t) => t.failure_message || "" },
      ],
    }));
}

async function render(ctx) {
  const [methods, settings, alerts, packages, history] = await Promise.all([
    ctx.api.get(`${ctx.API}/payment-methods`),
    ctx.api.get(`${ctx.API}/credits/auto-topup`),
    ctx.api.get(`${ctx.API}/credits/alerts`),
    ctx.api.get(`${ctx.API}/credit-packages`),
    ctx.api.get(`${ctx.API}/credits/auto-topup/history?limit=20`),
  ]);
  replace(ctx.root,
    h("div", { class: "page-head" }, h("h1", { text: "Auto top-up" })),
    methodsSection(ctx, methods.items),
    topupSection(ctx, settings, packages),
    alertSection(ctx, alerts),
    historySection(history));
}

export default { id: "topup", title: "Auto top-up", render };
