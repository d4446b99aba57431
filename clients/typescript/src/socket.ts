/**
 * The WebSocket client (`docs/websocket.md`): authenticates with the first frame, subscribes,
 * reconnects by itself with backoff and jitter, and resubscribes with `since` from the last event
 * it saw on each channel, so a dropped connection loses nothing the hub still holds. When the hub
 * cannot replay what was missed, `onRecoveryFailed` says so, with the position to carry on from.
 */

import { SocketError } from "./errors.js";
import type { CreateTask, McpClient, Task } from "./rest.js";

/** A position in one channel's event stream. */
export interface Position {
  offset: number;
  epoch: string;
}

/** One event as a subscriber receives it. */
export interface ChannelEvent<Data = unknown> {
  channel: string;
  offset: number;
  epoch: string;
  /** `task.succeeded`, `message`, `memory.message.created`, … */
  type: string;
  data: Data;
  correlation_id?: string | null;
  at: string;
}

/** What `subscribe` answers: the position the subscription starts from (or recovered to). */
export interface SubscribeResult extends Position {
  /** Present when the subscribe carried `since`: whether every missed event follows. */
  recovered?: boolean;
}

/** The WHATWG WebSocket surface the client uses: Node 22's global, or the `ws` package. */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  /** `ws`'s hard close (no closing handshake), when there is one. */
  terminate?: () => void;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** Why the connection ended, and whether the client reconnects. */
export interface Disconnect {
  code: number;
  reason: string;
  reconnecting: boolean;
}

export interface SocketOptions {
  /** The hub (`http://host:8080`) or the socket itself (`ws://host:8080/v1/ws`). */
  url: string;
  /**
   * What `auth` sends: an API key or access token, or a function giving one (called at every
   * connect, and with `fresh` when the hub asks for a refresh). Or pass `client` instead.
   */
  credential?: string | ((options: { fresh: boolean }) => string | Promise<string>);
  /** A REST client whose credential (API key, or refreshed access token) the socket uses. */
  client?: McpClient;
  /** Backoff between reconnects: full jitter up to `min(maxDelayMs, minDelayMs · 2^n)`; `false`: never. */
  reconnect?: false | { minDelayMs?: number; maxDelayMs?: number };
  /** Longest wait for a reply, counted from the call (default 15 s). */
  requestTimeoutMs?: number;
  /** Sends a `ping` op this often and drops a connection that does not answer (default 25 s; 0: off). */
  pingIntervalMs?: number;
  /** Another WebSocket implementation; by default the global one, else the `ws` package. */
  WebSocket?: WebSocketConstructor;
  /** A resubscribe could not replay every missed event: reload the state (REST) and carry on. */
  onRecoveryFailed?: (channel: string, position: Position) => void;
  /** The connection ended; `reconnecting` says whether another comes. */
  onDisconnect?: (disconnect: Disconnect) => void;
  /** Authenticated again after a disconnect, subscriptions being restored. */
  onReconnect?: () => void;
  /** The client stopped for good: `close()`, or a close code that forbids reconnecting. */
  onClose?: (disconnect: Disconnect) => void;
  /** Something went wrong that no caller awaits (a resubscribe refused, a bad frame). */
  onError?: (error: Error) => void;
}

/** Close codes after which the client reconnects (`docs/websocket.md`, "Close codes"). */
const RECONNECT_CODES: ReadonlySet<number> = new Set([
  1001, // the server is shutting down
  1005, // closed without a code
  1006, // the connection dropped
  1011, // the server failed
  1012, // the server restarts
  1013, // try again later
  4008, // too slow, or events interrupted: resubscribe with `since`
  4009, // idle
  4029, // flooding: back off
]);
/** The access token expired without a refresh: worth a reconnect only with a new token. */
const TOKEN_EXPIRED = 4002;

interface Pending {
  resolve: (result: unknown) => void;
  reject: (error: Error) => void;
  timer: ReturnType<typeof setTimeout>;
}

