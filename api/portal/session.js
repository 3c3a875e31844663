// The portal's API client (its own session, apart from the admin dashboard's) and the
// purchase a Stripe redirect will come back about.

import { createClient } from "/ui/api.js";

export const API = "/api/user-management";
export const api = createClient("billing-account-session");

const PENDING_KEY = "billing-pending-purchase";

/** Remember what a redirect to Stripe Checkout is paying for (this tab only). */
export function rememberPending(value) {
  try {
    window.sessionStorage.setItem(PENDING_KEY, JSON.stringify(value));
  } catch {
    // Without storage the success page shows the latest payment instead.
  }
}

/** What the last redirect to Checkout was for, forgotten once read; null if nothing. */
export function takePending() {
  try {
    const raw = window.sessionStorage.getItem(PENDING_KEY);
    window.sessionStorage.removeItem(PENDING_KEY);
    return raw ? JSON.parse(raw) : null;
  } catch {
    return null;
  }
}
