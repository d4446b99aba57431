// The REST client against the real hub: a round trip, typed errors, token refresh (also for a
// WebSocket that outlives its access token).

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { McpClient, McpError, McpSocket, type Disconnect, type Tokens } from "../src/index.js";
import { eventually, expiredToken, startHub, type Hub } from "./hub.js";

let hub: Hub;
let admin: McpClient;

before(async () => {
  // Short access tokens, so that refreshing before expiry shows within a test.
  hub = await startHub({ MCP_ACCESS_TOKEN_TTL: "4s", MCP_WS_REFRESH_NOTICE_MS: "2000" });
  admin = new McpClient({ baseUrl: hub.base, accessToken: hub.token("admin") });
});

after(async () => {
  await hub?.stop();
});

async function createUser(username: string): Promise<string> {
  const password = `pw-${username}-0123456789`;
  await admin.post("/v1/users", { body: { username, role: "user", password } });
  return password;
}

describe("REST client", () => {
  test("round trip: creates a task, reads it back finished, lists it", async () => {
    const created = await admin.createTask({ type: "echo", payload: { greeting: "hello" } }, { requestId: "sdk-round-trip" });
    assert.equal(created.type, "echo");
    assert.equal(created.correlation_id, "sdk-round-trip");

    const finished = await admin.waitForTask(created.id, { timeoutMs: 10_000 });
    assert.equal(finished.status, "succeeded");
    assert.deepEqual(finished.result, { greeting: "hello" });

    const byPath = await admin.get("/v1/tasks/{id}", { path: { id: created.id } });
    assert.equal(byPath.id, created.id);
    const listed = await admin.listTasks({ type: "echo", limit: 10 });
    assert.ok(listed.tasks.some((task) => task.id === created.id));
    const me = await admin.me();
    assert.equal(me.role, "admin");
  });

  test("errors carry the hub's code, message, request id and status", async () => {
    const missing = await admin.getTask("01930000-0000-7000-8000-000000000000").catch((e: unknown) => e);
    assert.ok(missing instanceof McpError, String(missing));
    assert.equal(missing.status, 404);
    assert.equal(missing.code, "task_not_found");
    assert.ok(missing.message.length > 0);
    assert.ok(missing.requestId !== undefined && missing.requestId.length > 0);

    const invalid = await admin.createTask({ type: "echo", max_attempts: 0 }).catch((e: unknown) => e);
    assert.ok(invalid instanceof McpError);
    assert.equal(invalid.status, 422);
    assert.equal(invalid.code, "invalid_task");

    const stranger = new McpClient({ baseUrl: hub.base, apiKey: "mk_not_a_key" });
    const refused = await stranger.listTasks().catch((e: unknown) => e);
    assert.ok(refused instanceof McpError);
    assert.equal(refused.status, 401);
    assert.equal(refused.code, "unauthenticated");

    const user = new McpClient({ baseUrl: hub.base, accessToken: hub.token("user", "sdk-errors-user") });
    const forbidden = await user.get("/v1/users").catch((e: unknown) => e);
    assert.ok(forbidden instanceof McpError);
    assert.equal(forbidden.status, 403);
    assert.equal(forbidden.code, "forbidden");

    const nobody = new McpClient({ baseUrl: "http://127.0.0.1:1" });
    const unreachable = await nobody.get("/healthz").catch((e: unknown) => e);
    assert.ok(unreachable instanceof McpError);
    assert.equal(unreachable.code, "network_error");
    assert.equal(unreachable.status, 0);
  });

  test("refreshes the access token before it expires", async () => {
    const password = await createUser("sdk-early");
    const seen: Tokens[] = [];
    const client = await McpClient.login({ baseUrl: hub.base, username: "sdk-early", password, onTokens: (t) => seen.push(t) });
    assert.equal(seen.length, 1);
    const first = seen[0]!;
    // 4 s tokens: refreshed once half their life is gone, while the old one is still valid.
    await new Promise((resolve) => setTimeout(resolve, 2_100));
    const me = await client.me();
    assert.equal(me.subject, "sdk-early");
    assert.equal(seen.length, 2, "one refresh before the call");
    assert.notEqual(seen[1]!.accessToken, first.accessToken);
    assert.notEqual(seen[1]!.refreshToken, first.refreshToken);
    // The first refresh token was spent: the client kept the new one.
    assert.deepEqual(client.session, seen[1]);
  });

  test("retries once with a refreshed token after 401 token_expired", async () => {
    const password = await createUser("sdk-late");
    const session = (await McpClient.login({ baseUrl: hub.base, username: "sdk-late", password })).session!;
    let refreshed = 0;
    // The client believes its (expired) token good for an hour: only the hub's 401 tells it.
    const client = new McpClient({
      baseUrl: hub.base,
      accessToken: expiredToken("sdk-late", "user"),
      expiresIn: 3_600,
      refreshToken: session.refreshToken,
      onTokens: () => refreshed++,
    });
    const task = await client.createTask({ type: "noop" });
    assert.equal(task.created_by, "sdk-late");
    assert.equal(refreshed, 1);

    // Without a refresh token the 401 is the caller's.
    const stuck = new McpClient({ baseUrl: hub.base, accessToken: expiredToken("sdk-late", "user"), expiresIn: 3_600 });
    const error = await stuck.me().catch((e: unknown) => e);
    assert.ok(error instanceof McpError);
    assert.equal(error.status, 401);
    assert.ok(error.tokenExpired);
  });

  test("API keys authenticate as they are", async () => {
    const created = await admin.post("/v1/api-keys", { body: { name: "sdk-bot", role: "service" } });
    const bot = new McpClient({ baseUrl: hub.base, apiKey: created.key });
    const me = await bot.me();
    assert.equal(me.role, "service");
    assert.equal(me.credential, "api_key");
  });

  test("keeps a WebSocket open past its access token's expiry by answering auth.refresh_required", async () => {
    const password = await createUser("sdk-socket");
    let refreshes = 0;
    const client = await McpClient.login({ baseUrl: hub.base, username: "sdk-socket", password, onTokens: () => refreshes++ });
    const firstExpiry = client.session!.expiresAt;
    const disconnects: Disconnect[] = [];
    const socket = new McpSocket({ url: hub.base, client, onDisconnect: (d) => disconnects.push(d) });
    try {
      await socket.connect();
      // Without a new token the hub would close the connection (4002) when the first one expires.
      await eventually("the first token's expiry to pass", () => Date.now() > firstExpiry + 1_500, 15_000);
      assert.ok(refreshes >= 2, `refreshed ${refreshes - 1} times`);
      assert.deepEqual(await socket.ping(), { pong: true });
      assert.deepEqual(disconnects, []);
    } finally {
      await socket.close();
    }
  });
});
