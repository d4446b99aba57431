// The WebSocket client against the real hub: events, a forced reconnect that recovers what was
// missed, the callback when recovery is impossible, task.create, and close codes.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { McpClient, McpSocket, SocketError, type ChannelEvent, type Disconnect, type Position } from "../src/index.js";
import { Proxy, eventually, startHub, type Hub } from "./hub.js";

let hub: Hub;
let adminToken: string;
const sockets: McpSocket[] = [];

function socket(options: ConstructorParameters<typeof McpSocket>[0]): McpSocket {
  const created = new McpSocket({ reconnect: { minDelayMs: 50, maxDelayMs: 500 }, ...options });
  sockets.push(created);
  return created;
}

before(async () => {
  hub = await startHub();
  adminToken = hub.token("admin");
});

after(async () => {
  await Promise.all(sockets.map((s) => s.close()));
  await hub?.stop();
});

describe("WebSocket client", () => {
  test("authenticates with the first frame, subscribes and publishes", async () => {
    const reader = socket({ url: hub.base, credential: adminToken });
    await reader.connect();
    const seen: ChannelEvent[] = [];
    const start = await reader.subscribe("room:hello", (event) => seen.push(event));
    assert.equal(typeof start.epoch, "string");

    const writer = socket({ url: hub.base, credential: adminToken });
    const published = await writer.publish("room:hello", { text: "hi" });
    assert.equal(published.offset, start.offset + 1);
    await eventually("the event", () => seen.length === 1);
    assert.equal(seen[0]!.type, "message");
    assert.deepEqual(seen[0]!.data, { text: "hi" });
    assert.deepEqual(reader.position("room:hello"), { offset: published.offset, epoch: published.epoch });
  });

  test("recovers events missed while the connection was down, with since", async () => {
    const proxy = new Proxy(hub.base);
    await proxy.start();
    try {
      const disconnects: Disconnect[] = [];
      let reconnects = 0;
      const failures: string[] = [];
      const reader = socket({
        url: proxy.base,
        credential: adminToken,
        onDisconnect: (d) => disconnects.push(d),
        onReconnect: () => reconnects++,
        onRecoveryFailed: (channel) => failures.push(channel),
      });
      const seen: unknown[] = [];
      await reader.subscribe("room:recovery", (event) => seen.push(event.data));
      const writer = socket({ url: hub.base, credential: adminToken });
      await writer.publish("room:recovery", { n: 1 });
      await eventually("the first event", () => seen.length === 1);

      // The connection drops (no close frame) and stays down while two events go by.
      proxy.block();
      proxy.cut();
      await eventually("the disconnect", () => disconnects.length >= 1);
      assert.deepEqual(disconnects[0], { code: 1006, reason: disconnects[0]!.reason, reconnecting: true });
      assert.equal(reader.connected, false);
      await writer.publish("room:recovery", { n: 2 });
      await writer.publish("room:recovery", { n: 3 });
      proxy.unblock();

      await eventually("the reconnect", () => reconnects === 1);
      await eventually("the missed events", () => seen.length === 3);
      await writer.publish("room:recovery", { n: 4 });
      await eventually("the live event after them", () => seen.length === 4);
      assert.deepEqual(seen, [{ n: 1 }, { n: 2 }, { n: 3 }, { n: 4 }], "in order, no gap, no duplicate");
      assert.deepEqual(failures, []);
    } finally {
      await proxy.stop();
    }
  });

  test("reconnects when the hub shuts down (1001) and says when the missed events cannot be recovered", async () => {
    const leaving = await startHub();
    const other = await startHub();
    const proxy = new Proxy(leaving.base);
    await proxy.start();
    try {
      const lost: [string, Position][] = [];
      const disconnects: Disconnect[] = [];
      const reader = socket({
        url: proxy.base,
        credential: adminToken,
        onDisconnect: (d) => disconnects.push(d),
        onRecoveryFailed: (channel, position) => lost.push([channel, position]),
      });
      const seen: unknown[] = [];
      await reader.subscribe("room:lost", (event) => seen.push(event.data));
      await socket({ url: leaving.base, credential: adminToken }).publish("room:lost", { n: 1 });
      await eventually("the first event", () => seen.length === 1);

      // The hub shuts down; the same address now leads to a hub that never had this channel's
      // history (another epoch), as after a restart of the embedded server.
      proxy.target = other.base;
      await leaving.stop();
      await eventually("the recovery failure", () => lost.length === 1);
      assert.equal(disconnects[0]?.code, 1001);
      assert.equal(disconnects[0]?.reconnecting, true);
      assert.equal(lost[0]![0], "room:lost");
      const otherWriter = socket({ url: other.base, credential: other.token("admin") });
      const published = await otherWriter.publish("room:lost", { n: 2 });
      await eventually("events from the new position", () => seen.length === 2);
      assert.deepEqual(seen, [{ n: 1 }, { n: 2 }]);
      assert.deepEqual(reader.position("room:lost"), published);
    } finally {
      await proxy.stop();
      await leaving.stop();
      await other.stop();
    }
  });

  test("creates a task and watches it to the end", async () => {
    const client = socket({ url: hub.base, credential: adminToken });
    const { task, created } = await client.createTask({ type: "sleep", payload: { ms: 200 } });
    assert.equal(created, true);
    const types: string[] = [];
    await client.subscribe(`task:${task.id}`, (event) => types.push(event.type));
    await eventually("task.succeeded", () => types.includes("task.succeeded"));

    const refused = await client.createTask({ type: "no.such.type" }).catch((e: unknown) => e);
    assert.ok(refused instanceof SocketError);
    assert.equal(refused.code, "unknown_task_type");
    const forbidden = await socket({ url: hub.base, credential: hub.token("user", "sdk-peeker") })
      .subscribe("tasks", () => undefined)
      .catch((e: unknown) => e);
    assert.ok(forbidden instanceof SocketError);
    assert.equal(forbidden.code, "forbidden");
  });

  test("does not reconnect after revocation (4003) or a refused credential", async () => {
    const admin = new McpClient({ baseUrl: hub.base, accessToken: adminToken });
    const key = await admin.post("/v1/api-keys", { body: { name: "sdk-revoked", role: "user" } });
    const closes: Disconnect[] = [];
    const revoked = socket({ url: hub.base, client: new McpClient({ baseUrl: hub.base, apiKey: key.key }), onClose: (d) => closes.push(d) });
    await revoked.connect();
    await admin.delete("/v1/api-keys/{id}", { path: { id: key.id } });
    await eventually("the close", () => closes.length === 1);
    assert.equal(closes[0]!.code, 4003);
    assert.equal(closes[0]!.reconnecting, false);
    const after = await revoked.ping().catch((e: unknown) => e);
    assert.ok(after instanceof SocketError);
    assert.equal(after.code, "closed");

    const refused = await socket({ url: hub.base, credential: "mk_wrong" }).connect().catch((e: unknown) => e);
    assert.ok(refused instanceof SocketError);
    assert.equal(refused.code, "unauthenticated");
  });
});