interface Subscription {
  channel: string;
  handlers: Set<(event: ChannelEvent) => void>;
  onRecoveryFailed: ((position: Position) => void) | undefined;
  /** The last event seen, or where the subscription started. */
  position: Position | undefined;
  /** Settled by the first successful subscribe. */
  established: Deferred<SubscribeResult>;
}

interface Deferred<T> {
  promise: Promise<T>;
  resolve: (value: T) => void;
  reject: (error: Error) => void;
  settled: boolean;
}

function deferred<T>(): Deferred<T> {
  let resolve!: (value: T) => void;
  let reject!: (error: Error) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  const d: Deferred<T> = {
    promise,
    settled: false,
    resolve: (value) => {
      d.settled = true;
      resolve(value);
    },
    reject: (error) => {
      d.settled = true;
      reject(error);
    },
  };
  // A deferred nobody awaits must not crash the process when it is rejected.
  promise.catch(() => undefined);
  return d;
}

type FrameListener = (frame: Record<string, unknown>) => void;

/**
 * One logical connection to the hub, kept alive across drops. Calls made while it reconnects
 * wait for it (within `requestTimeoutMs`); subscriptions survive reconnects.
 */
export class McpSocket {
  private readonly options: SocketOptions;
  private readonly url: string;
  private ws: WebSocketLike | undefined;
  private authenticated = false;
  private stopped: Disconnect | undefined;
  private everConnected = false;
  private attempt = 0;
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private waiters: Deferred<void>[] = [];
  private readonly subscriptions = new Map<string, Subscription>();
  private readonly listeners = new Map<string, Set<FrameListener>>();
  private readonly onAuthenticated: (() => Promise<void>)[] = [];
  private firstConnect = deferred<void>();
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private pingTimer: ReturnType<typeof setInterval> | undefined;
  private started = false;

  constructor(options: SocketOptions) {
    if (options.credential === undefined && options.client === undefined) {
      throw new SocketError("invalid_request", "give a `credential` or a `client`");
    }
    this.options = options;
    this.url = socketUrl(options.url);
  }

  /** Connects and authenticates; resolves once the hub accepted the credential. */
  connect(): Promise<void> {
    if (!this.started) {
      this.started = true;
      void this.open();
    }
    return this.firstConnect.promise;
  }

  /** Whether the connection is up and authenticated right now. */
  get connected(): boolean {
    return this.authenticated;
  }

  /**
   * Subscribes to `channel`; `handler` gets every event, in order, across reconnects. With
   * `since`, starts after that position (events missed meanwhile are replayed when the hub still
   * holds them). Resolves with the hub's answer to the first subscribe.
   */
  subscribe(
    channel: string,
    handler: (event: ChannelEvent) => void,
    options: { since?: Position; onRecoveryFailed?: (position: Position) => void } = {},
  ): Promise<SubscribeResult> {
    const existing = this.subscriptions.get(channel);
    if (existing !== undefined) {
      existing.handlers.add(handler);
      return existing.established.promise;
    }
    const subscription: Subscription = {
      channel,
      handlers: new Set([handler]),
      onRecoveryFailed: options.onRecoveryFailed,
      position: options.since,
      established: deferred(),
    };
    this.subscriptions.set(channel, subscription);
    if (this.authenticated) {
      void this.sendSubscribe(subscription);
    } else {
      void this.connect();
    }
    const timer = setTimeout(() => {
      if (!subscription.established.settled) {
        this.subscriptions.delete(channel);
        subscription.established.reject(new SocketError("timeout", `no answer to subscribe ${channel}`));
      }
    }, this.requestTimeoutMs());
    void subscription.established.promise.finally(() => clearTimeout(timer)).catch(() => undefined);
    return subscription.established.promise;
  }

  /** The last position seen on `channel` (to resume elsewhere with `since`). */
  position(channel: string): Position | undefined {
    const position = this.subscriptions.get(channel)?.position;
    return position === undefined ? undefined : { ...position };
  }

