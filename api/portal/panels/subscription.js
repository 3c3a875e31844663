// Subscription: the current plan (renewal or cancellation date), starting one, changing
// plan (an upgrade now, with a prorated charge; a downgrade at the period's end), cancelling.
// Its credits come with each paid invoice, through Stripe's events.

import {
  announce, formatMoney, formatNumber, h, message, replace, statusBadge, timeEl,
} from "/ui/dom.js";
import { rememberPending } from "../session.js";

const ENDED = ["canceled", "incomplete_expired"];
// Stripe's test card, for the local Stripe peer (development), which has no Checkout.
const TEST_CARD = "pm_card_visa";

function changePlan(ctx, state, plans, box) {
  const { subscription: sub, plan, pending_change: pending } = state;
  const others = plans.filter((p) => p.id !== plan.id && p.currency === plan.currency);
  if (!others.length || sub.cancel_at_period_end || sub.canceled_at) return null;
  const select = h("select", { id: "change-plan-select" }, others.map((p) => h("option", {
    value: p.id, text: `${p.name}: ${formatNumber(p.monthly_credits)} credits a month for `
      + `${formatMoney(p.price_cents, p.currency)}` })));
  const button = h("button", { type: "button", class: "button", id: "change-plan",
    text: "Change plan" });
  button.addEventListener("click", async () => {
    const target = others.find((p) => p.id === select.value);
    button.disabled = true;
    try {
      const answer = await ctx.api.post(`${ctx.API}/subscription/change`, { plan_id: target.id });
      announce(answer.change && answer.change.direction === "downgrade"
        ? `${target.name} from the end of this period.`
        : `Changed to ${target.name}; its extra credits come with the prorated charge.`);
      await render(ctx);
    } catch (err) {
      ctx.handleError(err, box);
    } finally {
      button.disabled = false;
    }
  });
  const waiting = pending ? plans.find((p) => p.id === pending.to_plan_id) : null;
  const keep = pending ? h("button", { type: "button", class: "button", id: "keep-plan",
    text: `Keep ${plan.name}` }) : null;
  keep?.addEventListener("click", async () => {
    keep.disabled = true;
    try {
      await ctx.api.post(`${ctx.API}/subscription/change`, { plan_id: plan.id });
      announce(`You stay on ${plan.name}.`);
      await render(ctx);
    } catch (err) {
      ctx.handleError(err, box);
    }
  });
  return h("div", { class: "change-plan" },
    pending ? h("p", { class: "hint" }, `Moves to ${waiting ? waiting.name : "another plan"} on `,
      timeEl(pending.effective_at), ".") : null,
    h("label", { for: "change-plan-select", text: "Change plan" }),
    h("p", { class: "hint", text: "A dearer plan starts now, charged for the rest of the "
      + "period; a cheaper one at the end of the period." }),
    h("div", { class: "actions" }, select, button, keep));
}

function current(ctx, state, box, plans = []) {
  const { subscription: sub, plan } = state;
  const ends = sub.cancel_at_period_end || sub.canceled_at;
  const cancel = ends ? null : h("button", { type: "button", class: "button danger",
    id: "cancel-subscription", text: "Cancel subscription" });
  cancel?.addEventListener("click", () => confirmCancel(ctx, sub, box));
  return h("section", { class: "panel", "aria-labelledby": "plan-title" },
    h("h2", { id: "plan-title", text: `${plan.name} plan` }),
    h("dl", { class: "details" },
      h("dt", { text: "Status" }), h("dd", {}, statusBadge(sub.status)),
      h("dt", { text: "Credits" }),
      h("dd", { text: `${formatNumber(plan.monthly_credits)} a month` }),
      h("dt", { text: "Price" }),
      h("dd", { text: `${formatMoney(plan.price_cents, plan.currency)} a month` }),
      h("dt", { text: ends ? "Ends" : "Renews" }),
      h("dd", {}, timeEl(sub.current_period_end))),
    ends ? h("p", { class: "hint", text: "Cancelled: it stays active until then." }) : null,
    changePlan(ctx, state, plans, box),
    h("div", { class: "actions" }, cancel), box);
}

function confirmCancel(ctx, sub, box) {
  const yes = h("button", { type: "button", class: "button danger", text: "Yes, cancel it" });
  const no = h("button", { type: "button", class: "button", text: "Keep it" });
  no.addEventListener("click", () => replace(box));
  yes.addEventListener("click", async () => {
    yes.disabled = true;
    try {
      await ctx.api.post(`${ctx.API}/subscription/cancel`, { immediately: false });
      announce("Subscription cancelled at the end of the period.");
      await render(ctx);
    } catch (err) {
      ctx.handleError(err, box);
    }
  });
  replace(box, h("div", { class: "review", role: "group", "aria-label": "Confirm" },
    h("p", {}, "Cancel at the end of the period (", timeEl(sub.current_period_end),
      ")? You keep its credits until then and are not charged again."),
    h("div", { class: "actions" }, yes, no)));
  yes.focus();
}

function planCard(ctx, plan, box) {
  const price = formatMoney(plan.price_cents, plan.currency);
  const button = h("button", { type: "button", class: "button primary",
    "aria-label": `Subscribe to ${plan.name}: ${formatNumber(plan.monthly_credits)} credits a `
      + `month for ${price}`, text: "Subscribe" });
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      if (ctx.config.payments === "test_cards") {
        await ctx.api.post(`${ctx.API}/subscription`, { plan_id: plan.id,
          payment_method: TEST_CARD });
        announce(`Subscribed to ${plan.name}.`);
        await render(ctx);
        return;
      }
      const started = await ctx.api.post(`${ctx.API}/subscription`, { plan_id: plan.id });
      rememberPending({ subscription: plan.id });
      window.location.assign(started.checkout_url);
    } catch (err) {
      ctx.handleError(err, box);
    } finally {
      button.disabled = false;
    }
  });
  return h("li", { class: "card package" },
    h("p", { class: "card-label", text: plan.name }),
    h("p", { class: "card-value", text: `${formatNumber(plan.monthly_credits)} credits` }),
    h("p", { class: "card-extra", text: `${price} a month` }),
    plan.trial_credits ? h("p", { class: "hint",
      text: `${formatNumber(plan.trial_credits)} credits to start` }) : null,
    button);
}

async function render(ctx) {
  const [state, plans] = await Promise.all([
    ctx.api.get(`${ctx.API}/subscription`),
    ctx.api.get(`${ctx.API}/plans`),
  ]);
  const box = h("div", { id: "subscription-status", "aria-live": "polite" });
  const live = state.subscription && !ENDED.includes(state.subscription.status);
  let body;
  if (live) {
    body = current(ctx, state, box, plans);
  } else {
    body = h("section", { class: "panel", "aria-labelledby": "plans-title" },
      h("h2", { id: "plans-title", text: "Plans" }),
      state.subscription ? h("p", { class: "hint",
        text: `Your ${state.plan.name} subscription has ended.` }) : null,
      plans.length
        ? h("ul", { class: "packages" }, plans.map((p) => planCard(ctx, p, box)))
        : h("p", { class: "empty", text: "No plans are on sale right now." }),
      ctx.config.payments === "test_cards" && plans.length
        ? message("Development: subscribing pays with Stripe's test Visa card on the local "
          + "Stripe peer.", "info") : null,
      box);
  }
  replace(ctx.root, h("div", { class: "page-head" }, h("h1", { text: "Subscription" })), body);
}

export default { id: "subscription", title: "Subscription", render };
