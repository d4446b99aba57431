/**
 * The REST client: every route of the hub, typed from its OpenAPI document
 * (`src/generated/openapi.ts`), with the hub's errors as `McpError` and access tokens refreshed
 * before they expire (and once more on a 401 `token_expired`).
 */

import { McpError, type ErrorDetail } from "./errors.js";
import type { components, paths } from "./generated/openapi.js";

/** The hub's schemas by name: `Schemas["Task"]`, `Schemas["CreateTask"]`, … */
export type Schemas = components["schemas"];
export type Task = Schemas["Task"];
export type CreateTask = Schemas["CreateTask"];
export type TaskStatus = Schemas["TaskStatus"];

type Method = "get" | "post" | "put" | "patch" | "delete";

/** The paths that answer `M`. */
export type PathsWith<M extends Method> = {
  [P in keyof paths]: paths[P] extends Record<M, infer O> ? ([O] extends [never | undefined] ? never : P) : never;
}[keyof paths];

type Operation<P extends keyof paths, M extends Method> = NonNullable<paths[P][M]>;

type JsonOf<R> = R extends { content: { "application/json": infer J } } ? J : undefined;

/** What a route answers on success (2xx). */
export type ResponseOf<P extends keyof paths, M extends Method> =
  Operation<P, M> extends { responses: infer R }
    ? { [S in keyof R]: S extends 200 | 201 | 202 | 204 ? JsonOf<R[S]> : never }[keyof R]
    : unknown;

type BodyOf<O> = O extends { requestBody?: { content: { "application/json": infer B } } } ? B : never;
type PathParamsOf<O> = O extends { parameters: { path?: infer A } } ? NonNullable<A> : never;
type QueryOf<O> = O extends { parameters: { query?: infer Q } } ? NonNullable<Q> : never;

/** The parts of one call: path parameters, query, JSON body, extra headers. */
export interface CallOptions<O = unknown> {
  path?: [PathParamsOf<O>] extends [never] ? Record<string, string | number> : PathParamsOf<O>;
  query?: [QueryOf<O>] extends [never] ? Record<string, unknown> : QueryOf<O>;
  body?: [BodyOf<O>] extends [never] ? unknown : BodyOf<O>;
  headers?: Record<string, string>;
  signal?: AbortSignal;
}

/** A login session's tokens, as `POST /v1/auth/login` and `/v1/auth/refresh` give them. */
export interface Tokens {
  accessToken: string;
  refreshToken: string;
  /** When the access token expires (ms since the epoch). */
  expiresAt: number;
}

export interface ClientOptions {
  /** The hub, e.g. `http://127.0.0.1:8080`. */
  baseUrl: string;
  /** An API key (services, bots, workers): sent as is, never refreshed. */
  apiKey?: string;
  /** An access token, e.g. from `mkww-mcp token`; with `refreshToken`, refreshed when due. */
  accessToken?: string;
  /** The refresh token of a login session; each one works once, the client keeps the newest. */
  refreshToken?: string;
  /** Seconds until `accessToken` expires (`expires_in`); read from the token when omitted. */
  expiresIn?: number;
  /** Called with the new tokens after every login and refresh: persist the refresh token here. */
  onTokens?: (tokens: Tokens) => void;
  /** Refresh this long before expiry (default 30 s, at most half the token's lifetime). */
  refreshMarginMs?: number;
  /** Headers sent on every call (e.g. `x-request-id` is set per call through `headers`). */
  headers?: Record<string, string>;
  /** Another `fetch` (tests, proxies); the global one by default. */
  fetch?: typeof fetch;
}

const DEFAULT_REFRESH_MARGIN_MS = 30_000;

/**
 * One hub, one credential. Typed calls by path (`client.get("/v1/tasks/{id}", { path: { id } })`)
 * and shortcuts for the common ones (`createTask`, `getTask`, `waitForTask`, …).
 */
export class McpClient {
  readonly baseUrl: string;
  private readonly options: ClientOptions;
  private readonly fetchImpl: typeof fetch;
  private tokens: { access?: string; refresh?: string; expiresAt?: number; lifetimeMs?: number };
  private refreshing: Promise<void> | undefined;

