// Starts the real `mkww-mcp` binary (built by cargo) on a fresh data directory and a free port,
// reads the first administrator's password from what it prints, and drives Debian's Chromium
// through playwright-core. Every wait polls against a deadline.

import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { chromium } from "playwright-core";

const TARGET = process.env.CARGO_TARGET_DIR || join(process.env.HOME || "/root", ".cache/mkww-mcp/target");
export const BINARY = process.env.MKWW_MCP_BIN || join(TARGET, "debug", "mkww-mcp");
export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
];

/** Screenshots of the pages go here; the folder is printed, not deleted. */
export const SHOTS = process.env.CONSOLE_SCREENSHOTS || mkdtempSync(join(tmpdir(), "mkww-console-shots-"));
mkdirSync(SHOTS, { recursive: true });

export async function within(ms, what, probe) {
  const deadline = Date.now() + ms;
  let last;
  while (Date.now() < deadline) {
    try {
      const v = await probe();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}` + (last ? `: ${last.message}` : ""));
}

/** The binary on a fresh data directory; `env` adds configuration (`MCP_*` variables). */
export async function startServer(env = {}) {
  const dataDir = mkdtempSync(join(tmpdir(), "mkww-console-"));
  const child = spawn(BINARY, ["serve", "--listen", "127.0.0.1:0"], {
    cwd: dataDir,
    env: {
      PATH: process.env.PATH,
      HOME: process.env.HOME,
      MCP_DATA_DIR: dataDir,
      MCP_LOG_FORMAT: "json",
      MCP_LOG_LEVEL: "info",
      MCP_JWT_SECRET: randomBytes(32).toString("hex"),
      MCP_VRCHAT_OSC_LISTEN: "",
      MCP_SHUTDOWN_DRAIN_MS: "0",
      ...env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  let err = "";
  child.stdout.on("data", (d) => (out += d));
  child.stderr.on("data", (d) => (err += d));
  const exited = new Promise((r) => child.on("exit", r));
  const base = await within(60_000, "the server's address", async () => {
    if (child.exitCode !== null) throw new Error("server exited:\n" + err);
    for (const line of out.split("\n")) {
      if (!line.includes('"listening"')) continue;
      const entry = JSON.parse(line);
      if (entry.message === "listening") return "http://" + entry.addr;
    }
    return null;
  });
  const password = await within(10_000, "the printed admin password", () => err.match(/password: (\S+)/)?.[1]);
  return {
    base,
    password,
    dataDir,
    async stop() {
      child.kill("SIGTERM");
      await Promise.race([exited, new Promise((r) => setTimeout(r, 10_000))]);
      if (child.exitCode === null) child.kill("SIGKILL");
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** A JSON call to the API. */
export async function call(server, method, path, { token, body } = {}) {
  const headers = {};
  if (token) headers.authorization = "Bearer " + token;
  if (body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(server.base + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  return { status: res.status, headers: res.headers, body: text ? JSON.parse(text) : null };
}

export async function login(server, username, password) {
  const { status, body } = await call(server, "POST", "/v1/auth/login", { body: { username, password } });
  if (status !== 200) throw new Error(`login ${username}: ${status} ${JSON.stringify(body)}`);
  return body.access_token;
}

export async function launch() {
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: FLAGS });
}

/** A page in a fresh context that records every console error and uncaught exception. */
export async function openPage(browser) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  const page = await context.newPage();
  page.errors = [];
  page.on("console", (m) => {
    if (m.type() === "error") page.errors.push(`${page.url()}: ${m.text()}`);
  });
  page.on("pageerror", (e) => page.errors.push(`${page.url()}: ${e.message}`));
  page.on("dialog", (d) => d.accept());
  return page;
}

export async function signIn(page, server, username, password) {
  await page.goto(server.base + "/");
  await page.getByLabel("Username").fill(username);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("button", { name: "Sign out" }).waitFor();
}

export async function shot(page, name) {
  await page.screenshot({ path: join(SHOTS, name + ".png"), fullPage: true });
}
