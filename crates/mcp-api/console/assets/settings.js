// Runtime settings and feature flags (docs/operations.md): each setting's effective value and
// where it comes from, changed or reset by an admin; the flags, set, switched and deleted by an
// admin. Live on `system.settings` and `system.flags`; operators read, admins change.

import { api } from "./api.js";
import { h, replace, empty, failure, when, badge, table, field } from "./dom.js";
import { live } from "./ops.js";

const MANAGERS = ["admin"]; // settings:manage
const ROLES = ["admin", "operator", "service", "user"];

const show = (v) => (typeof v === "string" ? v : JSON.stringify(v));

/** What the admin typed: JSON when it is JSON (`5`, `true`, `["a"]`, `"x"`), else the text. */
function parseValue(text) {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

const list = (text) => String(text || "").split(",").map((s) => s.trim()).filter(Boolean);

export function settings(root, { role }) {
  const may = MANAGERS.includes(role);
  const out = h("div", { "aria-live": "polite" });
  const flagOut = h("div", { "aria-live": "polite" });

  async function change(key, value) {
    replace(out);
    try {
      const v = await api("PATCH", "/v1/settings", { [key]: value });
      const now = v.settings?.[key];
      replace(out, h("p", { class: "ok" }, value === null
        ? `Reset ${key}: ${show(now?.value)} (${now?.source}).`
        : `Set ${key} to ${show(now?.value)}.`));
    } catch (e) {
      replace(out, failure(e));
    }
    values.load();
  }

  function editor(key, s) {
    const form = h("form", {
      class: "inline",
      onsubmit: (e) => {
        e.preventDefault();
        change(key, parseValue(String(new FormData(form).get("value"))));
      },
    },
    h("input", { name: "value", value: show(s.value), "aria-label": `New value of ${key}`, spellcheck: "false" }),
    h("button", { type: "submit" }, "Save"),
    s.source === "runtime"
      ? h("button", { type: "button", onclick: () => change(key, null) }, "Reset")
      : null);
    return form;
  }

  const values = live("Runtime settings", "/v1/settings", (v) => {
    const rows = Object.entries(v.settings || {});
    if (!rows.length) return empty("No runtime settings.");
    return table([
      ["Setting", ([k]) => h("code", {}, k)],
      ["Value", ([k, s]) => (may ? editor(k, s) : h("code", {}, show(s.value)))],
      ["Source", ([, s]) => badge(s.source)],
      ["Configured", ([, s]) => (s.configured === undefined ? "" : h("code", {}, show(s.configured)))],
    ], rows, ([k]) => ({ "data-setting": k }));
  }, ["system.settings"]);

  async function putFlag(name, flag, done) {
    replace(flagOut);
    try {
      const entry = await api("PUT", "/v1/flags/" + encodeURIComponent(name), flag);
      replace(flagOut, h("p", { class: "ok" }, `Flag ${entry.name} is ${entry.enabled ? "on" : "off"}${entry.percentage != null ? ` for ${entry.percentage} %` : ""}.`));
      done?.();
    } catch (e) {
      replace(flagOut, failure(e));
    }
    flags.load();
  }

  async function deleteFlag(name) {
    if (!confirm(`Delete the flag ${name}?`)) return;
    replace(flagOut);
    try {
      await api("DELETE", "/v1/flags/" + encodeURIComponent(name));
      replace(flagOut, h("p", { class: "ok" }, `Deleted ${name}.`));
    } catch (e) {
      replace(flagOut, failure(e));
    }
    flags.load();
  }

  const bare = ({ name, updated_at, updated_by, ...flag }) => flag;
  const flags = live("Feature flags", "/v1/flags", (v) => {
    const rows = v.flags || [];
    if (!rows.length) return empty("No feature flags.");
    return table([
      ["Flag", (f) => h("code", {}, f.name)],
      ["State", (f) => badge(f.enabled ? "on" : "off")],
      ["Rollout", (f) => (f.percentage != null ? `${f.percentage} %` : "everyone")],
      ["Roles", (f) => (f.roles || []).join(", ")],
      ["Subjects", (f) => (f.subjects || []).join(", ")],
      ["Updated", (f) => [when(f.updated_at), f.updated_by ? ` by ${f.updated_by}` : ""]],
      ["", (f) => (may
        ? h("div", { class: "actions tight" },
            h("button", { type: "button", onclick: () => putFlag(f.name, { ...bare(f), enabled: !f.enabled }) }, f.enabled ? "Switch off" : "Switch on"),
            h("button", { type: "button", class: "danger", onclick: () => deleteFlag(f.name) }, "Delete"))
        : "")],
    ], rows, (f) => ({ "data-flag": f.name }));
  }, ["system.flags"]);

  const flagForm = h("form", {
    class: "row",
    onsubmit: (e) => {
      e.preventDefault();
      const data = new FormData(flagForm);
      const flag = { enabled: data.get("enabled") === "on" };
      if (data.get("percentage") !== "") flag.percentage = Number(data.get("percentage"));
      const roles = list(data.get("roles"));
      if (roles.length) flag.roles = roles;
      const subjects = list(data.get("subjects"));
      if (subjects.length) flag.subjects = subjects;
      putFlag(String(data.get("name")), flag, () => flagForm.reset());
    },
  },
  field("Flag name", h("input", { name: "name", required: true, placeholder: "integration.discord" })),
  h("label", { class: "check" }, h("input", { type: "checkbox", name: "enabled", checked: true }), " Enabled"),
  field("Percentage (blank: everyone)", h("input", { name: "percentage", type: "number", min: "0", max: "100" })),
  field("Roles", h("input", { name: "roles", placeholder: ROLES.join(", ") })),
  field("Subjects", h("input", { name: "subjects", placeholder: "alice, bot-1" })),
  h("button", { type: "submit" }, "Set flag"));

  root.append(
    h("h1", {}, "Settings"),
    may ? out : h("p", { class: "muted" }, "Only an admin may change settings and flags."),
    values.section,
    flags.section,
    may ? h("section", { class: "card" }, h("h2", {}, "Set a flag"), flagForm, flagOut) : flagOut,
  );
  return () => {
    values.stop();
    flags.stop();
  };
}
