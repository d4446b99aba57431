// Local stand-ins for the outside services the console shows, speaking their real wire format
// (as the Rust tests' fakes do: crates/mcp-integrations/tests/fake_vrchat, the webhook receiver
// of crates/mkww-mcp/tests/webhooks.rs), on Node's own `http` module.

import { createServer } from "node:http";
import { createHmac, randomBytes, randomInt } from "node:crypto";

function stop(server) {
  server.closeAllConnections();
  return new Promise((r) => server.close(r));
}

function listen(server) {
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => resolve(`http://127.0.0.1:${server.address().port}`));
  });
}

function readBody(req) {
  return new Promise((resolve) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => resolve(Buffer.concat(chunks)));
  });
}

function json(res, status, body, headers = {}) {
  res.writeHead(status, { "content-type": "application/json", ...headers });
  res.end(JSON.stringify(body));
}

/**
 * A webhook receiver: checks each delivery's Standard Webhooks signature
 * (`v1,base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))`, key = base64 after `whsec_`)
 * with the secret the test gives it, and records what came.
 */
export async function webhookReceiver() {
  const received = [];
  let secret = "";
  const server = createServer(async (req, res) => {
    const body = await readBody(req);
    const id = req.headers["webhook-id"] || "";
    const timestamp = req.headers["webhook-timestamp"] || "";
    const signatures = String(req.headers["webhook-signature"] || "").split(" ");
    const key = Buffer.from(secret.replace(/^whsec_/, ""), "base64");
    const expected = "v1," + createHmac("sha256", key).update(`${id}.${timestamp}.`).update(body).digest("base64");
    let event = null;
    try {
      event = JSON.parse(body.toString("utf8"));
    } catch {
      // recorded as null
    }
    received.push({ id, event, verified: key.length > 0 && signatures.includes(expected) });
    res.writeHead(204);
    res.end();
  });
  const base = await listen(server);
  return {
    url: base + "/hook",
    received,
    useSecret(s) {
      secret = s;
    },
    close: () => stop(server),
  };
}

export const VRCHAT = {
  username: "alice@example.com",
  password: "pa:ss word",
  userId: "usr_c1644b5b-3ca4-45b4-97c6-a2a0de70d469",
};

const vrchatError = (res, status, message) =>
  json(res, status, { error: { message: `"${message}"`, status_code: status } });

function cookies(req) {
  const out = {};
  for (const pair of String(req.headers.cookie || "").split(";")) {
    const at = pair.indexOf("=");
    if (at > 0) out[pair.slice(0, at).trim()] = pair.slice(at + 1).trim();
  }
  return out;
}

/**
 * VRChat's web API as far as signing in goes: Basic credentials (both halves URL-encoded), the
 * `auth` cookie, and a second factor by a code it "emails" (kept in `emailedCode` for the test
 * to read, as a person would read their mail).
 */
export async function fakeVrchat() {
  const sessions = new Set();
  const verified = new Set();
  const state = { emailedCode: "", logins: 0 };
  const me = () => ({
    id: VRCHAT.userId,
    displayName: "Alice",
    username: "alice",
    bio: "",
    friends: ["usr_2"],
    onlineFriends: [],
    status: "active",
    tags: ["system_trust_basic"],
    twoFactorAuthEnabled: true,
  });
  const authenticated = (req) => {
    const c = cookies(req);
    return sessions.has(c.auth) && verified.has(c.auth) && c.twoFactorAuth === `tfa_${c.auth}`;
  };
  const server = createServer(async (req, res) => {
    const body = await readBody(req);
    const path = new URL(req.url, "http://x").pathname;
    if (req.method === "GET" && path === "/api/1/auth/user") {
      const basic = String(req.headers.authorization || "").replace(/^Basic /, "");
      if (req.headers.authorization?.startsWith("Basic ")) {
        const expected = `${encodeURIComponent(VRCHAT.username)}:${encodeURIComponent(VRCHAT.password)}`;
        if (Buffer.from(basic, "base64").toString("utf8") !== expected) {
          return vrchatError(res, 401, "Invalid Username/Email or Password");
        }
        state.logins += 1;
        const token = "authcookie_" + randomBytes(12).toString("hex");
        sessions.add(token);
        state.emailedCode = String(randomInt(0, 1_000_000)).padStart(6, "0");
        return json(res, 200, { requiresTwoFactorAuth: ["emailOtp"] }, {
          "set-cookie": `auth=${token}; Path=/; HttpOnly; Max-Age=604800`,
        });
      }
      if (authenticated(req)) return json(res, 200, me());
      return vrchatError(res, 401, "Missing Credentials");
    }
    if (req.method === "POST" && path === "/api/1/auth/twofactorauth/emailotp/verify") {
      const auth = cookies(req).auth;
      if (!sessions.has(auth)) return vrchatError(res, 401, "Missing Credentials");
      let code = "";
      try {
        code = String(JSON.parse(body.toString("utf8")).code || "");
      } catch {
        // an empty code is refused below
      }
      if (!state.emailedCode || code !== state.emailedCode) return vrchatError(res, 400, "Invalid 2FA code");
      verified.add(auth);
      return json(res, 200, { verified: true }, { "set-cookie": `twoFactorAuth=tfa_${auth}; Path=/; HttpOnly` });
    }
    return vrchatError(res, 404, "Not Found");
  });
  const base = await listen(server);
  return { base: base + "/api/1", state, close: () => stop(server) };
}
