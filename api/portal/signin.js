// Signing up and signing in with every method the server offers (GET /api/auth/methods):
// password, a link by email, a code by text message, Google.

import { anonymous } from "/ui/api.js";
import { announce, h, inputField, message, replace } from "/ui/dom.js";
import { handleSubmit } from "./forms.js";
import { api } from "./session.js";

const METHOD_LABELS = [
  ["password", "Password"],
  ["magic_link", "Email link"],
  ["phone", "Phone code"],
];

let offered = null;

async function methods() {
  if (!offered) offered = await anonymous("GET", "/api/auth/methods");
  return offered;
}

function explain(err) {
  switch (err.code) {
    case "invalid_credentials": return "The email or password is wrong.";
    case "email_not_confirmed":
      return "Confirm your email address first: open the link we mailed you. "
        + "Or sign in with an email link, which confirms it too.";
    case "email_taken": return "An account with this email exists already. Sign in instead.";
    case "invalid_code": return "The code is wrong. Check the text message and try again.";
    case "code_expired": return "The code has expired. Ask for a new one.";
    default: return err.message;
  }
}

function statusBox() {
  return h("div", { class: "message", role: "status" });
}

function required(...values) {
  if (values.some((v) => !v)) throw new Error("Fill in every field.");
}

const value = (form, id) => form.querySelector(`#${id}`).value.trim();

// --- the sign-in methods ----------------------------------------------------------------

function passwordForm(onSignedIn) {
  const box = statusBox();
  const form = h("form", { class: "stack", id: "password-form", novalidate: true },
    inputField("signin-email", "Email",
      { type: "email", autocomplete: "username", required: true }),
    inputField("signin-password", "Password",
      { type: "password", autocomplete: "current-password", required: true }),
    h("button", { type: "submit", class: "button primary", text: "Sign in" }), box);
  return handleSubmit(form, box, async () => {
    const email = value(form, "signin-email");
    const password = form.querySelector("#signin-password").value;
    required(email, password);
    await api.login(email, password);
    await onSignedIn();
  }, { explain });
}

function magicLinkForm() {
  const box = statusBox();
  const form = h("form", { class: "stack", id: "magic-link-form", novalidate: true },
    inputField("magic-email", "Email", { type: "email", autocomplete: "email", required: true },
      "We mail you a link that signs you in once. Open it in this browser."),
    h("button", { type: "submit", class: "button primary", text: "Email me a link" }), box);
  return handleSubmit(form, box, async () => {
    const email = value(form, "magic-email");
    required(email);
    await anonymous("POST", "/api/auth/magic-link", { email });
    return `If an account uses ${email}, a sign-in link is on its way. Open it to sign in.`;
  }, { explain });
}

function phoneForm(onSignedIn) {
  const box = statusBox();
  const code = inputField("phone-code", "Code", { type: "text", inputmode: "numeric",
    autocomplete: "one-time-code", maxlength: "6" }, "The six digits of the text message.");
  code.hidden = true;
  const submit = h("button", { type: "submit", class: "button primary", text: "Text me a code" });
  const resend = h("button", { type: "button", class: "button", hidden: true,
    text: "Text me a new code" });
  const form = h("form", { class: "stack", id: "phone-form", novalidate: true },
    inputField("phone-number", "Phone number",
      { type: "tel", autocomplete: "tel", required: true },
      "With the country code, like +14155550123. A new number makes a new account."),
    code, h("div", { class: "actions" }, submit, resend), box);
  let sentTo = null;

  async function sendCode(phone) {
    required(phone);
    await anonymous("POST", "/api/auth/otp", { phone });
    sentTo = phone;
    code.hidden = false;
    resend.hidden = false;
    submit.textContent = "Sign in";
    form.querySelector("#phone-code").focus();
    return "A code is on its way. Enter it above.";
  }

  resend.addEventListener("click", () => {
    sentTo = null;
    form.requestSubmit();
  });
  return handleSubmit(form, box, async () => {
    const phone = value(form, "phone-number");
    if (sentTo !== phone) return sendCode(phone);
    const digits = value(form, "phone-code");
    required(digits);
    api.adopt(await anonymous("POST", "/api/auth/otp/verify", { phone, code: digits }));
    await onSignedIn();
    return null;
  }, { explain });
}

