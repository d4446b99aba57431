// Watch a task live, and serve a task type: run with `serve` to start a worker for
// `example.greet`, then without it to create such a task and watch its events.
//
//   MCP_URL=… MCP_API_KEY=<a service key> node build-test/examples/watch-task.js serve
//   MCP_URL=… MCP_API_KEY=… node build-test/examples/watch-task.js

import { McpClient, McpSocket, worker } from "../src/index.js";

const url = process.env.MCP_URL ?? "http://127.0.0.1:8080";
const credential = process.env.MCP_API_KEY ?? "";

if (process.argv[2] === "serve") {
  const greeter = worker({
    url,
    credential,
    types: ["example.greet"],
    concurrency: 4,
    handler: async (task, { progress, signal }) => {
      progress(0.5, "thinking of a greeting"); // needs a hub with the task.progress op
      await new Promise((resolve) => setTimeout(resolve, 500));
      signal.throwIfAborted();
      return { greeting: `hello, ${(task.payload as { name?: string }).name ?? "world"}` };
    },
  });
  await greeter.ready;
  console.log("serving example.greet; Ctrl-C stops after the running tasks");
  process.once("SIGINT", () => void greeter.stop().then(() => process.exit(0)));
  process.once("SIGTERM", () => void greeter.stop().then(() => process.exit(0)));
} else {
  const client = new McpClient({ baseUrl: url, apiKey: credential });
  const socket = new McpSocket({ url, client });
  const task = await client.createTask({ type: "example.greet", payload: { name: "MKWW" } });
  await new Promise<void>((resolve) => {
    void socket.subscribe(`task:${task.id}`, (event) => {
      console.log(`${event.at} ${event.type}`, event.type === "task.succeeded" ? event.data : "");
      if (["task.succeeded", "task.dead", "task.cancelled"].includes(event.type)) resolve();
    });
  });
  await socket.close();
}
