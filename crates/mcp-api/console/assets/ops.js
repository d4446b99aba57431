// Operations pages: the overview, queues, workers and routes, memory; and the parts other pages
// share (a section that loads a path and reloads on live events, throttled).

import { get, current } from "./api.js";
import { subscribe } from "./live.js";
import { h, replace, loading, empty, failure, when, badge, table, snippet, field } from "./dom.js";

const STAFF = ["admin", "operator"];
const STATUSES = ["scheduled", "queued", "running", "succeeded", "failed", "dead", "cancelled"];

/** The first array in an API answer (`{"tasks":[…]}`, `{"webhooks":[…]}`…). */
export const items = (v) => (Array.isArray(v) ? v : Object.values(v || {}).find(Array.isArray) || []);

/** Runs `load` now and again (at most every `ms`) whenever `poke` is called. */
export function throttled(load, ms = 1000) {
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
export function live(title, path, draw, channels = []) {
  const body = h("div", {}, loading());
  const section = h("section", { class: "card" }, h("h2", {}, title), body);
  const load = () =>
    get(path)
      .then((v) => replace(body, draw(v, load)))
      .catch((e) => replace(body, failure(e)));
  load();
  const poke = throttled(load);
  // Events missed while the socket was away and no longer held: load again.
  const unsubs = channels.map((c) => subscribe(c, poke, { lost: (e) => !e && poke() }));
  return { section, load, stop: () => unsubs.forEach((u) => u()) };
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