  /** Stops receiving `channel` (every handler of it, or just `handler`). */
  async unsubscribe(channel: string, handler?: (event: ChannelEvent) => void): Promise<void> {
    const subscription = this.subscriptions.get(channel);
    if (subscription === undefined) {
      return;
    }
    if (handler !== undefined) {
      subscription.handlers.delete(handler);
      if (subscription.handlers.size > 0) {
        return;
      }
    }
    this.subscriptions.delete(channel);
    if (this.authenticated) {
      await this.send("unsubscribe", { channel }).catch((error: unknown) => {
        if (!(error instanceof SocketError && ["not_subscribed", "disconnected"].includes(error.code))) {
          throw error;
        }
      });
    }
  }

  /** Publishes `data` on `channel` (a `message` event for its subscribers). */
  publish(channel: string, data: unknown): Promise<Position> {
    return this.request<Position>("publish", { channel, data });
  }

  /** `task.create`: the same body, rules and errors as `POST /v1/tasks`. */
  createTask(task: CreateTask): Promise<{ task: Task; created: boolean }> {
    return this.request("task.create", { task });
  }

  /** `task.cancel`. */
  cancelTask(taskId: string): Promise<{ task: Task }> {
    return this.request("task.cancel", { task_id: taskId });
  }

  /** `ping`: a round trip to the hub. */
  ping(): Promise<{ pong: boolean }> {
    return this.request("ping", {});
  }

  /**
   * Any op with a reply: waits for the connection (within `requestTimeoutMs`) and resolves with
   * the reply's `result`, or rejects with a `SocketError` carrying the hub's code.
   */
  async request<Result = unknown>(op: string, fields: Record<string, unknown>): Promise<Result> {
    const deadline = Date.now() + this.requestTimeoutMs();
    await this.whenAuthenticated(deadline);
    return (await this.send(op, fields, deadline)) as Result;
  }

  /** Sends a frame that wants no reply (`task.heartbeat`); dropped when not connected. */
  notify(op: string, fields: Record<string, unknown>): boolean {
    if (!this.authenticated || this.ws === undefined) {
      return false;
    }
    this.ws.send(JSON.stringify({ op, ...fields }));
    return true;
  }

  /** Calls `listener` for every frame the hub sends on its own with this `op` (`task.assign`, …). */
  on(op: string, listener: FrameListener): () => void {
    let set = this.listeners.get(op);
    if (set === undefined) {
      set = new Set();
      this.listeners.set(op, set);
    }
    set.add(listener);
    return () => set.delete(listener);
  }

  /**
   * Runs `hook` after every successful `auth`, before waiting calls go out (the worker helper
   * registers there). A hook that throws ends the client.
   */
  afterAuthenticate(hook: () => Promise<void>): void {
    this.onAuthenticated.push(hook);
  }

  /** Closes for good (code 1000); calls waiting for a reply are rejected with `closed`. */
  close(): Promise<void> {
    const done = new Promise<void>((resolve) => {
      if (this.stopped !== undefined) {
        resolve();
        return;
      }
      const ws = this.ws;
      this.finish({ code: 1000, reason: "closed by the client", reconnecting: false });
      if (ws === undefined || ws.readyState >= 2) {
        resolve();
        return;
      }
      ws.onclose = () => resolve();
      ws.close(1000, "bye");
      // A peer that never answers the close must not hold the caller.
      setTimeout(() => {
        ws.terminate?.();
        resolve();
      }, 2_000).unref?.();
    });
    return done;
  }

  private requestTimeoutMs(): number {
    return this.options.requestTimeoutMs ?? 15_000;
  }

  private async credential(fresh: boolean): Promise<string> {
    const { credential, client } = this.options;
    if (client !== undefined) {
      return client.credential({ fresh });
    }
    if (typeof credential === "function") {
      return credential({ fresh });
    }
    return credential ?? "";
  }

