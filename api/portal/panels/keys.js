// API keys: for a server that spends this account's credits (POST /credits/use, holds,
// batches of metered events) without a signed-in person. A key's secret is shown once, when
// it is made; afterwards only its first characters, to tell keys apart. Revoking a key
// stops it at its next request.

import {
  announce, badge, formatNumber, formatTime, h, inputField, message, replace, table,
} from "/ui/dom.js";
import { handleSubmit } from "../forms.js";

const SCOPES = [
  ["credits:read", "Read the balance"],
  ["credits:spend", "Spend credits and hold them"],
  ["events:write", "Send metered events"],
];

function explain(err) {
  switch (err.code) {
    case "too_many_keys": return "You have as many keys as allowed. Revoke one first.";
    case "validation_error": return "Check the name, the permissions and the limits.";
    default: return err.message;
  }
}

function limitValue(node, id) {
  const raw = node.querySelector(`#${id}`).value.trim();
  if (!raw) return null;
  const n = Number(raw);
  if (!Number.isInteger(n) || n <= 0) throw new Error("A limit is a whole number of credits above 0.");
  return n;
}

/** The secret, once: in a read-only field the user can select or copy. */
function secretBox(made) {
  const field = h("input", { id: "new-key-secret", type: "text", readonly: true,
    value: made.secret, spellcheck: "false", autocomplete: "off",
    "aria-describedby": "new-key-hint" });
  const status = h("span", { class: "muted", role: "status" });
  const copy = h("button", { type: "button", class: "button", text: "Copy" });
  copy.addEventListener("click", async () => {
    field.select();
    try {
      await navigator.clipboard.writeText(made.secret);
      status.textContent = "Copied.";
    } catch {
      status.textContent = "Select the key and copy it.";
    }
  });
  return h("div", { class: "stack message success", id: "new-key" },
    h("h3", { text: `Your new key "${made.name}"` }),
    h("p", { id: "new-key-hint", text: "Copy it now: it is shown this once. We keep only a "
      + "fingerprint of it, so it cannot be shown again." }),
    h("label", { for: "new-key-secret", class: "visually-hidden", text: "The new key" }),
    field, h("div", { class: "actions" }, copy, status));
}

function createForm(ctx, onMade) {
  const status = h("div", { class: "message", role: "status", id: "key-form-status" });
  const scopes = h("fieldset", { class: "stack" }, h("legend", { text: "It may" }),
    SCOPES.map(([scope, label], i) => h("span", { class: "choice" },
      h("input", { type: "checkbox", id: `key-scope-${i}`, value: scope,
        checked: scope !== "credits:read" }),
      h("label", { for: `key-scope-${i}`, text: label }))));
  const node = h("form", { class: "stack", id: "key-form", novalidate: true },
    inputField("key-name", "Name", { type: "text", maxlength: "100", autocomplete: "off" },
      "Where it is used, like “production server”."),
    scopes,
    inputField("key-daily", "Daily limit (credits, optional)",
      { type: "number", min: "1", step: "1", inputmode: "numeric" }),
    inputField("key-monthly", "Monthly limit (credits, optional)",
      { type: "number", min: "1", step: "1", inputmode: "numeric" }),
    h("button", { type: "submit", class: "button primary", text: "Create key" }),
    status);
  return handleSubmit(node, status, async (form) => {
    const name = form.querySelector("#key-name").value.trim();
    if (!name) throw new Error("Give the key a name.");
    const chosen = [...form.querySelectorAll("input[type=checkbox]:checked")].map((i) => i.value);
    if (!chosen.length) throw new Error("Choose at least one thing the key may do.");
    const made = await ctx.api.post(`${ctx.API}/api-keys`, {
      name, scopes: chosen,
      daily_limit: limitValue(form, "key-daily"), monthly_limit: limitValue(form, "key-monthly"),
    });
    form.reset();
    onMade(made);
    return null;
  }, { explain, intercept: (err) => err.status === 401 && ctx.handleError(err, status) });
}

function limits(key) {
  const parts = [];
  if (key.daily_limit) parts.push(`${formatNumber(key.daily_limit)} a day`);
  if (key.monthly_limit) parts.push(`${formatNumber(key.monthly_limit)} a month`);
  return parts.length ? parts.join(", ") : "none";
}

function keysTable(ctx, keys, status, reload) {
  return table({
    caption: "Your API keys",
    empty: "No keys yet.",
    columns: [
      { label: "Name", cell: (k) => k.name },
      { label: "Key", cell: (k) => h("code", { text: `${k.prefix}…` }) },
      { label: "May", cell: (k) => k.scopes.join(", ") },
      { label: "Limits", cell: limits },
      { label: "Last used", cell: (k) => (k.last_used_at ? formatTime(k.last_used_at) : "never") },
      { label: "State", cell: (k) => (k.revoked_at ? badge("revoked", "neutral")
        : badge(k.server ? "server key" : "active", "success")) },
      { label: "", cell: (k) => (k.revoked_at ? "" : h("button", {
        type: "button", class: "button danger", text: "Revoke",
        "aria-label": `Revoke the key ${k.name}`,
        onclick: async (event) => {
          if (!window.confirm(`Revoke "${k.name}"? Servers using it stop at once.`)) return;
          event.currentTarget.disabled = true;
          try {
            await ctx.api.del(`${ctx.API}/api-keys/${encodeURIComponent(k.id)}`);
            announce(`Key ${k.name} revoked.`);
            await reload();
          } catch (err) {
            ctx.handleError(err, status);
          }
        },
      })) },
    ],
    rows: keys,
  });
}

async function render(ctx) {
  const listBox = h("div", { id: "keys-list" });
  const secretSlot = h("div", { "aria-live": "polite" });
  const status = h("div", { class: "message", role: "status" });
  const reload = async () => {
    replace(listBox, keysTable(ctx, await ctx.api.get(`${ctx.API}/api-keys`), status, reload));
  };
  const form = createForm(ctx, async (made) => {
    replace(secretSlot, secretBox(made));
    secretSlot.querySelector("input").focus();
    announce("Key created. Copy it now: it is shown this once.");
    await reload();
  });
  replace(ctx.root,
    h("div", { class: "page-head" }, h("h1", { text: "API keys" })),
    h("div", { class: "panels" },
      h("section", { class: "panel", "aria-labelledby": "keys-new-title" },
        h("h2", { id: "keys-new-title", text: "New key" }),
        h("p", { class: "hint", text: "Your servers send it as “Authorization: Bearer bk_…”. "
          + "A limit caps what the key can spend, whatever the balance." }),
        secretSlot, form),
      h("section", { class: "panel", "aria-labelledby": "keys-list-title" },
        h("h2", { id: "keys-list-title", text: "Your keys" }), status, listBox)));
  await reload();
}

export default { id: "keys", title: "API keys", render };
