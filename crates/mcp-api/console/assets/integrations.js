// Integrations (docs/integrations.md): each integration's health and breaker; outgoing webhooks
// (the signing secret shown once, when created; the delivery log, live; redeliver); VCC projects
// with their packages, a build and its live output; and the VRChat session, with the prompt for
// the code VRChat emails. Admins manage; operators see what their role may read.

import { get, post, api, ApiFailure } from "./api.js";
import { subscribe } from "./live.js";
import { h, replace, loading, empty, failure, when, badge, table, field } from "./dom.js";
import { live, items, throttled } from "./ops.js";
import { buildLog } from "./tasks.js";

const ADMIN = ["admin"]; // integrations:manage
const VCC_MANAGERS = ["admin", "operator"]; // vcc:manage

export function integrations(root, { role }) {
  const admin = ADMIN.includes(role);
  const parts = [];
  root.append(h("h1", {}, "Integrations"));
  if (admin) {
    const health = live("Integrations", "/v1/integrations", (v) => {
      const list = items(v);
      return list.length
        ? table([["Name", (i) => i.name], ["Kind", (i) => i.kind], ["Enabled", (i) => (i.enabled ? "yes" : "no")],
                 ["Health", (i) => badge(String(i.health?.state ?? i.health?.status ?? "unknown"))],
                 ["Breaker", (i) => badge(String(i.breaker?.state ?? i.breaker ?? "closed"))]], list)
        : empty("No integrations configured.");
    }, ["system.health", "system.breakers"]);
    parts.push(health);
    root.append(health.section);
    parts.push(webhooks(root));
  }
  parts.push(vcc(root, role));
  parts.push(vrchat(root, admin));
  return () => parts.forEach((p) => p.stop());
}

function webhooks(root) {
  const created = h("div", { "aria-live": "polite" });
  const log = h("div", {});
  let open = null; // the webhook whose delivery log is shown
  const hooks = live("Webhooks", "/v1/webhooks", (v) => {
    const list = items(v);
    return list.length
      ? table([
          ["URL", (w) => h("code", {}, w.url)],
          ["Events", (w) => (w.events || []).join(", ")],
          ["State", (w) => badge(w.enabled ? "active" : "disabled")],
          ["Created", (w) => when(w.created_at)],
          ["", (w) => h("div", { class: "actions tight" },
            h("button", { type: "button", onclick: () => show(w) }, "Deliveries"),
            h("button", { type: "button", class: "danger", onclick: () => remove(w) }, "Delete"))],
        ], list, (w) => ({ "data-webhook": w.url }))
      : empty("No webhooks.");
  });

  async function remove(w) {
    if (!confirm(`Delete the webhook to ${w.url}? Nothing more is delivered to it.`)) return;
    try {
      await api("DELETE", `/v1/webhooks/${w.id}`);
      replace(created, h("p", { class: "ok" }, `Deleted the webhook to ${w.url}.`));
      if (open?.id === w.id) show(null);
    } catch (e) {
      replace(created, failure(e));
    }
    hooks.load();
  }

  // The open log reloads as delivery tasks move (`tasks` carries every `webhook.deliver`).
  const reloadLog = throttled(() => open && deliveries(open, false), 500);
  let stopLive = null;
  function show(w) {
    open = w;
    stopLive?.();
    stopLive = null;
    if (!w) return replace(log);
    stopLive = subscribe("tasks", (e) => e.data?.type === "webhook.deliver" && reloadLog(), { lost: (e) => !e && reloadLog() });
    deliveries(w, true);
  }

  async function deliveries(w, first) {
    if (first) replace(log, loading());
    const out = h("div", { "aria-live": "polite" });
    try {
      const list = items(await get(`/v1/webhooks/${w.id}/deliveries`));
      if (open !== w) return;
      replace(log, h("section", { class: "card", "aria-label": "Deliveries" },
        h("h3", {}, "Deliveries to ", h("code", {}, w.url)),
        out,
        list.length
          ? table([
              ["At", (d) => when(d.created_at)],
              ["Event", (d) => d.event_type],
              ["Status", (d) => badge(String(d.status))],
              ["Attempts", (d) => d.attempts],
              ["Response", (d) => d.response_code ?? ""],
              ["Error", (d) => d.error || ""],
              ["Delivered", (d) => when(d.delivered_at)],
              ["", (d) => h("button", {
                type: "button",
                onclick: async () => {
                  try {
                    await post(`/v1/webhooks/${w.id}/deliveries/${d.id}/redeliver`);
                    replace(out, h("p", { class: "ok" }, `Redelivering ${d.event_type}.`));
                    reloadLog();
                  } catch (e) {
                    replace(out, failure(e));
                  }
                },
              }, "Redeliver")],
            ], list, (d) => ({ "data-delivery": d.id, "data-event": d.event_type }))
          : empty("No deliveries yet.")));
    } catch (e) {
      replace(log, failure(e));
    }
  }

  const form = h("form", {
    class: "row",
    onsubmit: async (e) => {
      e.preventDefault();
      const data = new FormData(form);
      replace(created);
      try {
        const events = String(data.get("events") || "task.*").split(",").map((s) => s.trim()).filter(Boolean);
        const v = await post("/v1/webhooks", { url: String(data.get("url")), events });
        // The secret exists only in this answer: shown now, kept nowhere.
        replace(created, h("div", { class: "ok secret" }, "Created. Its signing secret, shown only now: ",
          h("code", { id: "new-secret" }, v.secret || "")));
        form.reset();
        hooks.load();
      } catch (err) {
        replace(created, failure(err));
      }
    },
  },
  field("Webhook URL", h("input", { name: "url", type: "url", required: true, placeholder: "https://example.com/hook" })),
  field("Events", h("input", { name: "events", placeholder: "task.*" })),
  h("button", { type: "submit" }, "Create webhook"));

  hooks.section.insertBefore(h("div", {}, form, created), hooks.section.children[1]);
  root.append(hooks.section, log);
  return {
    stop: () => {
      hooks.stop();
      stopLive?.();
    },
  };
}