  private async open(): Promise<void> {
    if (this.stopped !== undefined) {
      return;
    }
    const WebSocketImpl = this.options.WebSocket ?? (await defaultWebSocket());
    if (this.stopped !== undefined) {
      return;
    }
    let ws: WebSocketLike;
    try {
      ws = new WebSocketImpl(this.url);
    } catch (error) {
      this.fail(new SocketError("invalid_request", `cannot open ${this.url}: ${String(error)}`));
      return;
    }
    this.ws = ws;
    ws.onopen = () => void this.authenticate(ws);
    ws.onmessage = (event) => this.receive(event.data);
    ws.onerror = () => undefined; // `onclose` follows and says what to do
    ws.onclose = (event) => {
      if (this.ws === ws) {
        this.disconnected(event.code, event.reason);
      }
    };
  }

  private async authenticate(ws: WebSocketLike): Promise<void> {
    try {
      const token = await this.credential(false);
      await this.send("auth", { token }, Date.now() + this.requestTimeoutMs());
    } catch (error) {
      if (this.ws !== ws) {
        return;
      }
      // A refused credential will be refused again: stop, do not hammer the hub.
      if (error instanceof SocketError && error.code !== "disconnected" && error.code !== "timeout") {
        this.ws = undefined;
        ws.close(1000, "authentication failed");
        this.fail(error);
      } else if (error instanceof SocketError) {
        this.drop(ws, `auth: ${error.message}`);
      } else {
        this.ws = undefined;
        ws.close(1000, "no credential");
        this.fail(error instanceof Error ? error : new Error(String(error)));
      }
      return;
    }
    if (this.ws !== ws) {
      return;
    }
    this.authenticated = true;
    this.attempt = 0;
    const reconnect = this.everConnected;
    this.everConnected = true;
    this.startPings(ws);
    for (const subscription of this.subscriptions.values()) {
      void this.sendSubscribe(subscription);
    }
    try {
      for (const hook of this.onAuthenticated) {
        await hook();
      }
    } catch (error) {
      if (this.ws === ws && error instanceof SocketError && error.code === "disconnected") {
        return;
      }
      this.ws = undefined;
      ws.close(1000, "setup failed");
      this.fail(error instanceof Error ? error : new Error(String(error)));
      return;
    }
    if (this.ws !== ws) {
      return;
    }
    const waiters = this.waiters;
    this.waiters = [];
    for (const waiter of waiters) {
      waiter.resolve();
    }
    this.firstConnect.resolve();
    if (reconnect) {
      this.options.onReconnect?.();
    }
  }

  private async sendSubscribe(subscription: Subscription): Promise<void> {
    const since = subscription.position;
    let result: SubscribeResult;
    try {
      result = (await this.send(
        "subscribe",
        since === undefined ? { channel: subscription.channel } : { channel: subscription.channel, since },
      )) as SubscribeResult;
    } catch (error) {
      if (error instanceof SocketError && error.code === "disconnected") {
        return; // the next connection subscribes again
      }
      if (this.subscriptions.get(subscription.channel) === subscription) {
        this.subscriptions.delete(subscription.channel);
      }
      const failure = error instanceof Error ? error : new Error(String(error));
      if (subscription.established.settled) {
        this.options.onError?.(failure);
      } else {
        subscription.established.reject(failure);
      }
      return;
    }
    const position = { offset: result.offset, epoch: result.epoch };
    if (since !== undefined && result.recovered === false) {
      // What was missed is gone: carry on from the hub's position, and say so.
      subscription.position = position;
      subscription.onRecoveryFailed?.(position);
      this.options.onRecoveryFailed?.(subscription.channel, position);
    } else if (subscription.position === undefined || subscription.position.epoch !== position.epoch) {
      subscription.position = position;
    }
    if (!subscription.established.settled) {
      subscription.established.resolve(result);
    }
  }

