// Users: the searchable table, one user's page, and the credit adjustment with its review step.

import * as api from "./api.js";
import { auditTable } from "./lists.js";
import {
  announce, cursorPages, formatMoney, formatNumber, formatSigned, h, replace, selectField,
  statusBadge, table, timeEl,
} from "/ui/dom.js";

const PAGE_SIZE = 25;

const SORTERS = {
  email: (u) => (u.email || u.phone || "").toLowerCase(),
  name: (u) => (u.full_name || "").toLowerCase(),
  credits: (u) => u.credit_balance,
  last_login: (u) => (u.last_login_at ? Date.parse(u.last_login_at) : 0),
};

function userLabel(u) {
  return u.email || u.phone || u.username || u.id;
}

/** The Users page: search, filters, server order by sign-up, column sorting of the page. */
export async function usersView(ctx) {
  const q = ctx.query;
  const filters = {
    q: q.get("q") || "",
    role: q.get("role") || "",
    subscription_status: q.get("subscription_status") || "",
    active: q.get("active") || "",
    sort: q.get("sort") || "newest",
  };
  const pages = cursorPages("Users pages", load);
  let items = [];
  let next = null;
  let columnSort = null; // {key, dir}

  const results = h("div", { id: "users-results" });
  const search = h("input", { id: "user-search", type: "search", name: "q", value: filters.q,
    autocomplete: "off", placeholder: "email, name or username",
    "aria-describedby": "user-search-hint" });
  const form = h("form", { class: "filters", role: "search", "aria-label": "Find users" },
    h("div", { class: "field grow" },
      h("label", { for: "user-search", text: "Search users" }),
      search,
      h("span", { id: "user-search-hint", class: "hint",
        text: "Part of the email, name or username" })),
    selectField({ id: "user-role", label: "Role", value: filters.role,
      options: [["", "Any role"], ["user", "User"], ["admin", "Admin"]] }),
    selectField({ id: "user-sub", label: "Subscription", value: filters.subscription_status,
      options: [["", "Any"], ["active", "Active"], ["trialing", "Trialing"],
        ["past_due", "Past due"], ["canceled", "Canceled"], ["unpaid", "Unpaid"]] }),
    selectField({ id: "user-active", label: "Status", value: filters.active,
      options: [["", "Any"], ["true", "Active"], ["false", "Deactivated"]] }),
    selectField({ id: "user-sort", label: "Order", value: filters.sort,
      options: [["newest", "Newest sign-ups first"], ["oldest", "Oldest sign-ups first"]] }),
    h("button", { type: "submit", class: "button primary", text: "Search" }));

  function render() {
    let rows = items;
    if (columnSort) {
      const key = SORTERS[columnSort.key];
      const sign = columnSort.dir === "ascending" ? 1 : -1;
      rows = [...items].sort((a, b) => (key(a) > key(b) ? sign : key(a) < key(b) ? -sign : 0));
    }
    replace(results,
      table({
        caption: "Users",
        rows,
        empty: filters.q ? `No user matches “${filters.q}”.` : "No users match these filters.",
        sort: columnSort ? { ...columnSort, onSort } : { key: null, dir: "none", onSort },
        columns: [
          { label: "Email", sortKey: "email", cell: (u) => h("a", { href: `#/users/${u.id}`,
            text: userLabel(u) }) },
          { label: "Name", sortKey: "name", cell: (u) => u.full_name || "—" },
          { label: "Credits", sortKey: "credits", numeric: true,
            cell: (u) => formatNumber(u.credit_balance) },
          { label: "Subscription", cell: (u) => (u.subscription_status
            ? statusBadge(u.subscription_status) : "none") },
          { label: "Last login", sortKey: "last_login", cell: (u) => timeEl(u.last_login_at) },
          { label: "Status", cell: (u) => (u.is_active ? (u.role === "admin" ? "admin" : "active")
            : statusBadge("deactivated")) },
        ],
      }),
      items.length ? pages.pagerFor(next) : null,
      columnSort ? h("p", { class: "hint", text: "Column sorting orders the rows of this page." })
        : null);
  }

  function onSort(key) {
    const dir = columnSort && columnSort.key === key && columnSort.dir === "ascending"
      ? "descending" : "ascending";
    columnSort = { key, dir };
    render();
    results.querySelector(`th[aria-sort="${dir}"] button`)?.focus();
  }

  async function load(cursor) {
    results.setAttribute("aria-busy", "true");
    try {
      const page = await api.get(`${api.ADMIN}/users`, {
        q: filters.q || null, role: filters.role, subscription_status: filters.subscription_status,
        active: filters.active, sort: filters.sort, limit: PAGE_SIZE, cursor,
      });
      items = page.items;
      next = page.next_cursor;
      render();
      announce(`${items.length} user${items.length === 1 ? "" : "s"} shown.`);
    } catch (err) {
      ctx.handleError(err, results);
    } finally {
      results.removeAttribute("aria-busy");
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    filters.q = search.value.trim();
    filters.role = form.querySelector("#user-role").value;
    filters.subscription_status = form.querySelector("#user-sub").value;
    filters.active = form.querySelector("#user-active").value;
    filters.sort = form.querySelector("#user-sort").value;
    ctx.setQuery(filters.sort === "newest" ? { ...filters, sort: "" } : filters);
    pages.reset();
    columnSort = null;
    load(null);
  });

  replace(ctx.root, h("div", { class: "page-head" }, h("h1", { text: "Users" })), form, results);
  await load(null);
}