  constructor(options: ClientOptions) {
    this.options = options;
    this.baseUrl = options.baseUrl.replace(/\/+$/, "");
    this.fetchImpl = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.tokens = {};
    if (options.accessToken !== undefined) {
      this.setAccess(options.accessToken, options.expiresIn);
    }
    this.tokens.refresh = options.refreshToken;
  }

  /** Logs in with a username and password and returns a client that keeps its session fresh. */
  static async login(
    options: Omit<ClientOptions, "apiKey" | "accessToken" | "refreshToken" | "expiresIn"> & {
      username: string;
      password: string;
    },
  ): Promise<McpClient> {
    const { username, password, ...rest } = options;
    const client = new McpClient(rest);
    const reply = await client.send("POST", "/v1/auth/login", { body: { username, password } }, false);
    client.takeTokens(reply as Schemas["TokenResponse"]);
    return client;
  }

  /**
   * A credential for the WebSocket's `auth` frame: the API key, or a current access token
   * (refreshed first when it is due, or always with `fresh`).
   */
  async credential(options: { fresh?: boolean } = {}): Promise<string> {
    if (this.options.apiKey !== undefined) {
      return this.options.apiKey;
    }
    const due = options.fresh === true || this.tokens.access === undefined || this.refreshDue();
    if (this.tokens.refresh !== undefined && due) {
      await this.refresh();
    }
    if (this.tokens.access === undefined) {
      throw new McpError(0, { code: "no_credentials", message: "the client has no API key or access token" });
    }
    return this.tokens.access;
  }

  /** The session's current tokens (to persist them), when the client has a session. */
  get session(): Tokens | undefined {
    const { access, refresh, expiresAt } = this.tokens;
    return access !== undefined && refresh !== undefined && expiresAt !== undefined
      ? { accessToken: access, refreshToken: refresh, expiresAt }
      : undefined;
  }

  /** Trades the refresh token for new tokens now; concurrent callers share one refresh. */
  async refresh(): Promise<void> {
    this.refreshing ??= (async () => {
      try {
        const refresh_token = this.tokens.refresh;
        if (refresh_token === undefined) {
          throw new McpError(0, { code: "no_refresh_token", message: "the client has no refresh token" });
        }
        const reply = await this.send("POST", "/v1/auth/refresh", { body: { refresh_token } }, false);
        this.takeTokens(reply as Schemas["TokenResponse"]);
      } finally {
        this.refreshing = undefined;
      }
    })();
    return this.refreshing;
  }

  /** Ends the session (`POST /v1/auth/logout`): its refresh token and access tokens stop working. */
  async logout(): Promise<void> {
    const refresh_token = this.tokens.refresh;
    if (refresh_token === undefined) {
      return;
    }
    await this.send("POST", "/v1/auth/logout", { body: { refresh_token } }, true);
    this.tokens = {};
  }

  get<P extends PathsWith<"get">>(path: P, options?: CallOptions<Operation<P, "get">>): Promise<ResponseOf<P, "get">> {
    return this.send("GET", path, options ?? {}, true) as Promise<ResponseOf<P, "get">>;
  }

  post<P extends PathsWith<"post">>(path: P, options?: CallOptions<Operation<P, "post">>): Promise<ResponseOf<P, "post">> {
    return this.send("POST", path, options ?? {}, true) as Promise<ResponseOf<P, "post">>;
  }

  put<P extends PathsWith<"put">>(path: P, options?: CallOptions<Operation<P, "put">>): Promise<ResponseOf<P, "put">> {
    return this.send("PUT", path, options ?? {}, true) as Promise<ResponseOf<P, "put">>;
  }

  patch<P extends PathsWith<"patch">>(path: P, options?: CallOptions<Operation<P, "patch">>): Promise<ResponseOf<P, "patch">> {
    return this.send("PATCH", path, options ?? {}, true) as Promise<ResponseOf<P, "patch">>;
  }

  delete<P extends PathsWith<"delete">>(path: P, options?: CallOptions<Operation<P, "delete">>): Promise<ResponseOf<P, "delete">> {
    return this.send("DELETE", path, options ?? {}, true) as Promise<ResponseOf<P, "delete">>;
  }