  private receive(data: unknown): void {
    let frame: Record<string, unknown>;
    try {
      const parsed: unknown = JSON.parse(typeof data === "string" ? data : String(data));
      if (typeof parsed !== "object" || parsed === null) {
        throw new Error("not an object");
      }
      frame = parsed as Record<string, unknown>;
    } catch (error) {
      this.options.onError?.(new SocketError("malformed_frame", `the hub sent a frame that is not JSON: ${String(error)}`));
      return;
    }
    if (typeof frame.id === "number" && this.pending.has(frame.id)) {
      const pending = this.pending.get(frame.id);
      this.pending.delete(frame.id);
      if (pending === undefined) {
        return;
      }
      clearTimeout(pending.timer);
      const error = frame.error as { code?: string; message?: string; details?: unknown } | undefined;
      if (error !== undefined) {
        pending.reject(new SocketError(error.code ?? "unknown", error.message ?? "", error.details));
      } else {
        pending.resolve(frame.result ?? {});
      }
      return;
    }
    switch (frame.op) {
      case "event":
        this.deliver(frame);
        break;
      case "auth.refresh_required":
        void this.reauthenticate();
        break;
      case "unsubscribed":
        if (typeof frame.channel === "string") {
          this.subscriptions.delete(frame.channel);
        }
        break;
    }
    if (typeof frame.op === "string") {
      for (const listener of this.listeners.get(frame.op) ?? []) {
        listener(frame);
      }
    }
  }

  private deliver(frame: Record<string, unknown>): void {
    const channel = frame.channel as string;
    const subscription = this.subscriptions.get(channel);
    if (subscription === undefined) {
      return;
    }
    const offset = frame.offset as number;
    const epoch = frame.epoch as string;
    const last = subscription.position;
    if (last !== undefined && last.epoch === epoch && offset <= last.offset) {
      return; // seen already
    }
    subscription.position = { offset, epoch };
    const inner = (frame.event ?? {}) as Record<string, unknown>;
    const event: ChannelEvent = {
      channel,
      offset,
      epoch,
      type: inner.type as string,
      data: inner.data,
      correlation_id: inner.correlation_id as string | null | undefined,
      at: inner.at as string,
    };
    for (const handler of subscription.handlers) {
      try {
        handler(event);
      } catch (error) {
        this.options.onError?.(error instanceof Error ? error : new Error(String(error)));
      }
    }
  }

  /** The hub asked for a new token before the current one expires. */
  private async reauthenticate(): Promise<void> {
    try {
      const token = await this.credential(true);
      await this.send("auth", { token });
    } catch (error) {
      this.options.onError?.(error instanceof Error ? error : new Error(String(error)));
    }
  }

