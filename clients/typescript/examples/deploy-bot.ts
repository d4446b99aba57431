// A Discord-ish deploy bot: a chat command `!deploy owner/name` triggers the hub's deploy
// route and the bot reports every deploy task's end in the channel it came from.
//
//   MCP_URL=http://127.0.0.1:8080 MCP_API_KEY=mk_… node build-test/examples/deploy-bot.js
//
// The chat side is a stand-in (stdin lines as messages, stdout as replies): plug your Discord
// library's message handler in where `onMessage` is called.

import { createInterface } from "node:readline";
import { McpClient, McpError, McpSocket, type Task } from "../src/index.js";

const url = process.env.MCP_URL ?? "http://127.0.0.1:8080";
const apiKey = process.env.MCP_API_KEY ?? "";
const client = new McpClient({ baseUrl: url, apiKey });
const socket = new McpSocket({ url, client, onRecoveryFailed: () => say("(missed some updates while reconnecting)") });

function say(text: string): void {
  console.log(`[bot] ${text}`);
}

async function onMessage(text: string): Promise<void> {
  const match = /^!deploy\s+(\S+\/\S+)$/.exec(text.trim());
  if (match === null) {
    return;
  }
  const repo = match[1]!;
  try {
    const { tasks } = await client.post("/deploy", { body: { repo } });
    say(`deploying ${repo}: ${tasks.length} target(s)`);
    for (const id of tasks) {
      await socket.subscribe(`task:${id}`, (event) => {
        const task = event.data as Task;
        if (event.type === "task.succeeded") say(`${repo}: ${task.type} done`);
        if (event.type === "task.dead") say(`${repo}: ${task.type} failed: ${task.error?.message ?? "?"}`);
      });
    }
  } catch (error) {
    // The hub's stable codes make good replies: unknown_repo, rate_limited, …
    say(error instanceof McpError ? `cannot deploy ${repo}: ${error.code} (${error.message})` : String(error));
  }
}

await socket.connect();
say("ready: type `!deploy owner/name`");
for await (const line of createInterface({ input: process.stdin })) {
  await onMessage(line);
}
await socket.close();
