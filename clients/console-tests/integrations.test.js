// The console's integrations page against outside services faked by local servers that speak
// their real wire format: a webhook receiver that checks signatures, VRChat's sign-in with an
// emailed code, and VCC projects on disk with a build command whose output streams live.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, mkdirSync, writeFileSync, rmSync, realpathSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startServer, call, login, launch, openPage, signIn, shot, within } from "./harness.js";
import { webhookReceiver, fakeVrchat, VRCHAT } from "./fakes.js";

let server;
let browser;
let admin;
let adminToken;
let receiver;
let vrchat;
let projects;

/** A world project as VCC creates it. */
function worldProject(root, name) {
  const path = join(root, name);
  mkdirSync(join(path, "ProjectSettings"), { recursive: true });
  mkdirSync(join(path, "Packages", "com.vrchat.worlds"), { recursive: true });
  writeFileSync(join(path, "ProjectSettings", "ProjectVersion.txt"),
    "m_EditorVersion: 2022.3.22f1\nm_EditorVersionWithRevision: 2022.3.22f1 (887be4894c44)\n");
  writeFileSync(join(path, "Packages", "vpm-manifest.json"), JSON.stringify({
    dependencies: { "com.vrchat.worlds": { version: "3.5.0" } },
    locked: {
      "com.vrchat.worlds": { version: "3.5.0", dependencies: { "com.vrchat.base": "3.5.0" } },
      "com.vrchat.base": { version: "3.5.0" },
    },
  }));
  return path;
}

before(async () => {
  receiver = await webhookReceiver();
  vrchat = await fakeVrchat();
  projects = realpathSync(mkdtempSync(join(tmpdir(), "mkww-console-vcc-")));
  worldProject(projects, "Pug World");
  server = await startServer({
    MCP_WEBHOOKS_ALLOW_PRIVATE: "true",
    MCP_VRCHAT_API_BASE: vrchat.base,
    MCP_VRCHAT_USERNAME: VRCHAT.username,
    MCP_VRCHAT_PASSWORD: VRCHAT.password,
    MCP_VCC_PROJECT_ROOTS: projects,
    // Prints, then waits for the test to let it finish: the output is seen while it runs.
    MCP_VCC_BUILD_COMMAND: JSON.stringify(["sh", "-c",
      "echo building {project_name}; echo careful >&2; while [ ! -f go ]; do sleep 0.1; done; echo done", "build"]),
  });
  browser = await launch();
  adminToken = await login(server, "admin", server.password);
  admin = await openPage(browser);
  await signIn(admin, server, "admin", server.password);
});

after(async () => {
  await browser?.close();
  await server?.stop();
  await receiver?.close();
  await vrchat?.close();
  if (projects) rmSync(projects, { recursive: true, force: true });
});

const section = (page, name) => page.locator("section.card").filter({ has: page.getByRole("heading", { name, exact: true }) });

test("a webhook's secret is shown once, its deliveries are logged and can be redelivered", async () => {
  await admin.getByRole("link", { name: "Integrations" }).click();
  const hooks = section(admin, "Webhooks");
  await hooks.getByLabel("Webhook URL").fill(receiver.url);
  await hooks.getByLabel("Events").fill("task.succeeded");
  await hooks.getByRole("button", { name: "Create webhook" }).click();
  const secret = (await admin.locator("#new-secret").textContent()).trim();
  assert.match(secret, /^whsec_/);
  receiver.useSecret(secret);
  const row = admin.locator(`tr[data-webhook="${receiver.url}"]`);
  await row.waitFor();
  // The list never carries it, and a fresh look at the page does not show it again.
  const listed = await call(server, "GET", "/v1/webhooks", { token: adminToken });
  assert.doesNotMatch(JSON.stringify(listed.body), /whsec_/);
  await admin.reload();
  await row.waitFor();
  assert.equal(await admin.locator("#new-secret").count(), 0);
  // A plain search: the secret is base64, whose `+` and `/` a RegExp would read as syntax.
  assert.ok(
    !(await admin.locator("main").textContent()).includes(secret),
    "the secret is not shown again",
  );

  // A task succeeds: the receiver gets the signed event, the open log shows it, live.
  await row.getByRole("button", { name: "Deliveries" }).click();
  await admin.getByText("No deliveries yet.").waitFor();
  const task = await call(server, "POST", "/v1/tasks", { token: adminToken, body: { type: "noop" } });
  assert.equal(task.status, 201);
  await within(20_000, "the receiver to get the task's event", async () =>
    receiver.received.some((r) => r.event?.data?.id === task.body.id));
  const first = receiver.received.find((r) => r.event?.data?.id === task.body.id);
  assert.equal(first.verified, true, "signed with the secret the console showed");
  const entry = admin.locator(`tr[data-delivery="${first.id}"]`);
  await entry.locator(".badge", { hasText: "succeeded" }).waitFor({ timeout: 20_000 });

  // Redeliver: the same delivery (same webhook-id) arrives again, signed afresh.
  await entry.getByRole("button", { name: "Redeliver" }).click();
  await admin.getByText("Redelivering task.succeeded").waitFor();
  await within(20_000, "the redelivery", async () => receiver.received.filter((r) => r.id === first.id).length === 2);
  assert.ok(receiver.received.every((r) => r.verified));
  await shot(admin, "integrations-webhooks");
});