  // The common calls, by name.

  /** `POST /v1/tasks`: the task as stored (an idempotency-key hit returns the first one). */
  createTask(task: CreateTask, options: { requestId?: string } = {}): Promise<Task> {
    const headers: Record<string, string> = options.requestId === undefined ? {} : { "x-request-id": options.requestId };
    return this.send("POST", "/v1/tasks", { body: task, headers }, true) as Promise<Task>;
  }

  /** `GET /v1/tasks/{id}`. */
  getTask(id: string): Promise<Task> {
    return this.send("GET", "/v1/tasks/{id}", { path: { id } }, true) as Promise<Task>;
  }

  /** `GET /v1/tasks`: newest first; pass `next_cursor` back as `cursor` for the next page. */
  listTasks(query: CallOptions<Operation<"/v1/tasks", "get">>["query"] = {}): Promise<Schemas["TaskList"]> {
    return this.send("GET", "/v1/tasks", { query }, true) as Promise<Schemas["TaskList"]>;
  }

  /** `POST /v1/tasks/{id}/cancel`. */
  cancelTask(id: string): Promise<Task> {
    return this.send("POST", "/v1/tasks/{id}/cancel", { path: { id } }, true) as Promise<Task>;
  }

  /** `POST /v1/tasks/{id}/retry`. */
  retryTask(id: string): Promise<Task> {
    return this.send("POST", "/v1/tasks/{id}/retry", { path: { id } }, true) as Promise<Task>;
  }

  /**
   * Polls a task until it is final (`succeeded`, `dead`, `cancelled`) and returns it; throws
   * `McpError` `timeout` after `timeoutMs` (default 60 s). For live updates without polling,
   * subscribe to `task:{id}` with `McpSocket`.
   */
  async waitForTask(id: string, options: { timeoutMs?: number; intervalMs?: number } = {}): Promise<Task> {
    const deadline = Date.now() + (options.timeoutMs ?? 60_000);
    let interval = options.intervalMs ?? 100;
    for (;;) {
      const task = await this.getTask(id);
      if (FINAL_STATUSES.has(task.status)) {
        return task;
      }
      if (Date.now() + interval > deadline) {
        throw new McpError(0, { code: "timeout", message: `task ${id} is still ${task.status}` });
      }
      await sleep(interval);
      interval = Math.min(interval * 2, 2_000);
    }
  }

  /** `GET /v1/auth/me`: who the credential speaks for. */
  me(): Promise<Schemas["Principal"]> {
    return this.send("GET", "/v1/auth/me", {}, true) as Promise<Schemas["Principal"]>;
  }

  /** The one place a call is made: credentials, refresh, errors. */
  private async send(method: string, path: string, options: CallOptions<never>, authenticated: boolean): Promise<unknown> {
    const url = this.url(path, options.path as Record<string, string | number> | undefined, options.query);
    const body = options.body === undefined ? undefined : JSON.stringify(options.body);
    for (let attempt = 0; ; attempt++) {
      const headers: Record<string, string> = { accept: "application/json", ...this.options.headers, ...options.headers };
      if (body !== undefined) {
        headers["content-type"] = "application/json";
      }
      if (authenticated && (this.options.apiKey !== undefined || this.tokens.access !== undefined || this.tokens.refresh !== undefined)) {
        headers.authorization = `Bearer ${await this.credential()}`;
      }
      let response: Response;
      try {
        response = await this.fetchImpl(url, { method, headers, body, signal: options.signal });
      } catch (cause) {
        throw new McpError(0, { code: "network_error", message: `${method} ${path}: ${String(cause)}` }, { cause });
      }
      if (response.ok) {
        return parseBody(response);
      }
      const error = await toError(response);
      // An access token that expired anyway (a sleeping laptop, a clock apart): refresh once.
      if (error.tokenExpired && attempt === 0 && authenticated && this.tokens.refresh !== undefined) {
        await this.refresh();
        continue;
      }
      throw error;
    }
  }

