// The admin API as the page calls it: the session cookie goes by itself (HttpOnly: this
// script never sees it); the CSRF token, kept only in this object's memory, goes as a
// header on every call that may change something.

export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export class Api {
  constructor(onSignedOut) {
    this.csrf = null;
    this.identity = null;
    this.onSignedOut = onSignedOut;
  }

  async resume() {
    const answer = await this.#call("GET", "/admin/ui/session", undefined, false);
    this.#signedIn(answer);
  }

  async signIn(token) {
    this.#signedIn(await this.#call("POST", "/admin/ui/session", { token }, false));
  }

  async signOut() {
    try {
      await this.#call("DELETE", "/admin/ui/session", undefined, false);
    } finally {
      this.csrf = null;
      this.identity = null;
    }
  }

  get(path, query = {}) {
    const params = new URLSearchParams();
    for (const [name, value] of Object.entries(query)) {
      if (value !== null && value !== undefined && value !== "") params.set(name, value);
    }
    const search = params.toString();
    return this.#call("GET", "/admin/v1" + path + (search ? "?" + search : ""));
  }

  post(path, body) {
    return this.#call("POST", "/admin/v1" + path, body);
  }

  #signedIn(answer) {
    this.csrf = answer.csrf_token;
    this.identity = answer.identity;
  }

  async #call(method, url, body, signOutOn401 = true) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (method !== "GET" && this.csrf) headers["X-CSRF-Token"] = this.csrf;
    const response = await fetch(url, {
      method, headers, credentials: "same-origin", cache: "no-store", redirect: "error",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    let parsed = null;
    try {
      parsed = text ? JSON.parse(text) : null;
    } catch {
      parsed = null;
    }
    if (!response.ok) {
      const error = parsed && parsed.error ? parsed.error : {};
      if (response.status === 401 && signOutOn401) this.onSignedOut();
      throw new ApiError(response.status, error.message || response.statusText, error.code || null);
    }
    return parsed;
  }
}

// Every page of a list route, COUNT items at most (the UI shows the first ones only).
export async function allPages(api, path, query = {}, count = 1000) {
  const items = [];
  let cursor = null;
  do {
    const page = await api.get(path, { ...query, limit: 100, cursor });
    items.push(...page.data);
    cursor = page.next_cursor;
  } while (cursor && items.length < count);
  return items;
}
