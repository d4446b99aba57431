/**
 * `@mkww/mcp-client`: the MKWW MCP hub from TypeScript. `McpClient` for REST (typed from the
 * hub's OpenAPI document), `McpSocket` for live events that survive reconnects, `worker()` to
 * serve task types.
 */

export { McpError, SocketError, TaskFailure, type ErrorDetail } from "./errors.js";
export {
  McpClient,
  type CallOptions,
  type ClientOptions,
  type CreateTask,
  type PathsWith,
  type ResponseOf,
  type Schemas,
  type Task,
  type TaskStatus,
  type Tokens,
} from "./rest.js";
export {
  McpSocket,
  type ChannelEvent,
  type Disconnect,
  type Position,
  type SocketOptions,
  type SubscribeResult,
  type WebSocketConstructor,
  type WebSocketLike,
} from "./socket.js";
export { Worker, worker, type TaskContext, type TaskHandler, type WorkerOptions } from "./worker.js";
export type { components, paths } from "./generated/openapi.js";
