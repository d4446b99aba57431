// The session and the REST client. Tokens live in sessionStorage (this tab only, gone when it
// closes) and never in a URL. The access token is refreshed a little before it expires; a request
// answered 401 refreshes once and retries; a session that cannot be refreshed ends, and the
// console returns to the sign-in page, remembering where the user was.

const KEY = "mkww.session";
const listeners = new Set();
let session = load();
let refreshTimer = null;
let refreshing = null;

function load() {
  try {
    return JSON.parse(sessionStorage.getItem(KEY) || "null");
  } catch {
    return null;
  }
}

function store(next) {
  session = next;
  if (next) sessionStorage.setItem(KEY, JSON.stringify(next));
  else sessionStorage.removeItem(KEY);
  schedule();
  for (const fn of listeners) fn(session);
}

export function current() {
  return session;
}

export function onSession(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

/** An API failure: the API's code, message and request id, as the user should see them. */
export class ApiFailure extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `HTTP ${status}`);
    this.status = status;
    this.code = e.code || "http_" + status;
    this.requestId = e.request_id || null;
  }
}

function schedule() {
  clearTimeout(refreshTimer);
  if (!session) return;
  // Refresh at 80 % of the token's life, and at least 5 s before it ends.
  const left = session.expires_at - Date.now();
  const wait = Math.max(1000, Math.min(left * 0.8, left - 5000));
  refreshTimer = setTimeout(() => refresh().catch(() => {}), wait);
}

async function tokens(path, body) {
  const res = await fetch(path, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const json = await res.json().catch(() => null);
  if (!res.ok) throw new ApiFailure(res.status, json);
  return json;
}

function keep(t, who) {
  return {
    access_token: t.access_token,
    refresh_token: t.refresh_token,
    expires_at: Date.now() + t.expires_in * 1000,
    subject: who.subject,
    role: who.role,
  };
}

export async function signIn(username, password) {
  const t = await tokens("/v1/auth/login", { username, password });
  const who = await raw("GET", "/v1/auth/me", undefined, t.access_token);
  store(keep(t, who));
}

/** A new access token; concurrent callers share one refresh (each refresh token works once). */
export function refresh() {
  if (!session) return Promise.reject(new Error("signed out"));
  if (!refreshing) {
    const old = session;
    refreshing = tokens("/v1/auth/refresh", { refresh_token: old.refresh_token })
      .then((t) => store(keep(t, old)))
      .catch((e) => {
        if (e instanceof ApiFailure) store(null);
        throw e;
      })
      .finally(() => (refreshing = null));
  }
  return refreshing;
}

export async function signOut() {
  const old = session;
  store(null);
  if (old) {
    await fetch("/v1/auth/logout", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ refresh_token: old.refresh_token }),
    }).catch(() => {});
  }
}

async function raw(method, path, body, token) {
  const headers = { authorization: "Bearer " + token };
  if (body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (res.status === 204) return null;
  const json = await res.json().catch(() => null);
  if (!res.ok) throw new ApiFailure(res.status, json);
  return json;
}

/** Calls the API as the signed-in user. */
export async function api(method, path, body) {
  if (!session) throw new ApiFailure(401, { error: { code: "unauthenticated", message: "signed out" } });
  try {
    return await raw(method, path, body, session.access_token);
  } catch (e) {
    if (!(e instanceof ApiFailure) || e.status !== 401) throw e;
    await refresh();
    return raw(method, path, body, session.access_token);
  }
}

export const get = (path) => api("GET", path);
export const post = (path, body) => api("POST", path, body ?? {});

/** The API's paths, from its OpenAPI document (which pages of optional features to show). */
let paths = null;
export async function documented(path) {
  if (!paths) {
    paths = fetch("/openapi.json")
      .then((r) => r.json())
      .then((doc) => new Set(Object.keys(doc.paths || {})))
      .catch(() => new Set());
  }
  return (await paths).has(path);
}

schedule();