// --- one user ---------------------------------------------------------------------------

function detailList(pairs) {
  return h("dl", { class: "details" }, pairs.map(([term, value]) => [
    h("dt", { text: term }),
    h("dd", {}, value instanceof Node ? value : String(value ?? "—")),
  ]));
}

function paymentsTable(payments) {
  return table({
    caption: "Payments",
    rows: payments,
    empty: "No payments.",
    columns: [
      { label: "Created", cell: (p) => timeEl(p.created_at) },
      { label: "What", cell: (p) => p.package_id || (p.plan_id ? "subscription" : p.flow) },
      { label: "Amount", numeric: true, cell: (p) => formatMoney(p.amount_cents, p.currency) },
      { label: "Credits", numeric: true, cell: (p) => formatNumber(p.credits) },
      { label: "Status", cell: (p) => statusBadge(p.status) },
      { label: "Refunded", numeric: true, cell: (p) => (p.refunded_cents
        ? formatMoney(p.refunded_cents, p.currency) : "—") },
    ],
  });
}

function transactionsTable(items) {
  return table({
    caption: "Ledger transactions",
    rows: items,
    empty: "No transactions.",
    columns: [
      { label: "When", cell: (t) => timeEl(t.created_at) },
      { label: "Kind", cell: (t) => t.kind.replaceAll("_", " ") },
      { label: "Amount", numeric: true, cell: (t) => formatSigned(t.amount) },
      { label: "Balance after", numeric: true, cell: (t) => formatNumber(t.balance_after) },
      { label: "Description", cell: (t) => t.description || t.endpoint || "—" },
    ],
  });
}

function usageTable(items) {
  return table({
    caption: "Recent API usage",
    rows: items,
    empty: "No API usage recorded.",
    columns: [
      { label: "When", cell: (u) => timeEl(u.created_at) },
      { label: "Endpoint", cell: (u) => h("code", { text: `${u.method || ""} ${u.endpoint}`.trim() }) },
      { label: "Status", numeric: true, cell: (u) => String(u.status_code) },
      { label: "Credits", numeric: true, cell: (u) => formatNumber(u.credits) },
      { label: "Time", numeric: true, cell: (u) => (u.response_time_ms === null ? "—"
        : `${Math.round(u.response_time_ms)} ms`) },
    ],
  });
}

