/**
 * The worker helper: an external worker in a few lines. It connects, registers its task types
 * with a concurrency, runs `handler` for every `task.assign`, keeps each task's heartbeat, ends it
 * with `task.complete` or `task.fail`, registers again after a reconnect, and stops gracefully:
 * no new task starts, the running ones finish, and tasks assigned meanwhile go back to the queue
 * (without counting an attempt) when the connection closes.
 */

import { SocketError, TaskFailure } from "./errors.js";
import type { Task } from "./rest.js";
import { McpSocket, type SocketOptions } from "./socket.js";

/** What a handler gets besides the task. */
export interface TaskContext {
  /** Aborted when the hub took the task back (the connection dropped) or `stop` timed out. */
  signal: AbortSignal;
  /**
   * Reports progress (`fraction` 0..1, an optional message) as a `task.progress` frame. It needs
   * a hub that has the `task.progress` op; an older one ignores it (answers `unknown_op`).
   */
  progress(fraction: number, message?: string): void;
  /** Sends a heartbeat now (the helper sends them every `heartbeatMs` anyway). */
  heartbeat(): void;
}

export type TaskHandler = (task: Task, context: TaskContext) => unknown;

export interface WorkerOptions extends Omit<SocketOptions, "WebSocket"> {
  /** The task types served (none with an in-process handler on the hub; see `docs/websocket.md`). */
  types: string[];
  /** Tasks run at once at most. */
  concurrency: number;
  /** Runs one task: its return value is the result; a throw fails the attempt (`TaskFailure` says how). */
  handler: TaskHandler;
  /** Between heartbeats of a running task (default 10 s). */
  heartbeatMs?: number;
  WebSocket?: SocketOptions["WebSocket"];
}

/** A running worker; see `worker()`. */
export class Worker {
  /** The worker's own connection (to publish or subscribe on it as well). */
  readonly socket: McpSocket;
  /** Resolves once the hub accepted the first registration; rejects if it refused it. */
  readonly ready: Promise<void>;
  private readonly options: WorkerOptions;
  private readonly running = new Map<string, { promise: Promise<void>; abort: AbortController }>();
  private stopping = false;
  private stopped: Promise<void> | undefined;

  constructor(options: WorkerOptions) {
    if (options.types.length === 0 || !(options.concurrency >= 1)) {
      throw new SocketError("invalid_request", "a worker needs at least one type and a concurrency of 1 or more");
    }
    this.options = options;
    const { types, concurrency, handler, heartbeatMs, ...connection } = options;
    this.socket = new McpSocket({
      ...connection,
      onDisconnect: (disconnect) => {
        // The hub gives back every task this connection held: their handlers should stop.
        for (const { abort } of this.running.values()) {
          abort.abort(new SocketError("disconnected", "the connection closed; the hub requeued the task"));
        }
        options.onDisconnect?.(disconnect);
      },
    });
    this.socket.afterAuthenticate(async () => {
      if (!this.stopping) {
        await this.socket.request("worker.register", { types, concurrency });
      }
    });
    this.socket.on("task.assign", (frame) => this.assigned(frame.task as Task));
    // The credential's new role may not run tasks: the hub took the tasks back; say so.
    this.socket.on("worker.unregistered", (frame) =>
      options.onError?.(new SocketError("worker_unregistered", `the hub unregistered this worker (${String(frame.reason)})`)),
    );
    this.ready = this.socket.connect();
  }

  /** Tasks running now. */
  get inFlight(): number {
    return this.running.size;
  }

  /**
   * Stops taking tasks, waits for the running ones to finish and report (at most `timeoutMs`,
   * default 30 s; then their signals are aborted and they are given back), then closes.
   */
  stop(options: { timeoutMs?: number } = {}): Promise<void> {
    this.stopped ??= (async () => {
      this.stopping = true;
      const all = Promise.allSettled([...this.running.values()].map((r) => r.promise));
      let timer: ReturnType<typeof setTimeout> | undefined;
      const timeout = new Promise<"timeout">((resolve) => {
        timer = setTimeout(() => resolve("timeout"), options.timeoutMs ?? 30_000);
      });
      const outcome = await Promise.race([all, timeout]);
      clearTimeout(timer);
      if (outcome === "timeout") {
        for (const { abort } of this.running.values()) {
          abort.abort(new SocketError("closed", "the worker stopped before the task finished"));
        }
      }
      await this.socket.close();
    })();
    return this.stopped;
  }

  private assigned(task: Task): void {
    if (this.stopping || this.running.has(task.id)) {
      // Not started: the hub takes it back, attempt uncounted, when the connection closes.
      return;
    }
    const abort = new AbortController();
    const promise = this.run(task, abort).finally(() => this.running.delete(task.id));
    this.running.set(task.id, { promise, abort });
  }

  private async run(task: Task, abort: AbortController): Promise<void> {
    const taskId = task.id;
    const heartbeat = () => void this.socket.notify("task.heartbeat", { task_id: taskId });
    const timer = setInterval(heartbeat, this.options.heartbeatMs ?? 10_000);
    timer.unref?.();
    const context: TaskContext = {
      signal: abort.signal,
      heartbeat,
      progress: (fraction, message) => {
        this.socket.notify("task.progress", message === undefined ? { task_id: taskId, progress: fraction } : { task_id: taskId, progress: fraction, message });
      },
    };
    let outcome: { op: "task.complete"; fields: Record<string, unknown> } | { op: "task.fail"; fields: Record<string, unknown> };
    try {
      const result = await this.options.handler(task, context);
      outcome = { op: "task.complete", fields: { task_id: taskId, result: result ?? null } };
    } catch (error) {
      const failure = error instanceof TaskFailure ? error : undefined;
      const message = error instanceof Error ? error.message : String(error);
      outcome = {
        op: "task.fail",
        fields: {
          task_id: taskId,
          error: failure?.details === undefined ? { message } : { message, details: failure.details },
          retryable: failure?.retryable ?? true,
        },
      };
    } finally {
      clearInterval(timer);
    }
    if (abort.signal.aborted) {
      return; // the hub took the task back; its outcome would answer `task_not_held`
    }
    try {
      await this.socket.request(outcome.op, outcome.fields);
    } catch (error) {
      this.options.onError?.(error instanceof Error ? error : new Error(String(error)));
    }
  }
}

/**
 * Starts a worker: `worker({ url, credential, types: ["render.deploy"], concurrency: 4,
 * handler: async (task) => ({ ok: true }) })`. Await `ready` to know it is registered; call
 * `stop()` (e.g. on SIGTERM) to finish gracefully.
 */
export function worker(options: WorkerOptions): Worker {
  return new Worker(options);
}
