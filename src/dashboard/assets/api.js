// The signed-in admin's session: tokens live in this object only (never in storage or cookies),
// the access token is refreshed a minute before it expires, and every API call goes through
// `call`, which refreshes once and retries when the server says the token expired.

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.code = body && body.code;
  }
}

/** Refresh this long before the access token expires. */
const REFRESH_MARGIN_MS = 60_000;

export class Session {
  constructor({ onEnded, onForbidden }) {
    this.access = null;
    this.refreshToken = null;
    this.expiresAt = 0;
    this.user = null;
    this.timer = 0;
    this.refreshing = null;
    this.onEnded = onEnded;
    this.onForbidden = onForbidden;
  }

  get signedIn() {
    return this.access !== null;
  }

  async login(email, password) {
    const body = await request("/api/auth/login", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ email, password }),
    });
    this.user = body.user;
    this.adopt(body);
    return body.user;
  }

  adopt(tokens) {
    this.access = tokens.accessToken;
    this.refreshToken = tokens.refreshToken;
    this.expiresAt = Number(tokens.expiresAt) || Date.now() + Number(tokens.expiresIn) * 1000;
    clearTimeout(this.timer);
    const wait = Math.max(5_000, this.expiresAt - Date.now() - REFRESH_MARGIN_MS);
    this.timer = setTimeout(() => this.refresh().catch(() => {}), wait);
  }

  /** One refresh at a time: a rotated refresh token presented twice would end the session. */
  refresh() {
    if (!this.refreshing) {
      const presented = this.refreshToken;
      this.refreshing = request("/api/auth/refresh", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ refreshToken: presented }),
      })
        .then((body) => {
          if (this.refreshToken === presented) this.adopt(body.data || body);
        })
        .catch((error) => {
          if (error instanceof ApiError && error.status === 401) {
            this.clear();
            this.onEnded("Your session ended. Please sign in again.");
          }
          throw error;
        })
        .finally(() => {
          this.refreshing = null;
        });
    }
    return this.refreshing;
  }

  /** Revokes this session on the server (best effort) and forgets the tokens. */
  async logout() {
    const access = this.access;
    const refreshToken = this.refreshToken;
    this.clear();
    if (!access) return;
    try {
      await request("/api/auth/logout", {
        method: "POST",
        headers: { "Content-Type": "application/json", Authorization: `Bearer ${access}` },
        body: JSON.stringify({ refreshToken }),
      });
    } catch {
      // The tokens are gone from memory either way; the server expires them on its own.
    }
  }

  clear() {
    clearTimeout(this.timer);
    this.access = null;
    this.refreshToken = null;
    this.user = null;
  }

  authHeaders(extra = {}) {
    return { ...extra, Authorization: `Bearer ${this.access}` };
  }

  /** An authenticated JSON call. */
  async call(path, options = {}) {
    if (!this.signedIn) throw new ApiError(401, { message: "Not signed in" });
    const attempt = () =>
      request(path, { ...options, headers: this.authHeaders(options.headers || {}) });
    try {
      return await attempt();
    } catch (error) {
      if (error instanceof ApiError && error.status === 401 && this.refreshToken) {
        await this.refresh();
        return attempt();
      }
      if (error instanceof ApiError && error.status === 403) this.onForbidden();
      throw error;
    }
  }
}

async function request(path, options) {
  const response = await fetch(path, { cache: "no-store", credentials: "omit", ...options });
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

/** `/health` needs no token. */
export const health = () => request("/health", {});