test("a VCC project shows its packages and a build's output, live and replayed", async () => {
  await admin.goto(server.base + "/integrations");
  const vcc = section(admin, "VCC projects");
  await vcc.getByLabel("Project folder").fill(join(projects, "Pug World"));
  await vcc.getByRole("button", { name: "Register project" }).click();
  await vcc.getByText("Registered Pug World.").waitFor();
  const row = vcc.locator('tr[data-project="Pug World"]');
  await row.getByText("2 packages").click();
  await row.getByText("com.vrchat.worlds").waitFor();
  assert.match(await row.textContent(), /com\.vrchat\.base\s*\(locked 3\.5\.0\)/);

  await row.getByRole("button", { name: "Build" }).click();
  const log = vcc.getByRole("log", { name: "Build output" });
  // The command waits for us: its first lines are shown while it runs.
  await log.getByText("building Pug World").waitFor({ timeout: 20_000 });
  await log.getByText("careful").waitFor();
  assert.doesNotMatch(await log.textContent(), /\bdone\b/);
  writeFileSync(join(projects, "Pug World", "go"), "");
  await log.getByText("done").waitFor({ timeout: 20_000 });
  await vcc.getByText("Finished with exit code 0").waitFor({ timeout: 20_000 });
  await shot(admin, "integrations-vcc");

  // The build's task page, opened afterwards, replays the whole output.
  const href = await vcc.getByRole("link", { name: "task" }).first().getAttribute("href");
  await admin.goto(server.base + href);
  const replayed = admin.getByRole("log", { name: "Build output" });
  await replayed.getByText("done").waitFor({ timeout: 10_000 });
  const text = await replayed.textContent();
  for (const line of ["building Pug World", "careful", "done"]) assert.equal(text.split("\n").filter((l) => l === line).length, 1, text);
  await admin.getByText("Finished with exit code 0").waitFor();
  await admin.locator("#task-status .badge", { hasText: "succeeded" }).waitFor();
});

test("VRChat's session asks for the emailed code and signs in with it", async () => {
  await admin.goto(server.base + "/integrations");
  const card = section(admin, "VRChat");
  await card.locator("#vrchat-state .badge", { hasText: "logged_out" }).waitFor();
  await card.getByRole("button", { name: "Sign in to VRChat" }).click();
  await card.locator("#vrchat-state .badge", { hasText: "needs_code" }).waitFor();
  await card.getByText("VRChat emailed a code").waitFor();
  assert.match(vrchat.state.emailedCode, /^\d{6}$/);
  // A wrong code is refused with the API's message; the prompt stays.
  const wrong = vrchat.state.emailedCode === "000000" ? "111111" : "000000";
  await card.getByLabel("Emailed code").fill(wrong);
  await card.getByRole("button", { name: "Send code" }).click();
  await card.getByRole("alert").waitFor();
  assert.match(await card.getByRole("alert").textContent(), /request/);
  await card.getByLabel("Emailed code").waitFor();
  await card.getByLabel("Emailed code").fill(vrchat.state.emailedCode);
  await card.getByRole("button", { name: "Send code" }).click();
  await card.locator("#vrchat-state .badge", { hasText: "logged_in" }).waitFor({ timeout: 10_000 });
  await card.getByText("Alice").waitFor();
  assert.equal(vrchat.state.logins, 1);
  await shot(admin, "integrations-vrchat");
});

test("an operator sees VCC and VRChat but not webhooks, and pages stay free of console errors", async () => {
  admin.errors = []; // the wrong code above was an error on purpose
  const made = await call(server, "POST", "/v1/users", {
    token: adminToken,
    body: { username: "oscar", role: "operator", password: "oscar-password-1234" },
  });
  assert.equal(made.status, 201, JSON.stringify(made.body));
  const page = await openPage(browser);
  await signIn(page, server, "oscar", "oscar-password-1234");
  await page.getByRole("link", { name: "Integrations" }).click();
  await section(page, "VCC projects").locator('tr[data-project="Pug World"]').waitFor();
  await section(page, "VRChat").locator("#vrchat-state .badge", { hasText: "logged_in" }).waitFor();
  assert.equal(await section(page, "Webhooks").count(), 0);
  assert.equal(await page.getByRole("button", { name: "Send code" }).count(), 0);
  assert.deepEqual(page.errors, []);
  await page.context().close();
  await admin.goto(server.base + "/integrations");
  await section(admin, "VRChat").locator("#vrchat-state .badge").waitFor();
  await within(10_000, "the page to finish loading", async () => (await admin.getByText("Loading…").count()) === 0);
  assert.deepEqual(admin.errors, []);
});