function loginsTable(items) {
  return table({
    caption: "Recent sign-ins",
    rows: items,
    empty: "No sign-ins recorded.",
    columns: [
      { label: "When", cell: (l) => timeEl(l.created_at) },
      { label: "Method", cell: (l) => l.method.replaceAll("_", " ") },
      { label: "Result", cell: (l) => (l.success ? statusBadge("succeeded")
        : h("span", {}, statusBadge("failed"), l.reason ? ` ${l.reason}` : "")) },
      { label: "IP", cell: (l) => (l.ip ? String(l.ip) : "—") },
      { label: "Browser", cell: (l) => l.user_agent || "—" },
    ],
  });
}

const SOURCES = {
  purchase: "Purchase", subscription: "Subscription", bonus: "Bonus", promo: "Promo code",
  admin: "Adjustment",
};

/** The grants holding the balance, in the order spends burn them, and when each expires. */
function grantsTable(items) {
  return table({
    caption: "Credit grants, in the order spends use them",
    rows: items,
    empty: "No credits held.",
    columns: [
      { label: "Grant", cell: (g) => `#${g.id}` },
      { label: "Source", cell: (g) => SOURCES[g.source] || g.source },
      { label: "Priority", numeric: true, cell: (g) => String(g.priority) },
      { label: "Remaining", numeric: true, cell: (g) => formatNumber(g.remaining) },
      { label: "Expires", cell: (g) => (g.expires_at ? timeEl(g.expires_at) : "never") },
    ],
  });
}

function section(id, title, ...content) {
  return h("section", { class: "panel", "aria-labelledby": id },
    h("h2", { id, text: title }), ...content);
}

