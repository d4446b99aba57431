/**
 * Test support: starts the real `mkww-mcp` binary (from the cargo build) on a free port with a
 * fresh data directory, makes tokens for it, and a TCP proxy that can cut connections.
 */

import { spawn, execFileSync, type ChildProcess } from "node:child_process";
import { createHmac, randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer, connect, type Server as NetServer, type Socket } from "node:net";
import { homedir, tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";

export const JWT_SECRET = "sdk-tests-secret-".padEnd(48, "x");

/** The binary the tests run: $MKWW_MCP_BIN, else $CARGO_TARGET_DIR/debug/mkww-mcp. */
export function binaryPath(): string {
  if (process.env.MKWW_MCP_BIN) {
    return process.env.MKWW_MCP_BIN;
  }
  const targetDir = process.env.CARGO_TARGET_DIR ?? join(homedir(), ".cache", "mkww-mcp", "target");
  return join(targetDir, "debug", "mkww-mcp");
}

export interface Hub {
  base: string;
  dataDir: string;
  /** An access token signed for this hub (`mkww-mcp token`). */
  token(role: "admin" | "operator" | "service" | "user", sub?: string): string;
  stop(): Promise<void>;
}

/** Starts a hub; `env` adds or overrides `MCP_*` settings. */
export async function startHub(env: Record<string, string> = {}): Promise<Hub> {
  const dataDir = mkdtempSync(join(tmpdir(), "mkww-sdk-"));
  const hubEnv: NodeJS.ProcessEnv = {
    ...process.env,
    MCP_DATA_DIR: dataDir,
    MCP_LOG_FORMAT: "json",
    MCP_LOG_LEVEL: "info",
    MCP_JWT_SECRET: JWT_SECRET,
    MCP_VRCHAT_OSC_LISTEN: "",
    MCP_SHUTDOWN_DRAIN_MS: "0",
    ...env,
  };
  delete hubEnv.RUST_LOG;
  const child = spawn(binaryPath(), ["serve", "--listen", "127.0.0.1:0"], {
    cwd: dataDir,
    env: hubEnv,
    stdio: ["ignore", "pipe", "pipe"],
  });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const base = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("the hub did not report its address within 60 s")), 60_000);
    child.once("error", reject);
    child.once("exit", (code) => reject(new Error(`the hub exited (${code}) before listening`)));
    createInterface({ input: child.stdout! }).on("line", (line) => {
      try {
        const entry = JSON.parse(line) as { message?: string; addr?: string };
        if (entry.message === "listening" && entry.addr !== undefined) {
          clearTimeout(timer);
          resolve(`http://${entry.addr}`);
        }
      } catch {
        // not a log line
      }
    });
    child.stderr!.on("data", (chunk: Buffer) => process.stderr.write(chunk));
  });
  return {
    base,
    dataDir,
    token: (role, sub = `sdk-${role}`) =>
      execFileSync(binaryPath(), ["token", "--role", role, "--sub", sub, "--ttl", "1h"], {
        cwd: dataDir,
        env: hubEnv,
        encoding: "utf8",
      }).trim(),
    stop: async () => {
      await stopChild(child, exited);
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

async function stopChild(child: ChildProcess, exited: Promise<void>): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) {
    return;
  }
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
  await exited;
  clearTimeout(timer);
}

/** An access token that expired a minute ago, signed like the hub's (HS256, `JWT_SECRET`). */
export function expiredToken(sub: string, role: string): string {
  const now = Math.floor(Date.now() / 1000);
  const encode = (value: object) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const header = encode({ alg: "HS256", typ: "JWT" });
  const claims = encode({ sub, role, iss: "mkww-mcp", aud: "mkww-mcp", iat: now - 120, nbf: now - 120, exp: now - 60, jti: randomUUID() });
  const signature = createHmac("sha256", JWT_SECRET).update(`${header}.${claims}`).digest("base64url");
  return `${header}.${claims}.${signature}`;
}

/**
 * A TCP proxy in front of a hub: `cut()` drops every connection through it (the client sees
 * 1006), `block()` refuses new ones until `unblock()`, `target` may point at another hub.
 */
export class Proxy {
  base = "";
  private readonly server: NetServer;
  private readonly sockets = new Set<Socket>();
  private blocked = false;

  constructor(public target: string) {
    this.server = createServer((client) => {
      if (this.blocked) {
        client.destroy();
        return;
      }
      const { hostname, port } = new URL(this.target);
      const upstream = connect(Number(port), hostname);
      for (const [a, b] of [
        [client, upstream],
        [upstream, client],
      ] as const) {
        this.sockets.add(a);
        a.pipe(b);
        a.on("error", () => b.destroy());
        a.on("close", () => {
          this.sockets.delete(a);
          b.destroy();
        });
      }
    });
  }

  async start(): Promise<void> {
    await new Promise<void>((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    const address = this.server.address();
    if (address === null || typeof address === "string") {
      throw new Error("the proxy has no port");
    }
    this.base = `http://127.0.0.1:${address.port}`;
  }

  block(): void {
    this.blocked = true;
  }

  unblock(): void {
    this.blocked = false;
  }

  /** Drops every open connection at once, without a WebSocket close frame. */
  cut(): void {
    for (const socket of this.sockets) {
      socket.destroy();
    }
  }

  async stop(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

/** Polls `check` until it returns a value other than undefined/false, or fails at the deadline. */
export async function eventually<T>(what: string, check: () => T | undefined | false | Promise<T | undefined | false>, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined && value !== false) {
      return value;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
