// Talking to the API: sign-in, token refresh, JSON requests with errors in the API's shape.
// Tokens live in sessionStorage (gone when the tab closes) and in memory; never in a URL.

const STORAGE_KEY = "billing-admin-session";
export const ADMIN = "/api/user-management/admin";

let tokens = readStored();
let refreshing = null;

function readStored() {
  try {
    const raw = window.sessionStorage.getItem(STORAGE_KEY);
    return raw ? JSON.parse(raw) : null;
  } catch {
    return null;
  }
}

function store(value) {
  tokens = value;
  try {
    if (value) window.sessionStorage.setItem(STORAGE_KEY, JSON.stringify(value));
    else window.sessionStorage.removeItem(STORAGE_KEY);
  } catch {
    // Without storage the tokens still live in memory for this page.
  }
}

/** An error answered by the API: `status`, `code` and the server's message. */
export class ApiError extends Error {
  constructor(status, code, message, details = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

function fromTokenResponse(body) {
  return {
    access: body.access_token,
    refresh: body.refresh_token,
    // Renew a little before expiry so a request never leaves with a dead token.
    renewAt: Date.now() + Math.max(5, body.expires_in - 30) * 1000,
  };
}

async function parseError(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // Not JSON (a proxy's page): the status says enough.
  }
  const err = body && body.error ? body.error : {};
  const { code = `http_${response.status}`, message, ...details } = err;
  return new ApiError(response.status, code,
    message || `The server answered ${response.status} ${response.statusText}`, details);
}

async function send(method, path, { body, headers = {}, token } = {}) {
  const init = { method, headers: { Accept: "application/json", ...headers },
    credentials: "omit", cache: "no-store" };
  if (token) init.headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, "network_error", "The server could not be reached. Try again.");
  }
  if (!response.ok) throw await parseError(response);
  return response;
}

/** Sign in with email and password; keeps the tokens. */
export async function login(email, password) {
  const response = await send("POST", "/api/auth/login", { body: { email, password } });
  store(fromTokenResponse(await response.json()));
}

/** Forget the tokens locally and revoke them on the server (best effort). */
export async function logout() {
  const current = tokens;
  store(null);
  if (!current) return;
  try {
    await send("POST", "/api/auth/logout",
      { body: { refresh_token: current.refresh }, token: current.access });
  } catch {
    // Already expired or unreachable: nothing more to revoke from here.
  }
}

export function hasSession() {
  return Boolean(tokens);
}

async function refresh() {
  if (!refreshing) {
    const current = tokens;
    refreshing = send("POST", "/api/auth/refresh", { body: { refresh_token: current.refresh } })
      .then(async (response) => store(fromTokenResponse(await response.json())))
      .catch((err) => {
        store(null);
        throw err;
      })
      .finally(() => { refreshing = null; });
  }
  return refreshing;
}

async function authorized(method, path, options) {
  if (!tokens) throw new ApiError(401, "not_authenticated", "Please sign in.");
  if (Date.now() >= tokens.renewAt) await refresh();
  try {
    return await send(method, path, { ...options, token: tokens.access });
  } catch (err) {
    // The access token may have been revoked or expired early: renew once and retry.
    if (err.status === 401 && tokens) {
      await refresh();
      return send(method, path, { ...options, token: tokens.access });
    }
    throw err;
  }
}

function withQuery(path, query) {
  if (!query) return path;
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) {
    if (value !== null && value !== undefined && value !== "") params.set(key, String(value));
  }
  const qs = params.toString();
  return qs ? `${path}?${qs}` : path;
}

/** GET JSON with the signed-in user's token. */
export async function get(path, query) {
  return (await authorized("GET", withQuery(path, query))).json();
}

/** POST JSON with the signed-in user's token; returns the parsed answer. */
export async function post(path, body, headers) {
  const response = await authorized("POST", path, { body, headers });
  return response.status === 204 ? null : response.json();
}

/** GET a file with the signed-in user's token, as a Blob. */
export async function getBlob(path, query) {
  const response = await authorized("GET", withQuery(path, query),
    { headers: { Accept: "text/csv" } });
  return response.blob();
}