/** The credit adjustment form: amount and reason, then a review step, then the result. */
function adjustForm(user, { onDone }) {
  const amount = h("input", { id: "adjust-amount", name: "amount", type: "number", step: "1",
    required: true, inputmode: "numeric", "aria-describedby": "adjust-amount-hint" });
  const reason = h("textarea", { id: "adjust-reason", name: "reason", rows: "2", required: true,
    minlength: "3", maxlength: "1000", "aria-describedby": "adjust-reason-hint" });
  const errorBox = h("div", { class: "message", id: "adjust-error", role: "alert" });
  const review = h("div", { id: "adjust-review", class: "review", hidden: true });
  const result = h("div", { id: "adjust-result", class: "message", role: "status" });
  const reviewButton = h("button", { type: "submit", class: "button primary",
    text: "Review adjustment" });
  let pending = null; // {amount, reason, key}

  const form = h("form", { class: "stack", id: "adjust-form", novalidate: true,
    "aria-labelledby": "adjust-title" },
  h("div", { class: "field" },
    h("label", { for: "adjust-amount", text: "Amount (credits)" }), amount,
    h("span", { id: "adjust-amount-hint", class: "hint",
      text: "Positive adds credits, negative takes them away." })),
  h("div", { class: "field" },
    h("label", { for: "adjust-reason", text: "Reason (required)" }), reason,
    h("span", { id: "adjust-reason-hint", class: "hint",
      text: "Recorded in the audit log with your name." })),
  reviewButton, errorBox);

  function fail(text, field) {
    errorBox.className = "message error";
    errorBox.textContent = text;
    if (field) {
      field.setAttribute("aria-invalid", "true");
      field.focus();
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    errorBox.className = "message";
    errorBox.textContent = "";
    result.textContent = "";
    amount.removeAttribute("aria-invalid");
    reason.removeAttribute("aria-invalid");
    const n = Number(amount.value);
    if (!amount.value || !Number.isInteger(n) || n === 0) {
      fail("Enter a whole number of credits other than 0 (negative to take credits).", amount);
      return;
    }
    if (reason.value.trim().length < 3) {
      fail("Give a reason of at least 3 characters.", reason);
      return;
    }
    if (user.credit_balance + n < 0) {
      fail(`That would take the balance below zero (it is ${formatNumber(user.credit_balance)}).`,
        amount);
      return;
    }
    // One key per reviewed adjustment: a double click or a retry cannot apply it twice.
    pending = { amount: n, reason: reason.value.trim(), key: window.crypto.randomUUID() };
    showReview();
  });

  function showReview() {
    const verb = pending.amount > 0 ? "add" : "take away";
    const confirm = h("button", { type: "button", class: "button primary", id: "adjust-confirm",
      text: `Confirm: ${formatSigned(pending.amount)} credits` });
    const cancel = h("button", { type: "button", class: "button", text: "Cancel" });
    replace(review,
      h("h3", { id: "adjust-review-title", text: "Check the adjustment" }),
      h("p", {}, `You are about to ${verb} `, h("strong", { text:
        formatNumber(Math.abs(pending.amount)) }), ` credits ${pending.amount > 0 ? "to" : "from"} `,
      h("strong", { text: userLabel(user) }), "."),
      h("p", {}, "Balance: ", formatNumber(user.credit_balance), " → ",
        h("strong", { text: formatNumber(user.credit_balance + pending.amount) })),
      h("p", {}, "Reason: ", h("q", { text: pending.reason })),
      h("div", { class: "actions" }, confirm, cancel));
    review.hidden = false;
    review.setAttribute("role", "group");
    review.setAttribute("aria-labelledby", "adjust-review-title");
    reviewButton.disabled = true;
    amount.readOnly = true;
    reason.readOnly = true;
    cancel.addEventListener("click", () => closeReview(true));
    confirm.addEventListener("click", () => submit(confirm));
    confirm.focus();
  }

  function closeReview(focusForm) {
    review.hidden = true;
    replace(review);
    reviewButton.disabled = false;
    amount.readOnly = false;
    reason.readOnly = false;
    if (focusForm) amount.focus();
  }

  async function submit(button) {
    button.disabled = true;
    button.textContent = "Saving…";
    try {
      const done = await api.post(`${api.ADMIN}/users/${user.id}/credits`,
        { amount: pending.amount, reason: pending.reason }, { "Idempotency-Key": pending.key });
      user.credit_balance = done.balance_after;
      pending = null;
      closeReview(false);
      amount.value = "";
      reason.value = "";
      result.className = "message success";
      replace(result, `Done: ${formatSigned(done.amount)} credits. New balance: `,
        h("strong", { id: "adjust-new-balance", text: formatNumber(done.balance_after) }),
        ` (was ${formatNumber(done.balance_before)}).`);
      result.setAttribute("tabindex", "-1");
      result.focus();
      await onDone(done);
    } catch (err) {
      closeReview(false);
      if (err.status === 401 || err.code === "admin_required") throw err;
      fail(err.code === "negative_balance"
        ? `Not applied: ${err.message}` : `Not applied: ${err.message}`);
    }
  }

  return h("div", {}, form, review, result);
}

