// The worker helper against the real hub: serving tasks (results, failures, concurrency), and a
// graceful stop that finishes running tasks and gives back the rest.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { McpClient, SocketError, TaskFailure, worker, type Task, type Worker } from "../src/index.js";
import { eventually, startHub, type Hub } from "./hub.js";

let hub: Hub;
let admin: McpClient;
const workers: Worker[] = [];

function start(options: Omit<Parameters<typeof worker>[0], "url" | "credential">): Worker {
  const started = worker({ url: hub.base, credential: hub.token("service", "sdk-worker"), ...options });
  workers.push(started);
  return started;
}

before(async () => {
  hub = await startHub();
  admin = new McpClient({ baseUrl: hub.base, accessToken: hub.token("admin") });
});

after(async () => {
  await Promise.all(workers.map((w) => w.stop({ timeoutMs: 1_000 })));
  await hub?.stop();
});

describe("worker", () => {
  test("serves tasks: results, failures and at most `concurrency` at once", async () => {
    let running = 0;
    let most = 0;
    const served = start({
      types: ["sdk.double"],
      concurrency: 2,
      heartbeatMs: 50,
      handler: async (task, context) => {
        running++;
        most = Math.max(most, running);
        context.progress(0.5, "half way");
        await new Promise((resolve) => setTimeout(resolve, 100));
        running--;
        const n = (task.payload as { n: number }).n;
        if (n < 0) {
          throw new TaskFailure("negative numbers are not served", { retryable: false, details: { n } });
        }
        return { doubled: n * 2 };
      },
    });
    await served.ready;

    const tasks = await Promise.all([1, 2, 3, 4, 5].map((n) => admin.createTask({ type: "sdk.double", payload: { n } })));
    const failing = await admin.createTask({ type: "sdk.double", payload: { n: -1 } });
    const done = await Promise.all(tasks.map((t) => admin.waitForTask(t.id, { timeoutMs: 15_000 })));
    assert.deepEqual(
      done.map((t) => [t.status, t.result]),
      [1, 2, 3, 4, 5].map((n) => ["succeeded", { doubled: n * 2 }]),
    );
    const dead = await admin.waitForTask(failing.id, { timeoutMs: 15_000 });
    assert.equal(dead.status, "dead");
    assert.equal(dead.error?.message, "negative numbers are not served");
    assert.deepEqual(dead.error?.details, { n: -1 });
    assert.ok(most <= 2, `ran ${most} at once`);
    assert.equal(served.inFlight, 0);
  });

  test("stops gracefully: the running task finishes, one assigned meanwhile goes back to the queue", async () => {
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const started: string[] = [];
    const first = start({
      types: ["sdk.slow"],
      concurrency: 2,
      handler: async (task) => {
        started.push(task.id);
        await gate;
        return { by: "first" };
      },
    });
    await first.ready;
    const running = await admin.createTask({ type: "sdk.slow" });
    await eventually("the first task to start", () => started.length === 1);

    let stopped = false;
    const stopping = first.stop().then(() => (stopped = true));
    // The worker has a free slot, so the hub assigns it this one while it is stopping.
    const waiting = await admin.createTask({ type: "sdk.slow" });
    await eventually("the second task to be assigned", async () => (await admin.getTask(waiting.id)).status === "running");
    assert.equal(stopped, false, "stop waits for the running task");
    release();
    await stopping;

    const finished = await admin.getTask(running.id);
    assert.equal(finished.status, "succeeded");
    assert.deepEqual(finished.result, { by: "first" });
    assert.deepEqual(started, [running.id], "nothing new started while stopping");
    const given: Task = await eventually("the second task back in the queue", async () => {
      const task = await admin.getTask(waiting.id);
      return task.status === "queued" ? task : undefined;
    });
    assert.equal(given.attempts, 0, "giving a task back costs no attempt");

    const second = start({ types: ["sdk.slow"], concurrency: 1, handler: () => ({ by: "second" }) });
    await second.ready;
    const served = await admin.waitForTask(waiting.id, { timeoutMs: 15_000 });
    assert.equal(served.status, "succeeded");
    assert.deepEqual(served.result, { by: "second" });
  });

  test("a refused registration rejects `ready` with the hub's code", async () => {
    const refused = start({ types: ["echo"], concurrency: 1, handler: () => null });
    const error = await refused.ready.catch((e: unknown) => e);
    assert.ok(error instanceof SocketError, String(error));
    assert.equal(error.code, "worker_type_forbidden");
  });
});
