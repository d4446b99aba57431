// Operations pages: the overview, queues, workers and routes, memory, integrations, and a plain
// listing for pages of features a node may not have (shown only when their route answers).

import { get, post, api, current } from "./api.js";
import { subscribe } from "./live.js";
import { h, replace, loading, empty, failure, when, pretty, badge, table, snippet, field } from "./dom.js";

const STAFF = ["admin", "operator"];
const STATUSES = ["scheduled", "queued", "running", "succeeded", "failed", "dead", "cancelled"];

/** The first array in an API answer (`{"tasks":[…]}`, `{"webhooks":[…]}`…). */
const items = (v) => (Array.isArray(v) ? v : Object.values(v || {}).find(Array.isArray) || []);

/** Runs `load` now and again (at most every `ms`) whenever `poke` is called. */
function throttled(load, ms = 1000) {
  let timer = null;
  return () => {
    if (timer) return;
    timer = setTimeout(() => {
      timer = null;
      load();
    }, ms);
  };
}

/** A section that loads `path` and draws it, again on each live event of `channels`. */
function live(title, path, draw, channels = []) {
  const body = h("div", {}, loading());
  const section = h("section", { class: "card" }, h("h2", {}, title), body);
  const load = () =>
    get(path)
      .then((v) => replace(body, draw(v)))
      .catch((e) => replace(body, failure(e)));
  load();
  const poke = throttled(load);
  const unsubs = channels.map((c) => subscribe(c, poke));
  return { section, stop: () => unsubs.forEach((u) => u()) };
}

function queueTable(v) {
  const queues = Object.entries(v.queues || {});
  if (!queues.length) return empty("No tasks yet.");
  return table(
    [["Queue", ([q]) => h("a", { href: "/tasks?queue=" + encodeURIComponent(q) }, q)],
     ...STATUSES.map((s) => [s, ([, c]) => c[s] ?? 0])],
    queues,
  );
}

function routeTable(v) {
  const routes = items(v);
  if (!routes.length) return empty("No routes.");
  return table(
    [
      ["Task type", (r) => r.type ?? r.task_type],
      ["Runs on", (r) => r.target],
      ["Workers", (r) => (r.workers || []).map((w) => `${w.subject} @ ${w.node}: ${w.outstanding}/${w.concurrency}`).join(", ") || "—"],
      ["Breaker", (r) => badge(String(r.breaker))],
    ],
    routes,
  );
}

function healthTable(v) {
  return [
    h("p", {}, "Node ", h("code", {}, v.node_id), " is ", badge(v.status)),
    table(
      [
        ["Dependency", (d) => d.name],
        ["State", (d) => badge(String(d.state))],
        ["Critical", (d) => (d.critical ? "yes" : "no")],
        ["Since", (d) => when(d.since)],
        ["Last error", (d) => d.last_error || ""],
      ],
      v.dependencies || [],
    ),
  ];
}

const ms = (v) => (v == null ? "—" : `${v} ms`);
const clock = (iso) => new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });

/** Throughput and pickup latency per minute over the last 15 minutes: `GET /v1/stats`, which
 * the database computes over every task of the cluster. */
function recent(v) {
  const minutes = v.minutes || [];
  const sum = (k) => minutes.reduce((n, m) => n + (m[k] || 0), 0);
  const finished = sum("succeeded") + sum("dead");
  const busy = minutes.filter((m) => m.succeeded || m.failed || m.dead).reverse();
  const latest = busy.find((m) => m.pickup_p50_ms != null);
  return [
    h("dl", { class: "facts" },
      h("dt", {}, "Finished"), h("dd", {}, `${finished} (${(finished / (v.window_minutes || 15)).toFixed(1)} per minute)`),
      h("dt", {}, "Succeeded / failed / dead"), h("dd", {}, `${sum("succeeded")} / ${sum("failed")} / ${sum("dead")}`),
      h("dt", {}, "Pickup latency p50 / p95"),
      h("dd", {}, latest ? `${ms(latest.pickup_p50_ms)} / ${ms(latest.pickup_p95_ms)} (at ${clock(latest.minute)})` : "—")),
    busy.length
      ? table(
          [
            ["Minute", (m) => clock(m.minute)],
            ["Succeeded", (m) => m.succeeded],
            ["Failed", (m) => m.failed],
            ["Dead", (m) => m.dead],
            ["Pickup p50", (m) => ms(m.pickup_p50_ms)],
            ["Pickup p95", (m) => ms(m.pickup_p95_ms)],
          ],
          busy,
        )
      : empty("Nothing finished in the last 15 minutes."),
  ];
}