function vcc(root, role) {
  const out = h("div", { "aria-live": "polite" });
  const builds = h("div", {});
  const logs = [];
  const projects = live("VCC projects", "/v1/vcc/projects", (v) => {
    const list = items(v);
    return list.length
      ? table([
          ["Project", (p) => [h("strong", {}, p.name), h("br"), h("small", { class: "muted" }, p.path)]],
          ["Type", (p) => p.type || ""],
          ["Unity", (p) => p.unity_version || ""],
          ["Packages", (p) => (p.error
            ? h("span", { class: "bad" }, p.error)
            : h("details", {}, h("summary", {}, `${(p.packages || []).length} packages`),
                h("ul", { class: "packages" }, (p.packages || []).map((k) =>
                  h("li", {}, h("code", {}, k.name), " ", k.version ?? "", k.locked_version && k.locked_version !== k.version ? ` (locked ${k.locked_version})` : "")))))],
          ["", (p) => h("button", { type: "button", onclick: () => build(p) }, "Build")],
        ], list, (p) => ({ "data-project": p.name }))
      : empty("No VCC projects registered.");
  }, ["vcc.projects"]);

  async function build(p) {
    replace(out);
    try {
      const task = await post("/v1/tasks", { type: "vcc.build", payload: { project: p.id } });
      const log = buildLog(task.id);
      logs.push(log);
      builds.prepend(h("section", { class: "card", "aria-label": `Build of ${p.name}` },
        h("h3", {}, "Build of ", p.name, " · ", h("a", { href: "/tasks/" + task.id }, "task")),
        log.el));
    } catch (e) {
      replace(out, failure(e));
    }
  }

  if (VCC_MANAGERS.includes(role)) {
    const form = h("form", {
      class: "row",
      onsubmit: async (e) => {
        e.preventDefault();
        replace(out);
        try {
          const p = await post("/v1/vcc/projects", { path: String(new FormData(form).get("path")) });
          replace(out, h("p", { class: "ok" }, `Registered ${p.name}.`));
          form.reset();
        } catch (err) {
          replace(out, failure(err));
        }
        projects.load();
      },
    },
    field("Project folder", h("input", { name: "path", required: true, placeholder: "/home/me/Unity/My World" })),
    h("button", { type: "submit" }, "Register project"));
    projects.section.insertBefore(form, projects.section.children[1]);
  }
  projects.section.append(out, builds);
  root.append(projects.section);
  return {
    stop: () => {
      projects.stop();
      logs.forEach((l) => l.stop());
    },
  };
}

function vrchat(root, admin) {
  const body = h("div", {}, loading());
  const out = h("div", { "aria-live": "polite" });
  const section = h("section", { class: "card" }, h("h2", {}, "VRChat"), body, out);
  root.append(section);

  async function act(call) {
    replace(out);
    try {
      draw(await call());
    } catch (e) {
      replace(out, failure(e));
      load();
    }
  }

  function draw(v) {
    const state = h("dl", { class: "facts" },
      h("dt", {}, "Session"), h("dd", { id: "vrchat-state" }, badge(v.state)),
      v.display_name ? [h("dt", {}, "Signed in as"), h("dd", {}, v.display_name, " ", h("small", { class: "muted" }, v.user_id))] : null,
      v.reason ? [h("dt", {}, "Why"), h("dd", {}, v.reason)] : null,
      h("dt", {}, "Breaker"), h("dd", {}, badge(v.breaker)));
    let prompt = null;
    if (v.state === "needs_code") {
      const emailed = (v.methods || []).includes("emailOtp");
      const form = h("form", {
        class: "row",
        onsubmit: (e) => {
          e.preventDefault();
          act(() => post("/v1/vrchat/auth/code", { code: String(new FormData(form).get("code")).trim() }));
        },
      },
      field(emailed ? "Emailed code" : "Authenticator code",
        h("input", { name: "code", required: true, inputmode: "numeric", autocomplete: "one-time-code", disabled: !admin })),
      h("button", { type: "submit", disabled: !admin }, "Send code"));
      prompt = [
        h("p", {}, emailed
          ? "VRChat emailed a code to the account's address. Enter it to finish signing in."
          : `VRChat asks for a two-factor code (${(v.methods || []).join(", ")}).`),
        admin ? form : h("p", { class: "muted" }, "An admin enters it."),
      ];
    }
    replace(body, state, prompt,
      admin && v.state !== "logged_in" && v.state !== "needs_code"
        ? h("div", { class: "actions" }, h("button", { type: "button", onclick: () => act(() => post("/v1/vrchat/auth/login")) }, "Sign in to VRChat"))
        : null,
      h("div", { class: "actions" }, h("button", { type: "button", class: "ghost", onclick: load }, "Refresh")));
    if (prompt && admin) body.querySelector("input[name=code]")?.focus();
  }

  // Without an account the status is a 404, which a browser reports as an error: the task types
  // of VRChat's web API (not those of OSC, which needs no account) say first whether there is one.
  function load() {
    get("/v1/routes")
      .then((v) => items(v).some((r) => /^vrchat\.(world|user|instance)\.get$/.test(r.type)))
      .then((configured) => (configured ? get("/v1/vrchat/status").then(draw) : replace(body, empty("No VRChat account is configured."))))
      .catch((e) => replace(body, e instanceof ApiFailure && e.code === "vrchat_not_configured"
        ? empty("No VRChat account is configured.")
        : failure(e)));
  }
  load();
  return { stop: () => {} };
}
