// The web console, end to end: the real binary on a fresh data directory, Debian's Chromium, and
// what a person does with it. Run with `npm test` after `cargo build --bin mkww-mcp`.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startServer, call, login, launch, openPage, signIn, shot, within, SHOTS } from "./harness.js";

let server;
let browser;
let admin; // the admin's page, signed in once
let adminToken;
const USER = { username: "olga", password: "olga-password-1234" };
/** In the page: whether a text node says just `null` or `undefined` (a value appended unchecked). */
const strayText = () => {
  const walk = document.createTreeWalker(document.querySelector("main"), NodeFilter.SHOW_TEXT);
  for (let n = walk.nextNode(); n; n = walk.nextNode()) if (/^(null|undefined)$/.test(n.textContent.trim())) return true;
  return false;
};

before(async () => {
  server = await startServer();
  browser = await launch();
  adminToken = await login(server, "admin", server.password);
  const made = await call(server, "POST", "/v1/users", {
    token: adminToken,
    body: { username: USER.username, role: "user", password: USER.password },
  });
  assert.equal(made.status, 201, JSON.stringify(made.body));
  console.log(`screenshots: ${SHOTS}`);
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

test("the console and its assets carry a strict CSP, and unknown API paths stay JSON 404s", async () => {
  for (const path of ["/", "/tasks/xyz", "/admin/users", "/assets/app.js"]) {
    const res = await fetch(server.base + path);
    assert.equal(res.status, 200, path);
    const csp = res.headers.get("content-security-policy") || "";
    assert.match(csp, /script-src 'self'/, path);
    assert.match(csp, /frame-ancestors 'none'/, path);
    assert.doesNotMatch(csp, /unsafe-inline/, path);
  }
  const missing = await call(server, "GET", "/v1/nope");
  assert.equal(missing.status, 404);
  assert.equal(missing.body.error.code, "not_found");
});

test("an admin signs in with the printed password and sees the overview", async () => {
  admin = await openPage(browser);
  await admin.goto(server.base + "/tasks");
  // Not signed in: the sign-in page, which returns to the page asked for.
  await admin.getByRole("heading", { name: "Sign in" }).waitFor();
  await admin.getByLabel("Username").fill("admin");
  await admin.getByLabel("Password").fill("wrong password");
  await admin.getByRole("button", { name: "Sign in" }).click();
  await admin.getByRole("alert").filter({ hasText: "invalid_credentials" }).waitFor();
  await admin.getByLabel("Password").fill(server.password);
  await admin.getByRole("button", { name: "Sign in" }).click();
  await admin.getByRole("heading", { name: "Tasks" }).waitFor();
  assert.equal(new URL(admin.url()).pathname, "/tasks");
  // The token is in the tab's session storage, never in a URL.
  const stored = await admin.evaluate(() => sessionStorage.getItem("mkww.session"));
  assert.ok(JSON.parse(stored).access_token);
  assert.doesNotMatch(admin.url(), /token/);
  await admin.getByRole("link", { name: "Overview" }).click();
  await admin.getByRole("heading", { name: "Queues" }).waitFor();
  await admin.getByRole("columnheader", { name: "Dependency" }).waitFor();
  await within(10_000, "the live dot", async () => (await admin.locator(".live").getAttribute("data-state")) === "live");
  await shot(admin, "overview");
});

test("a task created from the form becomes succeeded without a reload", async () => {
  await admin.getByRole("link", { name: "Tasks" }).click();
  await admin.evaluate(() => (window.notReloaded = true));
  await admin.getByText("Create a task").first().click();
  await admin.getByLabel("Type").first().fill("sleep");
  // Bad JSON is caught before it is sent.
  await admin.getByLabel("Payload (JSON)").fill("{ms: 1}");
  await admin.getByRole("button", { name: "Create task" }).click();
  await admin.getByRole("alert").filter({ hasText: "not valid JSON" }).waitFor();
  // The API's own errors are shown with their code.
  await admin.getByLabel("Payload (JSON)").fill('{"ms": "soon"}');
  await admin.getByRole("button", { name: "Create task" }).click();
  await admin.getByRole("alert").filter({ hasText: "request" }).waitFor();
  await admin.getByLabel("Payload (JSON)").fill('{"ms": 1500}');
  await admin.getByRole("button", { name: "Create task" }).click();
  const link = admin.locator("p.ok a");
  await link.waitFor();
  const id = await link.textContent();
  const row = admin.locator(`tr[data-id="${id}"]`);
  // It sleeps 1.5 s: first shown queued or running, then succeeded, on the same page.
  const first = await row.locator(".badge").textContent();
  assert.ok(["queued", "running"].includes(first), first);
  await row.locator(".badge", { hasText: "succeeded" }).waitFor({ timeout: 20_000 });
  assert.equal(await admin.evaluate(() => window.notReloaded), true);
  await shot(admin, "tasks");
  await link.click();
  await admin.getByRole("heading", { name: "Payload" }).waitFor();
  await admin.locator("#task-status .badge", { hasText: "succeeded" }).waitFor();
});

test("the overview charts the last 15 minutes from the stats endpoint", async () => {
  // The task of the previous test succeeded: the database's per-minute series shows it.
  const asked = admin.waitForRequest((r) => r.url().includes("/v1/stats?window=15m"));
  await admin.getByRole("link", { name: "Overview" }).click();
  await asked;
  const card = admin.locator("section.card").filter({ has: admin.getByRole("heading", { name: "Last 15 minutes" }) });
  await card.getByRole("columnheader", { name: "Pickup p95" }).waitFor();
  const row = card.locator("tbody tr").first();
  await within(10_000, "a minute with a success", async () => Number(await row.locator("td").nth(1).textContent()) >= 1);
  assert.match(await row.locator("td").nth(4).textContent(), /^\d+ ms$/);
  assert.doesNotMatch(await card.textContent(), /newest 500/);
});

test("a dead task is retried from its page", async () => {
  const created = await call(server, "POST", "/v1/tasks", {
    token: adminToken,
    body: { type: "fail", payload: {}, max_attempts: 1 },
  });
  assert.equal(created.status, 201);
  const id = created.body.id;
  await admin.goto(`${server.base}/tasks/${id}`);
  await admin.locator("#task-status .badge", { hasText: "dead" }).waitFor({ timeout: 15_000 });
  await admin.getByRole("button", { name: "Retry" }).click();
  // It runs again (a second attempt, granted by the retry) and dies again, live.
  await admin.getByText("2 of 2").waitFor({ timeout: 15_000 });
  await admin.locator("#task-status .badge", { hasText: "dead" }).waitFor({ timeout: 15_000 });
  const after = await call(server, "GET", `/v1/tasks/${id}`, { token: adminToken });
  assert.equal(after.body.attempts, 2);
  await shot(admin, "task");
});

test("memory search shows highlighted snippets", async () => {
  const conv = await call(server, "POST", "/v1/conversations", { token: adminToken, body: { title: "ops", participants: ["ann"] } });
  assert.equal(conv.status, 201);
  const msg = await call(server, "POST", `/v1/conversations/${conv.body.id}/messages`, {
    token: adminToken,
    body: { author: "ann", content: "the deploy failed on staging <b>again</b>" },
  });
  assert.equal(msg.status, 201, JSON.stringify(msg.body));
  await admin.getByRole("link", { name: "Memory" }).click();
  await admin.getByRole("link", { name: "ops" }).waitFor();
  await admin.getByLabel("Search messages").fill("deploy");
  await admin.getByRole("button", { name: "Search" }).click();
  await admin.locator("mark", { hasText: "deploy" }).waitFor();
  // The message's own markup is text, not HTML.
  await admin.getByText("<b>again</b>").waitFor();
  assert.match(admin.url(), /\/memory\?q=deploy$/);
  await shot(admin, "memory");
});

test("an admin creates an API key, sees it once, and revokes it", async () => {
  await admin.getByRole("link", { name: "API keys" }).click();
  await admin.getByLabel("Key name").fill("ci-bot");
  await admin.getByRole("button", { name: "Create key" }).click();
  const key = (await admin.locator("#new-key").textContent()).trim();
  assert.match(key, /^mcp_/);
  assert.equal((await call(server, "GET", "/v1/auth/me", { token: key })).status, 200);
  const row = admin.locator('tr[data-key="ci-bot"]');
  await row.getByRole("button", { name: "Revoke" }).click();
  await row.locator(".badge", { hasText: "revoked" }).waitFor();
  await within(5_000, "the key to be refused", async () => (await call(server, "GET", "/v1/auth/me", { token: key })).status === 401);
  await shot(admin, "api-keys");
});

test("a task's page replays the history the server holds, and fills in what came before", async () => {
  const events = async (page) => page.locator("table.timeline tbody tr").evaluateAll((rows) =>
    rows.map((r) => `${r.dataset.event}:${r.cells[3].textContent === "recorded" ? "recorded" : "held"}`));
  // Never watched: nothing held; the task's own times tell the timeline.
  const done = await call(server, "POST", "/v1/tasks", { token: adminToken, body: { type: "echo", payload: { hi: 1 } } });
  assert.equal(done.status, 201);
  await within(15_000, "the task to succeed", async () =>
    (await call(server, "GET", `/v1/tasks/${done.body.id}`, { token: adminToken })).body.status === "succeeded");
  await admin.goto(`${server.base}/tasks/${done.body.id}`);
  await admin.locator('table.timeline tr[data-event="task.succeeded"]').waitFor({ timeout: 10_000 });
  assert.deepEqual(await events(admin), ["task.created:recorded", "task.started:recorded", "task.succeeded:recorded"]);

  // Watched from its page while it runs: its end is held, and replayed to a page opened later.
  const running = await call(server, "POST", "/v1/tasks", { token: adminToken, body: { type: "sleep", payload: { ms: 60000 } } });
  const id = running.body.id;
  await admin.goto(`${server.base}/tasks/${id}`);
  await admin.locator("#task-status .badge", { hasText: "running" }).waitFor({ timeout: 15_000 });
  await admin.locator("table.timeline").waitFor();
  assert.equal((await call(server, "POST", `/v1/tasks/${id}/cancel`, { token: adminToken })).status, 200);
  await admin.locator('table.timeline tr[data-event="task.cancelled"]').waitFor({ timeout: 10_000 });
  await admin.goto(`${server.base}/tasks`);
  await admin.goto(`${server.base}/tasks/${id}`);
  await admin.locator('table.timeline tr[data-event="task.cancelled"]').waitFor({ timeout: 10_000 });
  const replayed = await events(admin);
  assert.deepEqual(replayed.slice(-1), ["task.cancelled:held"], replayed.join());
  assert.equal(replayed.filter((e) => e.startsWith("task.cancelled")).length, 1, replayed.join());
  assert.equal(replayed[0], "task.created:recorded");
  await shot(admin, "task-timeline");
});

test("a task's timeline survives a reconnect: missed events come once, none twice", async () => {
  // The page's WebSocket runs through this proxy, which the test cuts and holds off.
  const page = await openPage(browser);
  let cut = false;
  const open = [];
  await page.routeWebSocket(/\/v1\/ws$/, (ws) => {
    if (cut) return ws.close({ code: 1011, reason: "down" });
    open.push(ws.connectToServer());
    open.push(ws);
  });
  await signIn(page, server, "admin", server.password);
  const created = await call(server, "POST", "/v1/tasks", { token: adminToken, body: { type: "sleep", payload: { ms: 60000 } } });
  assert.equal(created.status, 201);
  const id = created.body.id;
  await page.goto(`${server.base}/tasks/${id}`);
  await page.locator('table.timeline tr[data-event="task.started"]').waitFor({ timeout: 15_000 });
  cut = true;
  for (const ws of open.splice(0)) await ws.close({ code: 1011, reason: "down" }).catch(() => {});
  await within(10_000, "the page to notice", async () => (await page.locator(".live").getAttribute("data-state")) !== "live");
  // Cancelled while the page is away: the event is missed, then recovered with `since`.
  const cancelled = await call(server, "POST", `/v1/tasks/${id}/cancel`, { token: adminToken });
  assert.equal(cancelled.status, 200, JSON.stringify(cancelled.body));
  cut = false;
  await page.locator('table.timeline tr[data-event="task.cancelled"]').waitFor({ timeout: 30_000 });
  await page.locator("#task-status .badge", { hasText: "cancelled" }).waitFor();
  const types = await page.locator("table.timeline tbody tr").evaluateAll((rows) => rows.map((r) => r.dataset.event));
  assert.deepEqual(types, ["task.created", "task.started", "task.cancelled"]);
  // The cancellation came from the server's history (a held event carries the task's attempts).
  assert.equal(await page.locator('table.timeline tr[data-event="task.cancelled"] td').nth(2).textContent(), "1");
  page.errors = page.errors.filter((e) => !/WebSocket/.test(e)); // the cut itself
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test("schedules: created from the form with the API's errors shown, paused, fired, deleted", async () => {
  await admin.goto(server.base + "/schedules");
  await admin.getByText("No schedules yet.").waitFor();
  await admin.getByText("Create a schedule").click();
  await admin.getByLabel("Name").fill("nightly");
  await admin.getByLabel("Cron").fill("not a cron");
  // The task's JSON is checked before anything is sent.
  await admin.getByLabel("Task (JSON body of POST /v1/tasks)").fill('{type: "noop"}');
  await admin.getByRole("button", { name: "Create schedule" }).click();
  await admin.getByRole("alert").filter({ hasText: "not valid JSON" }).waitFor();
  // The API refuses the cron expression: its code, message and request id are shown.
  await admin.getByLabel("Task (JSON body of POST /v1/tasks)").fill('{"type": "noop", "payload": {}}');
  await admin.getByRole("button", { name: "Create schedule" }).click();
  const refused = admin.getByRole("alert").filter({ hasText: "invalid_cron" });
  await refused.waitFor();
  assert.match(await refused.textContent(), /request \S+/);
  await admin.getByLabel("Cron").fill("0 3 * * *");
  await admin.getByRole("button", { name: "Create schedule" }).click();
  await admin.getByText("Created nightly").waitFor();
  const row = admin.locator('tr[data-schedule="nightly"]');
  await row.locator(".badge", { hasText: "active" }).waitFor();

  await row.getByRole("button", { name: "Next 5" }).click();
  const times = admin.locator(".fire-times li");
  await within(5_000, "five fire times", async () => (await times.count()) === 5);
  assert.match(await times.first().textContent(), /T03:00:00Z/);

  await row.getByRole("button", { name: "Pause" }).click();
  await row.locator(".badge", { hasText: "paused" }).waitFor();
  await row.getByRole("button", { name: "Resume" }).click();
  await row.locator(".badge", { hasText: "active" }).waitFor();

  await row.getByRole("button", { name: "Trigger now" }).click();
  const fired = admin.locator("p.ok", { hasText: "Fired nightly" }).getByRole("link");
  await fired.waitFor();
  const taskId = await fired.textContent();
  const task = await call(server, "GET", `/v1/tasks/${taskId}`, { token: adminToken });
  assert.equal(task.body.type, "noop");
  await shot(admin, "schedules");

  await row.getByRole("button", { name: "Delete" }).click();
  await admin.getByText("No schedules yet.").waitFor();
  assert.equal((await call(server, "GET", "/v1/schedules/nightly", { token: adminToken })).status, 404);
});

test("a workflow's page shows every task's state live and cancels it", async () => {
  const made = await call(server, "POST", "/v1/workflows", {
    token: adminToken,
    body: {
      name: "release",
      tasks: [
        { key: "build", type: "sleep", payload: { ms: 1000 } },
        { key: "deploy", type: "sleep", payload: { ms: 60000 }, depends_on: ["build"] },
        { key: "announce", type: "noop", depends_on: ["deploy"] },
      ],
    },
  });
  assert.equal(made.status, 201, JSON.stringify(made.body));
  await admin.goto(server.base + "/workflows");
  await admin.getByRole("link", { name: "release" }).first().click();
  await admin.locator("#workflow-status .badge", { hasText: "running" }).waitFor();
  await admin.evaluate(() => (window.notReloaded = true));
  const state = (key) => admin.locator(`tr[data-key="${key}"] .badge`);
  // The first task finishes and the second starts, on this page as they happen.
  await state("build").filter({ hasText: "succeeded" }).waitFor({ timeout: 20_000 });
  await state("deploy").filter({ hasText: "running" }).waitFor({ timeout: 20_000 });
  assert.equal(await state("announce").textContent(), "waiting");
  await shot(admin, "workflow");
  await admin.getByRole("button", { name: "Cancel workflow" }).click();
  await admin.locator("#workflow-status .badge", { hasText: "cancelled" }).waitFor({ timeout: 10_000 });
  await state("deploy").filter({ hasText: "cancelled" }).waitFor({ timeout: 20_000 });
  await state("announce").filter({ hasText: "cancelled" }).waitFor({ timeout: 20_000 });
  assert.equal(await admin.getByRole("button", { name: "Cancel workflow" }).count(), 0);
  assert.equal(await admin.evaluate(() => window.notReloaded), true);
});

test("settings: an admin changes a runtime setting and a feature flag, errors shown", async () => {
  await admin.goto(server.base + "/settings");
  const row = admin.locator('tr[data-setting="breaker_min_calls"]');
  await row.waitFor();
  const input = row.getByLabel("New value of breaker_min_calls");
  const before = await input.inputValue();
  await input.fill("lots");
  await row.getByRole("button", { name: "Save" }).click();
  const refused = admin.getByRole("alert").filter({ hasText: "invalid_setting" });
  await refused.waitFor();
  assert.match(await refused.textContent(), /request \S+/);
  await input.fill(String(Number(before) + 3));
  await row.getByRole("button", { name: "Save" }).click();
  await row.locator(".badge", { hasText: "runtime" }).waitFor();
  assert.equal(await row.getByLabel("New value of breaker_min_calls").inputValue(), String(Number(before) + 3));
  assert.equal(await row.locator("td").nth(3).textContent(), before, "the configured value beneath");
  await row.getByRole("button", { name: "Reset" }).click();
  await within(10_000, "the setting to be back", async () =>
    (await row.locator(".badge").textContent()) !== "runtime" &&
    (await row.getByLabel("New value of breaker_min_calls").inputValue()) === before);

  const flags = admin.locator("section.card").filter({ has: admin.getByRole("heading", { name: "Set a flag" }) });
  await flags.getByLabel("Flag name").fill("no spaces, please");
  await flags.getByRole("button", { name: "Set flag" }).click();
  await flags.getByRole("alert").waitFor();
  assert.match(await flags.getByRole("alert").textContent(), /request \S+/);
  await flags.getByLabel("Flag name").fill("console.beta");
  await flags.getByLabel("Percentage (blank: everyone)").fill("25");
  await flags.getByLabel("Roles").fill("user");
  await flags.getByRole("button", { name: "Set flag" }).click();
  const flag = admin.locator('tr[data-flag="console.beta"]');
  await flag.locator(".badge", { hasText: "on" }).waitFor();
  assert.match(await flag.textContent(), /25 %/);
  await flag.getByRole("button", { name: "Switch off" }).click();
  await flag.locator(".badge", { hasText: "off" }).waitFor();
  const stored = await call(server, "GET", "/v1/flags", { token: adminToken });
  const entry = stored.body.flags.find((f) => f.name === "console.beta");
  assert.deepEqual([entry.enabled, entry.percentage, entry.roles], [false, 25, ["user"]]);
  await shot(admin, "settings");
  await flag.getByRole("button", { name: "Delete" }).click();
  await admin.getByText("Deleted console.beta.").waitFor();
  // The message comes with the answer; the list is read again after it.
  await within(10_000, "the flag's row to go", async () => (await flag.count()) === 0);
});

test("an operator reads settings and manages schedules, but changes no setting", async () => {
  const made = await call(server, "POST", "/v1/users", {
    token: adminToken,
    body: { username: "otto", role: "operator", password: "otto-password-1234" },
  });
  assert.equal(made.status, 201, JSON.stringify(made.body));
  const page = await openPage(browser);
  await signIn(page, server, "otto", "otto-password-1234");
  await page.getByRole("link", { name: "Settings", exact: true }).click();
  await page.locator('tr[data-setting="breaker_min_calls"]').waitFor();
  assert.equal(await page.getByRole("button", { name: "Save" }).count(), 0);
  assert.equal(await page.getByRole("heading", { name: "Set a flag" }).count(), 0);
  assert.equal(await page.evaluate(strayText), false);
  await page.getByRole("link", { name: "Schedules", exact: true }).click();
  await page.getByText("Create a schedule").waitFor();
  assert.equal(await page.evaluate(strayText), false);
  assert.equal(await page.getByRole("link", { name: "API keys" }).count(), 0);
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test("every page as an admin renders without console errors", async () => {
  admin.errors = []; // the refused password and payload above were errors on purpose
  for (const path of ["/", "/tasks", "/queues", "/workers", "/memory", "/integrations", "/schedules", "/workflows", "/settings", "/admin/users", "/admin/api-keys", "/admin/audit"]) {
    await admin.goto(server.base + path);
    await admin.locator("main h1").first().waitFor();
    await within(10_000, `${path} to finish loading`, async () => (await admin.getByText("Loading…").count()) === 0);
    assert.equal(await admin.getByRole("heading", { name: "Not found" }).count(), 0, path);
    assert.equal(await admin.evaluate(strayText), false, `${path} shows a stray "null" or "undefined"`);
    await shot(admin, path === "/" ? "overview" : path.slice(1).replace(/\//g, "-"));
  }
  // Pages of features the node has (its OpenAPI document lists their routes) are in the navigation.
  for (const name of ["Schedules", "Workflows", "Settings"]) {
    await within(5_000, `the ${name} link`, async () => (await admin.getByRole("link", { name, exact: true }).count()) === 1);
  }
  assert.deepEqual(admin.errors, []);
});

test("a user sees their own pages and no admin pages", async () => {
  const page = await openPage(browser);
  await signIn(page, server, USER.username, USER.password);
  await page.getByRole("link", { name: "Tasks", exact: true }).waitFor();
  for (const name of ["Users", "API keys", "Audit log", "Integrations", "Queues", "Schedules", "Settings"]) {
    assert.equal(await page.getByRole("link", { name }).count(), 0, name);
  }
  await page.goto(server.base + "/admin/users");
  await page.getByRole("heading", { name: "Not found" }).waitFor();
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test("sign out revokes the session", async () => {
  const page = await openPage(browser);
  await signIn(page, server, USER.username, USER.password);
  const { refresh_token } = JSON.parse(await page.evaluate(() => sessionStorage.getItem("mkww.session")));
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByRole("heading", { name: "Sign in" }).waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.getItem("mkww.session")), null);
  await within(5_000, "logout to revoke the refresh token", async () =>
    (await call(server, "POST", "/v1/auth/refresh", { body: { refresh_token } })).status === 401);
  await page.context().close();
});

test("an ended session returns to the sign-in page and then to the page that was open", async () => {
  const page = await openPage(browser);
  await signIn(page, server, USER.username, USER.password);
  // Tokens the server no longer honours: the next call fails, the refresh fails, the session ends.
  await page.evaluate(() => {
    const s = JSON.parse(sessionStorage.getItem("mkww.session"));
    sessionStorage.setItem("mkww.session", JSON.stringify({ ...s, access_token: "expired", refresh_token: "gone" }));
  });
  await page.goto(server.base + "/memory?q=deploy");
  await page.getByRole("heading", { name: "Sign in" }).waitFor();
  await page.getByLabel("Username").fill(USER.username);
  await page.getByLabel("Password").fill(USER.password);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Memory" }).waitFor();
  assert.equal(new URL(page.url()).pathname + new URL(page.url()).search, "/memory?q=deploy");
  await page.context().close();
});

test("on a phone, in the dark theme, pages fit the screen and keep a visible focus", async () => {
  const context = await browser.newContext({ viewport: { width: 390, height: 800 }, colorScheme: "dark" });
  const page = await context.newPage();
  const errors = [];
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  await page.goto(server.base + "/");
  await page.getByLabel("Username").fill("admin");
  await page.getByLabel("Password").fill(server.password);
  await page.getByRole("button", { name: "Sign in" }).click();
  for (const path of ["/", "/tasks", "/memory", "/admin/api-keys", "/schedules", "/workflows", "/settings", "/integrations"]) {
    await page.goto(server.base + path);
    await page.locator("main h1").first().waitFor();
    // Measured once the page's sections have loaded: a table arriving later can be what overflows.
    await page.waitForFunction(() =>
      ![...document.querySelectorAll("main [role=status]")].some((e) => e.textContent === "Loading…"));
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `${path} is ${overflow}px wider than the screen`);
  }
  const background = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  assert.equal(background, "rgb(20, 22, 26)");
  await page.keyboard.press("Tab");
  await page.keyboard.press("Tab");
  const outline = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
  assert.equal(outline, "solid");
  await shot(page, "phone-dark");
  assert.deepEqual(errors, []);
  await context.close();
});
