// Profile: name and other details, the email address (a change needs the password or a
// recent sign-in, and is confirmed by a link to the new address), the phone number (a change
// is pending until its code comes back), and signing out everywhere.

import { announce, h, inputField, message, replace } from "/ui/dom.js";
import { handleSubmit } from "../forms.js";

/** A form whose submit runs `work(form)`; the outcome (or the error) goes in its status box. */
function form(ctx, id, children, work) {
  const status = h("div", { class: "message", role: "status", id: `${id}-status` });
  const node = h("form", { class: "stack", id, novalidate: true }, children, status);
  return handleSubmit(node, status, work, {
    explain,
    intercept: (err) => err.status === 401 && ctx.handleError(err, status),
  });
}

function explain(err) {
  switch (err.code) {
    case "invalid_current_password": return "The current password is wrong.";
    case "reauthentication_required":
      return "For your safety, sign in again (an email link or phone code will do), "
        + "then change the address within a few minutes.";
    case "invalid_code": return "The code is wrong. Check the text message and try again.";
    case "code_expired": return "The code has expired. Enter the number again for a new one.";
    case "phone_taken": return "This number signs in to another account.";
    case "username_taken": return "This username is taken.";
    default: return err.message;
  }
}

const value = (node, id) => node.querySelector(`#${id}`).value.trim();

function detailsForm(ctx, me) {
  return form(ctx, "details-form", [
    inputField("profile-name", "Name",
      { type: "text", autocomplete: "name", value: me.full_name || "" }),
    inputField("profile-username", "Username", { type: "text", autocomplete: "nickname",
      value: me.username || "", spellcheck: "false" }, "3 to 32 of a–z, 0–9, _ . -"),
    inputField("profile-bio", "About you", { rows: "3", text: me.bio || "" }),
    h("button", { type: "submit", class: "button primary", text: "Save details" }),
  ], async (node) => {
    const changes = {};
    const next = { full_name: value(node, "profile-name"),
      username: value(node, "profile-username"), bio: value(node, "profile-bio") };
    for (const [key, v] of Object.entries(next)) {
      if (v !== (me[key] || "")) changes[key] = v || null;
    }
    if (!Object.keys(changes).length) return "Nothing to save.";
    Object.assign(me, await ctx.api.put(`${ctx.API}/profile`, changes));
    return "Saved.";
  });
}

function emailSection(ctx, me) {
  const pending = me.pending_email ? message(`Waiting for confirmation: we mailed a link to `
    + `${me.pending_email}. The change is made when it is opened.`, "info") : null;
  const password = me.has_password
    ? inputField("email-password", "Current password", { type: "password",
      autocomplete: "current-password" })
    : h("p", { class: "hint", text: "Your account has no password: the change needs a sign-in "
      + "of the last few minutes." });
  const changeForm = form(ctx, "email-form", [
    inputField("email-new", "New email", { type: "email", autocomplete: "email" }),
    password,
    h("button", { type: "submit", class: "button primary", text: "Change email" }),
  ], async (node) => {
    const email = value(node, "email-new");
    if (!email) throw new Error("Enter the new email address.");
    const body = { email };
    if (me.has_password) {
      body.current_password = node.querySelector("#email-password").value;
      if (!body.current_password) throw new Error("Enter your current password to change it.");
    }
    const updated = await ctx.api.put(`${ctx.API}/profile`, body);
    Object.assign(me, updated);
    node.reset();
    return `Check ${email}: open the link we mailed there to finish the change. `
      + "Your old address gets a note with a link to undo it.";
  });
  return h("section", { class: "panel", "aria-labelledby": "email-title" },
    h("h2", { id: "email-title", text: "Email address" }),
    h("p", { id: "current-email" }, me.email || "No email address yet",
      me.email ? ` (${me.email_confirmed ? "confirmed" : "not confirmed yet"})` : ""),
    pending, changeForm);
}

function phoneSection(ctx, me) {
  const verify = form(ctx, "phone-verify-form", [
    inputField("phone-verify-code", "Code", { type: "text", inputmode: "numeric",
      autocomplete: "one-time-code", maxlength: "6" },
    `The six digits texted to ${me.pending_phone || "the new number"}.`),
    h("button", { type: "submit", class: "button primary", text: "Confirm number" }),
  ], async (node) => {
    Object.assign(me, await ctx.api.post(`${ctx.API}/profile/phone/verify`,
      { code: value(node, "phone-verify-code") }));
    await render(ctx);
    announce("Phone number confirmed.");
    return null;
  });
  verify.hidden = !me.pending_phone;
  const change = form(ctx, "phone-form", [
    inputField("phone-new", "New phone number", { type: "tel", autocomplete: "tel" },
      "With the country code, like +14155550123. We text it a code."),
    h("button", { type: "submit", class: "button primary", text: "Change number" }),
  ], async (node) => {
    const phone = value(node, "phone-new");
    if (!phone) throw new Error("Enter the new phone number.");
    Object.assign(me, await ctx.api.put(`${ctx.API}/profile`, { phone }));
    verify.hidden = false;
    verify.querySelector(".hint").textContent = `The six digits texted to ${me.pending_phone}.`;
    verify.querySelector("input").focus();
    return "A code is on its way to the new number. Enter it below.";
  });
  return h("section", { class: "panel", "aria-labelledby": "phone-title" },
    h("h2", { id: "phone-title", text: "Phone number" }),
    h("p", { id: "current-phone" }, me.phone || "No phone number",
      me.phone ? ` (${me.phone_confirmed ? "confirmed" : "not confirmed"})` : ""),
    change, verify);
}

function securitySection(ctx) {
  const status = h("div", { class: "message", role: "status" });
  const button = h("button", { type: "button", class: "button danger", id: "sign-out-everywhere",
    text: "Sign out everywhere" });
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      await ctx.api.post("/api/auth/logout-everywhere");
      ctx.signedOut("You are signed out on every device, this one too.");
    } catch (err) {
      button.disabled = false;
      ctx.handleError(err, status);
    }
  });
  return h("section", { class: "panel", "aria-labelledby": "security-title" },
    h("h2", { id: "security-title", text: "Sign-ins" }),
    h("p", { text: "Lost a device, or signed in somewhere you should not have? End every "
      + "sign-in of your account at once; you then sign in again here." }),
    h("div", { class: "actions" }, button), status);
}

async function render(ctx) {
  const me = await ctx.refreshMe();
  replace(ctx.root, h("div", { class: "page-head" }, h("h1", { text: "Profile" })),
    h("div", { class: "panels" },
      h("section", { class: "panel", "aria-labelledby": "details-title" },
        h("h2", { id: "details-title", text: "Your details" }), detailsForm(ctx, me)),
      emailSection(ctx, me), phoneSection(ctx, me), securitySection(ctx)));
}

export default { id: "profile", title: "Profile", render };