  private send(op: string, fields: Record<string, unknown>, deadline = Date.now() + this.requestTimeoutMs()): Promise<unknown> {
    const ws = this.ws;
    if (ws === undefined || ws.readyState !== 1) {
      return Promise.reject(new SocketError("disconnected", `not connected (op ${op})`));
    }
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new SocketError("timeout", `no reply to ${op} in time`));
      }, Math.max(0, deadline - Date.now()));
      this.pending.set(id, { resolve, reject, timer });
      ws.send(JSON.stringify({ id, op, ...fields }));
    });
  }

  private whenAuthenticated(deadline: number): Promise<void> {
    if (this.stopped !== undefined) {
      return Promise.reject(new SocketError("closed", "the client is closed"));
    }
    if (this.authenticated) {
      return Promise.resolve();
    }
    void this.connect();
    const waiter = deferred<void>();
    this.waiters.push(waiter);
    const timer = setTimeout(() => {
      this.waiters = this.waiters.filter((w) => w !== waiter);
      waiter.reject(new SocketError("timeout", "not connected in time"));
    }, Math.max(0, deadline - Date.now()));
    return waiter.promise.finally(() => clearTimeout(timer));
  }

  private startPings(ws: WebSocketLike): void {
    clearInterval(this.pingTimer);
    const every = this.options.pingIntervalMs ?? 25_000;
    if (every <= 0) {
      return;
    }
    this.pingTimer = setInterval(() => {
      if (this.ws !== ws) {
        return;
      }
      this.send("ping", {}, Date.now() + every).catch((error: unknown) => {
        if (this.ws === ws && error instanceof SocketError && error.code === "timeout") {
          this.drop(ws, "the hub stopped answering");
        }
      });
    }, every);
    this.pingTimer.unref?.();
  }

  /** Gives up on a connection that is dead without saying so. */
  private drop(ws: WebSocketLike, reason: string): void {
    ws.onclose = null;
    if (ws.terminate !== undefined) {
      ws.terminate();
    } else {
      ws.close(4000, reason);
    }
    if (this.ws === ws) {
      this.disconnected(1006, reason);
    }
  }

  private disconnected(code: number, reason: string): void {
    this.ws = undefined;
    this.authenticated = false;
    clearInterval(this.pingTimer);
    this.rejectPending(new SocketError("disconnected", `the connection closed (${code} ${reason})`));
    if (this.stopped !== undefined) {
      return;
    }
    const refreshable = this.options.client !== undefined || typeof this.options.credential === "function";
    const reconnecting =
      this.options.reconnect !== false && (RECONNECT_CODES.has(code) || (code === TOKEN_EXPIRED && refreshable));
    const disconnect = { code, reason, reconnecting };
    this.options.onDisconnect?.(disconnect);
    if (!reconnecting) {
      this.finish(disconnect, new SocketError("closed", `the hub closed the connection: ${code} ${reason}`));
      return;
    }
    const backoff = this.options.reconnect === false ? {} : (this.options.reconnect ?? {});
    const ceiling = Math.min(backoff.maxDelayMs ?? 10_000, (backoff.minDelayMs ?? 200) * 2 ** this.attempt);
    this.attempt = Math.min(this.attempt + 1, 30);
    const delay = Math.random() * ceiling;
    this.reconnectTimer = setTimeout(() => void this.open(), delay);
  }

  /** Ends the client for an error no reconnect would cure. */
  private fail(error: Error): void {
    const disconnect = { code: 1000, reason: error.message, reconnecting: false };
    this.options.onDisconnect?.(disconnect);
    this.finish(disconnect, error);
  }

  private finish(disconnect: Disconnect, error: Error = new SocketError("closed", "the client is closed")): void {
    if (this.stopped !== undefined) {
      return;
    }
    this.stopped = disconnect;
    this.authenticated = false;
    this.ws = undefined;
    clearTimeout(this.reconnectTimer);
    clearInterval(this.pingTimer);
    this.rejectPending(error);
    for (const waiter of this.waiters) {
      waiter.reject(error);
    }
    this.waiters = [];
    for (const subscription of this.subscriptions.values()) {
      if (!subscription.established.settled) {
        subscription.established.reject(error);
      }
    }
    if (!this.firstConnect.settled) {
      this.firstConnect.reject(error);
    }
    this.options.onClose?.(disconnect);
  }

  private rejectPending(error: Error): void {
    for (const pending of this.pending.values()) {
      clearTimeout(pending.timer);
      pending.reject(error);
    }
    this.pending.clear();
  }
}

/** `http://host/…` → `ws://host/v1/ws`; a `ws://` URL is used as given. */
function socketUrl(url: string): string {
  const parsed = new URL(url);
  if (parsed.protocol === "ws:" || parsed.protocol === "wss:") {
    return parsed.toString();
  }
  parsed.protocol = parsed.protocol === "https:" ? "wss:" : "ws:";
  parsed.pathname = `${parsed.pathname.replace(/\/+$/, "")}/v1/ws`;
  return parsed.toString();
}

let loaded: WebSocketConstructor | undefined;

/** Node 22 and browsers have a global WebSocket; Node 20 gets the `ws` package. */
async function defaultWebSocket(): Promise<WebSocketConstructor> {
  const global = (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  if (global !== undefined) {
    return global;
  }
  loaded ??= (await import("ws")).default as unknown as WebSocketConstructor;
  return loaded;
}
