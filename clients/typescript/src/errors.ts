/**
 * Errors the SDK throws. Every failure a caller can branch on carries the hub's stable `code`:
 * `McpError` for HTTP calls (with the status and request id), `SocketError` for WebSocket ops.
 */

/** The hub's error body: `{"error":{"code","message","request_id","details"?}}`. */
export interface ErrorDetail {
  code: string;
  message: string;
  request_id?: string;
  details?: unknown;
}

/**
 * An HTTP call that failed. `code` is the hub's stable code (`task_not_found`,
 * `unauthenticated`, …); `network_error` when no answer came, `invalid_response` when the answer
 * was not the hub's JSON error.
 */
export class McpError extends Error {
  override readonly name = "McpError";
  /** The HTTP status; 0 when no answer came. */
  readonly status: number;
  readonly code: string;
  /** The `x-request-id` of the call, to find it in the hub's logs. */
  readonly requestId: string | undefined;
  readonly details: unknown;
  /** Seconds the hub asked to wait (`Retry-After`), when it said so. */
  readonly retryAfter: number | undefined;

  constructor(
    status: number,
    detail: ErrorDetail,
    options: { retryAfter?: number | undefined; cause?: unknown } = {},
  ) {
    super(detail.message, options.cause === undefined ? undefined : { cause: options.cause });
    this.status = status;
    this.code = detail.code;
    this.requestId = detail.request_id;
    this.details = detail.details;
    this.retryAfter = options.retryAfter;
  }

  /** The access token expired (the one case the client answers by refreshing it). */
  get tokenExpired(): boolean {
    return (
      this.status === 401 &&
      typeof this.details === "object" &&
      this.details !== null &&
      (this.details as { reason?: unknown }).reason === "token_expired"
    );
  }
}

/**
 * A WebSocket op the hub refused (`forbidden`, `task_not_held`, …), or one that could not be
 * answered: `disconnected` (the connection ended before the reply), `timeout`, `closed` (the
 * client was closed).
 */
export class SocketError extends Error {
  override readonly name = "SocketError";
  readonly code: string;
  readonly details: unknown;

  constructor(code: string, message: string, details?: unknown) {
    super(message);
    this.code = code;
    this.details = details;
  }
}

/**
 * Thrown by a worker's handler to say how the attempt failed: `retryable: false` makes the task
 * `dead` at once; `details` reaches the task's `error.details`.
 */
export class TaskFailure extends Error {
  override readonly name = "TaskFailure";
  readonly retryable: boolean;
  readonly details: unknown;

  constructor(message: string, options: { retryable?: boolean; details?: unknown } = {}) {
    super(message);
    this.retryable = options.retryable ?? true;
    this.details = options.details;
  }
}