export function overview(root, { role }) {
  root.append(h("h1", {}, "Overview"));
  if (!STAFF.includes(role)) {
    root.append(
      h("p", {}, "Signed in as ", current().subject, ". See ", h("a", { href: "/tasks" }, "your tasks"),
        " and ", h("a", { href: "/memory" }, "memory"), "."),
    );
    return null;
  }
  const parts = [
    live("Queues", "/v1/queues", queueTable, ["tasks"]),
    live("Last 15 minutes", "/v1/stats?window=15m", recent, ["tasks"]),
    live("Health", "/v1/health", healthTable, ["system.health"]),
    live("Workers and breakers", "/v1/routes", routeTable, ["system.breakers", "tasks"]),
  ];
  root.append(h("div", { class: "grid" }, parts.map((p) => p.section)));
  return () => parts.forEach((p) => p.stop());
}

export function queues(root) {
  root.append(h("h1", {}, "Queues"));
  const p = live("Tasks per queue and status", "/v1/queues", queueTable, ["tasks"]);
  root.append(p.section);
  return p.stop;
}

export function workers(root) {
  root.append(h("h1", {}, "Workers"));
  const p = live("Routes, workers and breakers", "/v1/routes", routeTable, ["system.breakers", "tasks"]);
  root.append(p.section);
  return p.stop;
}

export function memory(root, { query, go }) {
  const q = query.get("q") || "";
  const conversation = query.get("conversation") || "";
  const results = h("div", {});
  root.append(
    h("h1", {}, "Memory"),
    h("form", {
      class: "filters",
      role: "search",
      onsubmit: (e) => {
        e.preventDefault();
        const value = String(new FormData(e.target).get("q") || "");
        go("/memory" + (value ? "?q=" + encodeURIComponent(value) : ""));
      },
    },
    field("Search messages", h("input", { name: "q", type: "search", value: q })),
    h("button", { type: "submit" }, "Search")),
    results,
  );
  const stops = [];
  if (q) {
    replace(results, loading());
    get("/v1/search/messages?q=" + encodeURIComponent(q))
      .then((v) => {
        const hits = items(v);
        replace(results, hits.length
          ? h("ol", { class: "hits" }, hits.map((m) => h("li", {},
              h("a", { href: "/memory?conversation=" + m.conversation_id }, m.author || m.role || "message"),
              " · ", when(m.created_at), h("br"), snippet(m.snippet || ""))))
          : empty("No messages match."));
      })
      .catch((e) => replace(results, failure(e)));
  } else if (conversation) {
    const p = live("Messages", `/v1/conversations/${encodeURIComponent(conversation)}/messages?limit=100`, (v) => {
      const msgs = items(v);
      return msgs.length
        ? h("ol", { class: "messages" }, msgs.map((m) => h("li", {}, h("strong", {}, m.author || m.role), " ",
            h("small", { class: "muted" }, when(m.created_at)), h("p", {}, m.content))))
        : empty("No messages.");
    }, ["conversation:" + conversation]);
    results.append(h("p", {}, h("a", { href: "/memory" }, "« Conversations")), p.section);
    stops.push(p.stop);
  } else {
    const p = live("Conversations", "/v1/conversations?limit=100", (v) => {
      const list = items(v);
      return list.length
        ? table([["Title", (c) => h("a", { href: "/memory?conversation=" + c.id }, c.title || c.id)],
                 ["Participants", (c) => (c.participants || []).join(", ")],
                 ["Created", (c) => when(c.created_at)]], list)
        : empty("No conversations yet.");
    }, ["memory"]);
    results.append(p.section);
    stops.push(p.stop);
  }
  return () => stops.forEach((s) => s());
}