/** One user's page: profile, balance, adjustment, payments, ledger, usage, sign-ins, audit. */
export async function userView(ctx) {
  const [userId] = ctx.params;
  const detail = await api.get(`${api.ADMIN}/users/${userId}`);
  const user = detail.user;

  const balance = h("span", { id: "user-balance", text: formatNumber(user.credit_balance) });
  const txBox = h("div", { id: "user-transactions" }, h("p", { class: "muted", text: "Loading…" }));
  const auditBox = h("div", { id: "user-audit" }, h("p", { class: "muted", text: "Loading…" }));
  const activeBox = h("div", { class: "actions" });
  const activeStatus = h("div", { class: "message", role: "status" });

  const txPages = cursorPages("Transaction pages", loadTransactions);
  async function loadTransactions(cursor) {
    try {
      const page = await api.get(`${api.ADMIN}/users/${userId}/transactions`,
        { limit: 20, cursor });
      replace(txBox, transactionsTable(page.items), txPages.pagerFor(page.next_cursor));
    } catch (err) {
      ctx.handleError(err, txBox);
    }
  }

  async function loadAudit() {
    try {
      const page = await api.get(`${api.ADMIN}/audit-log`, { target_user_id: userId, limit: 20 });
      replace(auditBox, auditTable(page.items, "No admin changes to this user yet."));
    } catch (err) {
      ctx.handleError(err, auditBox);
    }
  }

  function renderActivation() {
    const deactivate = !user.is_active ? null : h("button", { type: "button",
      class: "button danger", text: "Deactivate user" });
    const activate = user.is_active ? null : h("button", { type: "button", class: "button",
      text: "Reactivate user" });
    replace(activeBox, deactivate, activate);
    const button = deactivate || activate;
    button.addEventListener("click", async () => {
      const verb = user.is_active ? "deactivate" : "activate";
      const ask = user.is_active
        ? `Deactivate ${userLabel(user)}? They are signed out at once and cannot sign in.`
        : `Let ${userLabel(user)} sign in again?`;
      if (!window.confirm(ask)) return;
      button.disabled = true;
      try {
        const out = await api.post(`${api.ADMIN}/users/${userId}/${verb}`, {});
        Object.assign(user, out.user);
        activeStatus.className = "message success";
        activeStatus.textContent = user.is_active ? "The user is active again."
          : "The user is deactivated.";
        replace(statusCell, user.is_active ? "active" : statusBadge("deactivated"));
        renderActivation();
        await loadAudit();
      } catch (err) {
        if (!ctx.handleError(err, activeStatus)) button.disabled = false;
      }
    });
  }
  const statusCell = h("span", {}, user.is_active ? "active" : statusBadge("deactivated"));
  renderActivation();

  const sub = detail.subscription;
  replace(ctx.root,
    h("p", { class: "crumbs" }, h("a", { href: "#/users", text: "← All users" })),
    h("div", { class: "page-head" }, h("h1", { text: userLabel(user) })),
    h("div", { class: "panels" },
      section("profile-title", "Profile",
        detailList([
          ["Name", user.full_name || "—"],
          ["Username", user.username || "—"],
          ["Email", user.email || "—"],
          ["Phone", user.phone || "—"],
          ["Role", user.role],
          ["Status", statusCell],
          ["Signed up", timeEl(user.created_at)],
          ["Email confirmed", timeEl(user.email_confirmed_at)],
          ["Last login", timeEl(user.last_login_at)],
          ["User id", h("code", { text: user.id })],
        ]),
        activeBox, activeStatus),
      section("balance-title", "Credits",
        detailList([
          ["Balance", balance],
          ["Purchased (all time)", formatNumber(user.credits_purchased)],
          ["Used (all time)", formatNumber(user.credits_used)],
          ["Subscription", sub ? h("span", {}, statusBadge(sub.status),
            sub.current_period_end ? " until " : "", sub.current_period_end
              ? timeEl(sub.current_period_end) : "", sub.cancel_at_period_end
              ? " (cancels at period end)" : "") : "none"],
        ]),
        h("h3", { id: "adjust-title", text: "Adjust credits" }),
        adjustForm(user, {
          onDone: async (done) => {
            balance.textContent = formatNumber(done.balance_after);
            announce(`New balance ${formatNumber(done.balance_after)} credits.`);
            txPages.reset();
            await Promise.all([loadTransactions(null), loadAudit()]);
          },
        })),
      section("user-grants-title", "Credit grants", grantsTable(detail.grants || [])),
      section("user-payments-title", "Payments", paymentsTable(detail.payments)),
      section("user-tx-title", "Transactions", txBox),
      section("user-usage-title", "Recent usage", usageTable(detail.recent_usage)),
      section("user-logins-title", "Recent sign-ins", loginsTable(detail.recent_logins)),
      section("user-audit-title", "Audit log for this user", auditBox)));
  await Promise.all([loadTransactions(null), loadAudit()]);
}
