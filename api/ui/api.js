// Talking to the API: sign-in, token refresh, JSON requests with errors in the API's shape.
// Shared by the admin dashboard and the customer portal; each page makes its own client
// (`createClient(storageKey)`), so an admin session and a customer session never mix.
// Tokens live in sessionStorage (gone when the tab closes) and in memory; never in a URL.

/** An error answered by the API: `status`, `code` and the server's message. */
export class ApiError extends Error {
  constructor(status, code, message, details = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
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

async function send(method, path, { body, headers = {}, token, credentials = "omit" } = {}) {
  const init = { method, headers: { Accept: "application/json", ...headers },
    credentials, cache: "no-store" };
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

async function json(response) {
  return response.status === 204 ? null : response.json();
}

/**
 * A request without a token (sign-up, sign-in methods, links from mails).
 * `credentials: "same-origin"` only where a cookie is part of the flow (Google's state).
 */
export async function anonymous(method, path, body, { credentials } = {}) {
  return json(await send(method, path, { body, credentials }));
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

function fromTokenResponse(body) {
  return {
    access: body.access_token,
    refresh: body.refresh_token,
    // Renew a little before expiry so a request never leaves with a dead token.
    renewAt: Date.now() + Math.max(5, body.expires_in - 30) * 1000,
  };
}

/** A signed-in client whose tokens are kept in sessionStorage under `storageKey`. */
export function createClient(storageKey) {
  let tokens = readStored();
  let refreshing = null;

  function readStored() {
    try {
      const raw = window.sessionStorage.getItem(storageKey);
      return raw ? JSON.parse(raw) : null;
    } catch {
      return null;
    }
  }

  function store(value) {
    tokens = value;
    try {
      if (value) window.sessionStorage.setItem(storageKey, JSON.stringify(value));
      else window.sessionStorage.removeItem(storageKey);
    } catch {
      // Without storage the tokens still live in memory for this page.
    }
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

  return {
    /** Sign in with email and password; keeps the tokens. */
    async login(email, password) {
      const response = await send("POST", "/api/auth/login", { body: { email, password } });
      store(fromTokenResponse(await response.json()));
    },

    /** Keep the token pair another sign-in method answered (magic link, phone, Google). */
    adopt(tokenResponse) {
      store(fromTokenResponse(tokenResponse));
    },

    /** Forget the tokens locally and revoke them on the server (best effort). */
    async logout() {
      const current = tokens;
      store(null);
      if (!current) return;
      try {
        await send("POST", "/api/auth/logout",
          { body: { refresh_token: current.refresh }, token: current.access });
      } catch {
        // Already expired or unreachable: nothing more to revoke from here.
      }
    },

    /** Forget the tokens locally (the server already ended the session). */
    forget() {
      store(null);
    },

    hasSession() {
      return Boolean(tokens);
    },

    /** GET JSON with the signed-in user's token. */
    async get(path, query) {
      return (await authorized("GET", withQuery(path, query))).json();
    },

    /** POST JSON with the signed-in user's token; returns the parsed answer. */
    async post(path, body, headers) {
      return json(await authorized("POST", path, { body, headers }));
    },

    /** PUT JSON with the signed-in user's token; returns the parsed answer. */
    async put(path, body) {
      return json(await authorized("PUT", path, { body }));
    },

    /** DELETE with the signed-in user's token; returns the parsed answer. */
    async del(path) {
      return json(await authorized("DELETE", path, {}));
    },

    /** GET a file with the signed-in user's token, as a Blob. */
    async getBlob(path, query) {
      const response = await authorized("GET", withQuery(path, query),
        { headers: { Accept: "text/csv" } });
      return response.blob();
    },
  };
}