export function integrations(root) {
  root.append(h("h1", {}, "Integrations"));
  const health = live("Integrations", "/v1/integrations", (v) => {
    const list = items(v);
    return list.length
      ? table([["Name", (i) => i.name], ["Kind", (i) => i.kind], ["Enabled", (i) => (i.enabled ? "yes" : "no")],
               ["Health", (i) => badge(String(i.health?.state ?? i.health?.status ?? "unknown"))],
               ["Breaker", (i) => badge(String(i.breaker?.state ?? "closed"))]], list)
      : empty("No integrations configured.");
  }, ["system.health", "system.breakers"]);

  // Webhooks: the secret is shown once, when created.
  const hooksBody = h("div", {}, loading());
  const created = h("div", { "aria-live": "polite" });
  const loadHooks = () =>
    get("/v1/webhooks")
      .then((v) => {
        const list = items(v);
        replace(hooksBody, list.length
          ? table([["URL", (w) => w.url], ["Events", (w) => (w.events || w.filter || []).join?.(", ") ?? ""],
                   ["Created", (w) => when(w.created_at)],
                   ["", (w) => h("button", { type: "button", onclick: () => deliveries(w.id) }, "Deliveries")]], list)
          : empty("No webhooks."));
      })
      .catch((e) => replace(hooksBody, failure(e)));
  const log = h("div", {});
  async function deliveries(id) {
    replace(log, loading());
    try {
      const list = items(await get(`/v1/webhooks/${id}/deliveries`));
      replace(log, h("h3", {}, "Deliveries"), list.length
        ? table([["At", (d) => when(d.created_at || d.at)], ["Event", (d) => d.event_type || d.type || ""],
                 ["Status", (d) => badge(String(d.status ?? d.state ?? ""))],
                 ["", (d) => h("button", { type: "button", onclick: () => post(`/v1/webhooks/${id}/deliveries/${d.id}/redeliver`).then(() => deliveries(id)).catch((e) => replace(log, failure(e))) }, "Redeliver")]], list)
        : empty("No deliveries yet."));
    } catch (e) {
      replace(log, failure(e));
    }
  }
  const form = h("form", {
    class: "row",
    onsubmit: async (e) => {
      e.preventDefault();
      const data = new FormData(e.target);
      try {
        const v = await post("/v1/webhooks", { url: String(data.get("url")), events: String(data.get("events") || "task.*").split(",").map((s) => s.trim()).filter(Boolean) });
        replace(created, h("p", { class: "ok" }, "Created. Its signing secret, shown only now: ", h("code", {}, v.secret || "")));
        loadHooks();
      } catch (err) {
        replace(created, failure(err));
      }
    },
  },
  field("URL", h("input", { name: "url", type: "url", required: true })),
  field("Events", h("input", { name: "events", placeholder: "task.*" })),
  h("button", { type: "submit" }, "Create webhook"));
  loadHooks();

  const vcc = live("VCC projects", "/v1/vcc/projects", (v) => {
    const list = items(v);
    return list.length
      ? table([["Name", (p) => p.name || p.id], ["Path", (p) => p.path || ""], ["Packages", (p) => Object.keys(p.packages || p.dependencies || {}).length]], list)
      : empty("No VCC projects registered.");
  }, ["vcc.projects"]);

  const vrcBody = h("div", {}, loading());
  const loadVrc = () =>
    get("/v1/integrations")
      .then((v) => items(v).some((i) => i.kind === "vrchat" || i.name === "vrchat"))
      .then((configured) => (configured ? get("/v1/vrchat/status") : null))
      .then((v) => {
        if (v === null) return replace(vrcBody, empty("No VRChat account is configured."));
        const needsCode = JSON.stringify(v).includes("code");
        replace(vrcBody, pretty(v), needsCode
          ? h("form", { class: "row", onsubmit: async (e) => {
              e.preventDefault();
              try {
                await post("/v1/vrchat/auth/code", { code: String(new FormData(e.target).get("code")) });
                loadVrc();
              } catch (err) {
                vrcBody.append(failure(err));
              }
            } }, field("Emailed code", h("input", { name: "code", inputmode: "numeric", autocomplete: "one-time-code" })), h("button", { type: "submit" }, "Send code"))
          : null);
      })
      .catch((e) => replace(vrcBody, failure(e)));
  loadVrc();

  root.append(
    health.section,
    h("section", { class: "card" }, h("h2", {}, "Webhooks"), form, created, hooksBody, log),
    vcc.section,
    h("section", { class: "card" }, h("h2", {}, "VRChat"), vrcBody),
  );
  return () => {
    health.stop();
    vcc.stop();
  };
}

/** A page for a feature this node may not have: its list, as the API gives it. */
export function listing(path, title) {
  return (root) => {
    root.append(h("h1", {}, title[0].toUpperCase() + title.slice(1)));
    const body = h("div", {}, loading());
    root.append(body);
    api("GET", path)
      .then((v) => {
        const list = items(v);
        if (!list.length) return replace(body, empty(`No ${title}.`));
        const keys = Object.keys(list[0]).filter((k) => typeof list[0][k] !== "object").slice(0, 6);
        replace(body, table(keys.map((k) => [k, (r) => String(r[k] ?? "")]), list));
      })
      .catch((e) => replace(body, failure(e)));
    return null;
  };
}
