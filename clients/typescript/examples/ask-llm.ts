// Ask the LLM two ways: the bots' `/ask-gemini` route (waits for the answer), or an
// `llm.generate` task created over the WebSocket and watched to its end.
//
//   MCP_URL=… MCP_API_KEY=… node build-test/examples/ask-llm.js "What is VRChat?"

import { McpClient, McpError, McpSocket, type Task } from "../src/index.js";

const url = process.env.MCP_URL ?? "http://127.0.0.1:8080";
const client = new McpClient({ baseUrl: url, apiKey: process.env.MCP_API_KEY ?? "" });
const prompt = process.argv[2] ?? "Say hello to the MKWW community.";

// 1. One request, one answer (504 llm_timeout, 502 llm_failed when it goes wrong).
try {
  const { response } = await client.post("/ask-gemini", { body: { prompt } });
  console.log(`/ask-gemini: ${response}`);
} catch (error) {
  console.error(error instanceof McpError ? `/ask-gemini failed: ${error.code}: ${error.message}` : error);
}

// 2. As a task: nothing waits on an HTTP request, and the answer arrives as an event.
const socket = new McpSocket({ url, client });
const { task } = await socket.createTask({ type: "llm.generate", payload: { prompt } });
const answer = await new Promise<Task>((resolve) => {
  void socket.subscribe(`task:${task.id}`, (event) => {
    if (["task.succeeded", "task.dead", "task.cancelled"].includes(event.type)) resolve(event.data as Task);
  });
  // It may have finished before the subscription: ask once.
  void client.getTask(task.id).then((now) => ["succeeded", "dead", "cancelled"].includes(now.status) && resolve(now));
});
console.log(`task ${answer.id}: ${answer.status}`, answer.result ?? answer.error);
await socket.close();
