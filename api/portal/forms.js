// Forms of the portal and its link pages: one way to submit, say the outcome, and explain.

import { announce } from "/ui/dom.js";

/** Show `text` in the status `box` (tone: info, success or error) and announce it. */
export function say(box, text, tone = "info") {
  box.className = `message ${tone}`;
  box.textContent = text;
  if (text) announce(text);
}

/**
 * On submit, run `work(form)` with the submit button disabled; the text it returns (if any)
 * is shown as a success in `box`, an error as `explain(err)`. `intercept(err)` may take an
 * error over (a 401 going back to sign-in) by returning true.
 */
export function handleSubmit(form, box, work, { explain = (err) => err.message,
  intercept = () => false } = {}) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    say(box, "");
    try {
      const text = await work(form);
      if (text) say(box, text, "success");
    } catch (err) {
      if (!intercept(err)) say(box, explain(err), "error");
    } finally {
      button.disabled = false;
    }
  });
  return form;
}
