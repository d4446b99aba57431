// Admin pages: users (create, change role, disable), API keys (the key shown once, revoke), and
// the audit log with its filters and cursor paging.

import { get, post, api } from "./api.js";
import { h, replace, loading, empty, failure, when, table, field, badge } from "./dom.js";

const ROLES = ["admin", "operator", "service", "user"];

function roleSelect(name, selected, onchange) {
  return h("select", { name, onchange, "aria-label": "Role" },
    ROLES.map((r) => h("option", { value: r, selected: r === selected }, r)));
}

export function users(root) {
  const body = h("div", {}, loading());
  const out = h("div", { "aria-live": "polite" });
  const load = () =>
    get("/v1/users")
      .then((v) =>
        replace(body, table([
          ["Username", (u) => u.username],
          ["Role", (u) => roleSelect("role", u.role, (e) => change(u, { role: e.target.value }))],
          ["State", (u) => (u.disabled ? badge("disabled") : badge("active"))],
          ["Created", (u) => when(u.created_at)],
          ["", (u) => h("button", { type: "button", onclick: () => change(u, { disabled: !u.disabled }) }, u.disabled ? "Enable" : "Disable")],
        ], v.users || [])))
      .catch((e) => replace(body, failure(e)));
  async function change(user, patch) {
    try {
      await api("PATCH", "/v1/users/" + user.id, patch);
      replace(out, h("p", { class: "ok" }, `Updated ${user.username}.`));
    } catch (e) {
      replace(out, failure(e));
    }
    load();
  }
  const form = h("form", {
    class: "row",
    onsubmit: async (e) => {
      e.preventDefault();
      const data = new FormData(e.target);
      const request = { username: String(data.get("username")), role: String(data.get("role")) };
      if (data.get("password")) request.password = String(data.get("password"));
      try {
        const v = await post("/v1/users", request);
        replace(out, h("p", { class: "ok" }, `Created ${v.user.username}.`,
          v.password ? [" Password, shown only now: ", h("code", {}, v.password)] : null));
        e.target.reset();
        load();
      } catch (err) {
        replace(out, failure(err));
      }
    },
  },
  field("New username", h("input", { name: "username", required: true })),
  field("Role", roleSelect("role", "user")),
  field("Password (blank: generated)", h("input", { name: "password", type: "password", autocomplete: "new-password" })),
  h("button", { type: "submit" }, "Create user"));
  root.append(h("h1", {}, "Users"), h("section", { class: "card" }, form, out), body);
  load();
  return null;
}

export function apiKeys(root) {
  const body = h("div", {}, loading());
  const out = h("div", { "aria-live": "polite" });
  const load = () =>
    get("/v1/api-keys")
      .then((v) => {
        const keys = v.api_keys || [];
        replace(body, keys.length
          ? table([
              ["Name", (k) => k.name],
              ["Prefix", (k) => h("code", {}, k.prefix)],
              ["Role", (k) => k.role],
              ["Created", (k) => when(k.created_at)],
              ["Last used", (k) => when(k.last_used_at)],
              ["State", (k) => (k.revoked_at ? badge("revoked") : badge("active"))],
              ["", (k) => (k.revoked_at ? "" : h("button", { type: "button", class: "danger", onclick: () => revoke(k) }, "Revoke"))],
            ], keys, (k) => ({ "data-key": k.name }))
          : empty("No API keys."));
      })
      .catch((e) => replace(body, failure(e)));
  async function revoke(key) {
    if (!confirm(`Revoke the key ${key.name}? Clients using it stop at once.`)) return;
    try {
      await api("DELETE", "/v1/api-keys/" + key.id);
      replace(out, h("p", { class: "ok" }, `Revoked ${key.name}.`));
    } catch (e) {
      replace(out, failure(e));
    }
    load();
  }
  const form = h("form", {
    class: "row",
    onsubmit: async (e) => {
      e.preventDefault();
      const data = new FormData(e.target);
      try {
        const v = await post("/v1/api-keys", { name: String(data.get("name")), role: String(data.get("role")) });
        replace(out, h("div", { class: "ok secret" }, "Created. The key, shown only now: ", h("code", { id: "new-key" }, v.key)));
        e.target.reset();
        load();
      } catch (err) {
        replace(out, failure(err));
      }
    },
  },
  field("Key name", h("input", { name: "name", required: true })),
  field("Role", roleSelect("role", "service")),
  h("button", { type: "submit" }, "Create key"));
  root.append(h("h1", {}, "API keys"), h("section", { class: "card" }, form, out), body);
  load();
  return null;
}

export function audit(root, { query, go }) {
  const body = h("div", {}, loading());
  const form = h("form", {
    class: "filters",
    role: "search",
    onsubmit: (e) => {
      e.preventDefault();
      const p = new URLSearchParams();
      for (const [k, v] of new FormData(e.target)) if (v) p.set(k, String(v));
      go("/admin/audit" + (p.size ? "?" + p : ""));
    },
  },
  field("Action", h("input", { name: "action", value: query.get("action") || "", placeholder: "auth.login" })),
  field("Principal", h("input", { name: "principal", value: query.get("principal") || "" })),
  h("button", { type: "submit" }, "Filter"));
  root.append(h("h1", {}, "Audit log"), form, body);
  const p = new URLSearchParams();
  for (const k of ["action", "principal", "cursor"]) if (query.get(k)) p.set(k, query.get(k));
  get("/v1/audit?" + p)
    .then((v) => {
      const next = new URLSearchParams(query);
      if (v.next_cursor) next.set("cursor", v.next_cursor);
      replace(body,
        v.events.length
          ? table([["When", (e) => when(e.at)], ["Action", (e) => e.action], ["Principal", (e) => e.principal || ""],
                   ["IP", (e) => e.ip || ""], ["Request", (e) => h("code", {}, e.request_id || "")]], v.events)
          : empty("No audit events match."),
        v.next_cursor ? h("nav", { class: "pager" }, h("a", { href: "/admin/audit?" + next }, "Next page »")) : null);
    })
    .catch((e) => replace(body, failure(e)));
  return null;
}