  private url(path: string, params: Record<string, string | number> | undefined, query: unknown): string {
    const filled = path.replace(/\{([^}]+)\}/g, (_, name: string) => {
      const value = params?.[name];
      if (value === undefined) {
        throw new McpError(0, { code: "invalid_request", message: `missing path parameter \`${name}\`` });
      }
      return encodeURIComponent(String(value));
    });
    const search = new URLSearchParams();
    for (const [key, value] of Object.entries((query ?? {}) as Record<string, unknown>)) {
      if (value === undefined || value === null) {
        continue;
      }
      for (const item of Array.isArray(value) ? value : [value]) {
        search.append(key, item instanceof Date ? item.toISOString() : String(item));
      }
    }
    const text = search.toString();
    return `${this.baseUrl}${filled}${text === "" ? "" : `?${text}`}`;
  }

  private refreshDue(): boolean {
    const { expiresAt, lifetimeMs } = this.tokens;
    if (expiresAt === undefined) {
      return false;
    }
    const margin = Math.min(this.options.refreshMarginMs ?? DEFAULT_REFRESH_MARGIN_MS, (lifetimeMs ?? Infinity) / 2);
    return Date.now() >= expiresAt - margin;
  }

  private takeTokens(reply: Schemas["TokenResponse"]): void {
    this.setAccess(reply.access_token, reply.expires_in);
    this.tokens.refresh = reply.refresh_token;
    const session = this.session;
    if (session !== undefined) {
      this.options.onTokens?.(session);
    }
  }

  private setAccess(token: string, expiresIn: number | undefined): void {
    const now = Date.now();
    const claimed = expiresIn === undefined ? jwtExpiry(token) : { expiresAt: now + expiresIn * 1000, lifetimeMs: expiresIn * 1000 };
    this.tokens.access = token;
    this.tokens.expiresAt = claimed?.expiresAt;
    this.tokens.lifetimeMs = claimed?.lifetimeMs;
  }
}

const FINAL_STATUSES: ReadonlySet<string> = new Set(["succeeded", "dead", "cancelled"]);

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function parseBody(response: Response): Promise<unknown> {
  const text = await response.text();
  if (text === "") {
    return undefined;
  }
  const type = response.headers.get("content-type") ?? "";
  if (!type.includes("json")) {
    return text;
  }
  try {
    return JSON.parse(text);
  } catch (cause) {
    throw new McpError(response.status, { code: "invalid_response", message: "the hub's answer is not JSON" }, { cause });
  }
}

async function toError(response: Response): Promise<McpError> {
  const retryAfterHeader = response.headers.get("retry-after");
  const retryAfter = retryAfterHeader === null ? undefined : Number(retryAfterHeader);
  const text = await response.text().catch(() => "");
  let detail: ErrorDetail | undefined;
  try {
    const parsed = JSON.parse(text) as { error?: Partial<ErrorDetail> };
    if (typeof parsed.error?.code === "string") {
      detail = {
        code: parsed.error.code,
        message: parsed.error.message ?? parsed.error.code,
        request_id: parsed.error.request_id ?? response.headers.get("x-request-id") ?? undefined,
        details: parsed.error.details,
      };
    }
  } catch {
    // Not the hub's JSON (a proxy's page): said below.
  }
  detail ??= {
    code: "invalid_response",
    message: `HTTP ${response.status}: ${text.slice(0, 200)}`,
    request_id: response.headers.get("x-request-id") ?? undefined,
  };
  return new McpError(response.status, detail, {
    retryAfter: retryAfter !== undefined && Number.isFinite(retryAfter) ? retryAfter : undefined,
  });
}

/** When a JWT says it expires (`exp`) and its lifetime (`exp - iat`), read without verifying it. */
function jwtExpiry(token: string): { expiresAt: number; lifetimeMs: number | undefined } | undefined {
  const payload = token.split(".")[1];
  if (payload === undefined) {
    return undefined;
  }
  try {
    const base64 = payload.replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(base64)) as { exp?: unknown; iat?: unknown };
    if (typeof claims.exp !== "number") {
      return undefined;
    }
    const lifetimeMs = typeof claims.iat === "number" ? (claims.exp - claims.iat) * 1000 : undefined;
    return { expiresAt: claims.exp * 1000, lifetimeMs };
  } catch {
    return undefined;
  }
}