function googleButton() {
  // A navigation, not a fetch: Google's consent page comes next, then /auth/google.
  return h("a", { class: "button google", href: "/api/auth/oauth/google/authorize",
    id: "google-sign-in", text: "Continue with Google" });
}

const FORMS = { password: passwordForm, magic_link: magicLinkForm, phone: phoneForm };

function switchLink(id, lead, label, onclick) {
  return h("p", { class: "switch" }, lead,
    h("button", { type: "button", class: "link", id, onclick, text: label }));
}

function signInScreen(root, offer, { onSignedIn, note, showSignUp }) {
  const chosen = METHOD_LABELS.filter(([key]) => offer[key]);
  const holder = h("div", { id: "method-form" });
  const choose = (key) => replace(holder, FORMS[key](onSignedIn));
  // Radio buttons: one Tab stop, the arrow keys move between methods (native behaviour).
  const choices = chosen.length < 2 ? null : h("fieldset", { class: "methods" },
    h("legend", { text: "Sign in with" }),
    chosen.map(([key, label], i) => {
      const id = `method-${key}`;
      return h("span", { class: "method" },
        h("input", { type: "radio", name: "method", id, value: key, checked: i === 0,
          onchange: () => choose(key) }),
        h("label", { for: id, text: label }));
    }));
  replace(root, h("section", { class: "signin", "aria-labelledby": "signin-title" },
    h("h1", { id: "signin-title", tabindex: "-1", text: "Sign in" }),
    note ? message(note.text, note.tone) : null,
    choices, holder,
    offer.google ? h("div", { class: "or" }, h("p", { class: "muted", text: "or" }),
      googleButton()) : null,
    switchLink("show-sign-up", "New here? ", "Create an account", showSignUp)));
  if (chosen.length) choose(chosen[0][0]);
}

// --- sign-up ----------------------------------------------------------------------------

function signUpForm(offer, onSignedIn) {
  const box = statusBox();
  const form = h("form", { class: "stack", id: "sign-up-form", novalidate: true },
    inputField("sign-up-email", "Email", { type: "email", autocomplete: "email", required: true }),
    inputField("sign-up-password", "Password", { type: "password", autocomplete: "new-password",
      required: true, minlength: String(offer.password_min_length) },
    `At least ${offer.password_min_length} characters; not a common password.`),
    inputField("sign-up-name", "Name (optional)", { type: "text", autocomplete: "name" }),
    h("button", { type: "submit", class: "button primary", text: "Create account" }), box);
  return handleSubmit(form, box, async () => {
    const email = value(form, "sign-up-email");
    const password = form.querySelector("#sign-up-password").value;
    required(email, password);
    await anonymous("POST", "/api/auth/register",
      { email, password, full_name: value(form, "sign-up-name") || null });
    if (!offer.email_confirmation_required) {
      await api.login(email, password);
      await onSignedIn();
      return null;
    }
    replace(form, message(`Almost there: we mailed a confirmation link to ${email}. `
      + "Open it, then sign in.", "success"));
    announce("Account created. Check your email for the confirmation link.");
    return null;
  }, { explain });
}

function signUpScreen(root, offer, { onSignedIn, showSignIn }) {
  const others = [offer.phone ? "a phone code" : null, offer.google ? "Google" : null]
    .filter(Boolean);
  replace(root, h("section", { class: "signin", "aria-labelledby": "sign-up-title" },
    h("h1", { id: "sign-up-title", tabindex: "-1", text: "Create an account" }),
    offer.password ? signUpForm(offer, onSignedIn) : null,
    others.length ? h("p", { class: "hint",
      text: `Signing in with ${others.join(" or ")} creates your account the first time.` })
      : null,
    switchLink("show-sign-in", "Have an account? ", "Sign in", showSignIn)));
}

/** Fill `root` with the sign-in screen; `onSignedIn` runs once tokens are kept. */
export async function renderSignIn(root, { onSignedIn, message: note = null }) {
  let offer;
  try {
    offer = await methods();
  } catch (err) {
    replace(root, message(`The server could not be asked how to sign in: ${err.message}`,
      "error"));
    return;
  }
  const focusHeading = () => root.querySelector("h1").focus();
  const showSignIn = () => {
    signInScreen(root, offer, { onSignedIn, showSignUp });
    focusHeading();
  };
  const showSignUp = () => {
    signUpScreen(root, offer, { onSignedIn, showSignIn });
    focusHeading();
  };
  signInScreen(root, offer, { onSignedIn, note, showSignUp });
}

