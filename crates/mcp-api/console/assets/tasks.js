// Tasks: the list (filters and cursor paging in the URL, live rows), the create form (JSON
// checked before it is sent, the API's errors shown as they come), and one task's page.

import { get, post, ApiFailure } from "./api.js";
import { subscribe } from "./live.js";
import { h, replace, loading, empty, failure, when, took, pretty, badge, table, field } from "./dom.js";

const STATUSES = ["scheduled", "queued", "running", "succeeded", "failed", "dead", "cancelled"];
const FINAL = ["succeeded", "dead", "cancelled"];
const STAFF = ["admin", "operator"];

/** Live updates of tasks: every task for staff, else each task by its own channel. */
function watch(role, ids, fn, lost) {
  if (STAFF.includes(role)) return [subscribe("tasks", fn, { lost })];
  return ids.map((id) => subscribe("task:" + id, fn, { lost }));
}

export function list(root, { query, role, go }) {
  const filters = {
    status: query.get("status") || "",
    type: query.get("type") || "",
    queue: query.get("queue") || "",
  };
  const cursor = query.get("cursor") || "";
  const body = h("div", {}, loading());
  const rows = new Map(); // id -> tr
  const seen = new Map(); // id -> the task as its latest event had it
  let unsubs = [];

  const filterForm = h(
    "form",
    {
      class: "filters",
      role: "search",
      onsubmit: (e) => {
        e.preventDefault();
        const p = new URLSearchParams();
        for (const [k, v] of new FormData(e.target)) if (v) p.set(k, String(v));
        go("/tasks" + (p.size ? "?" + p : ""));
      },
    },
    field(
      "Status",
      h("select", { name: "status" }, h("option", { value: "" }, "any"),
        STATUSES.map((s) => h("option", { value: s, selected: s === filters.status }, s))),
    ),
    field("Type", h("input", { name: "type", value: filters.type, placeholder: "any" })),
    field("Queue", h("input", { name: "queue", value: filters.queue, placeholder: "any" })),
    h("button", { type: "submit" }, "Filter"),
  );

  function row(t) {
    return h(
      "tr",
      { "data-id": t.id },
      h("td", {}, h("a", { href: "/tasks/" + t.id }, h("code", {}, t.id.slice(-12)))),
      h("td", {}, t.type),
      h("td", {}, t.queue),
      h("td", { class: "status" }, badge(t.status)),
      h("td", {}, `${t.attempts}/${t.max_attempts}`),
      h("td", {}, when(t.created_at)),
    );
  }

  function update(event) {
    let t = event.data;
    if (!t || !t.id) return;
    if (event.type === "task.created" && seen.has(t.id)) t = seen.get(t.id);
    else if (event.type !== "task.created") seen.set(t.id, t);
    const old = rows.get(t.id);
    const matches = (!filters.status || t.status === filters.status) &&
      (!filters.type || t.type === filters.type) && (!filters.queue || t.queue === filters.queue);
    if (old) {
      const fresh = row(t);
      old.replaceWith(fresh);
      rows.set(t.id, fresh);
    } else if (matches && !cursor && event.type === "task.created") {
      const tbody = body.querySelector("tbody");
      if (!tbody) return load();
      const fresh = row(t);
      tbody.prepend(fresh);
      rows.set(t.id, fresh);
    }
  }

  async function load() {
    unsubs.forEach((u) => u());
    unsubs = [];
    try {
      const p = new URLSearchParams();
      for (const [k, v] of Object.entries(filters)) if (v) p.set(k, v);
      if (cursor) p.set("cursor", cursor);
      p.set("limit", "50");
      const page = await get("/v1/tasks?" + p);
      rows.clear();
      const trs = page.tasks.map((t) => {
        const tr = row(t);
        rows.set(t.id, tr);
        return tr;
      });
      const next = new URLSearchParams(query);
      if (page.next_cursor) next.set("cursor", page.next_cursor);
      replace(
        body,
        page.tasks.length
          ? h("div", { class: "scroll" }, h("table", {},
              h("thead", {}, h("tr", {}, ["Task", "Type", "Queue", "Status", "Attempts", "Created"].map((c) => h("th", { scope: "col" }, c)))),
              h("tbody", {}, trs)))
          : empty("No tasks match."),
        h("nav", { class: "pager", "aria-label": "Pages" },
          cursor ? h("a", { href: "/tasks?" + new URLSearchParams([...query].filter(([k]) => k !== "cursor")) }, "« First page") : null,
          page.next_cursor ? h("a", { href: "/tasks?" + next }, "Next page »") : null),
      );
      // Events missed while the socket was away and no longer held: the page as it is now.
      const lost = (error) => !error && setTimeout(load, 0);
      unsubs = watch(role, page.tasks.filter((t) => !FINAL.includes(t.status)).map((t) => t.id), update, lost);
    } catch (e) {
      replace(body, failure(e));
    }
  }

  root.append(
    h("h1", {}, "Tasks"),
    createForm(role, (task) => {
      if (!STAFF.includes(role)) unsubs.push(...watch(role, [task.id], update));
      update({ type: "task.created", data: task });
    }),
    filterForm,
    body,
  );
  load();
  return () => unsubs.forEach((u) => u());
}

function createForm(role, created) {
  const out = h("div", { "aria-live": "polite" });
  const form = h(
    "form",
    {
      class: "card create",
      onsubmit: async (e) => {
        e.preventDefault();
        replace(out);
        const data = new FormData(form);
        let payload;
        try {
          payload = JSON.parse(String(data.get("payload") || "{}"));
        } catch (err) {
          replace(out, h("div", { class: "error", role: "alert" }, "Payload is not valid JSON: " + err.message));
          form.elements.payload.focus();
          return;
        }
        const body = { type: String(data.get("type")), payload };
        if (data.get("queue")) body.queue = String(data.get("queue"));
        if (data.get("max_attempts")) body.max_attempts = Number(data.get("max_attempts"));
        try {
          const task = await post("/v1/tasks", body);
          replace(out, h("p", { class: "ok" }, "Created ", h("a", { href: "/tasks/" + task.id }, task.id)));
          created(task);
        } catch (err) {
          replace(out, failure(err));
        }
      },
    },
    h("div", { class: "row" },
      field("Type", h("input", { name: "type", required: true, placeholder: "echo", list: "task-types" })),
      field("Queue", h("input", { name: "queue", placeholder: "default" })),
      field("Max attempts", h("input", { name: "max_attempts", type: "number", min: "1", max: "100" }))),
    h("datalist", { id: "task-types" }, ["echo", "noop", "fail", "sleep"].map((t) => h("option", { value: t }))),
    field("Payload (JSON)", h("textarea", { name: "payload", rows: "3", spellcheck: "false" }, "{}")),
    h("button", { type: "submit", class: "primary" }, "Create task"),
    out,
  );
  return h("details", { class: "creator" }, h("summary", {}, "Create a task"), form);
}

/** One task's page: its facts, actions, and its event timeline — the history the server still
 * holds for `task:{id}`, replayed from offset 0, then live (gap-free across reconnects). The bus
 * keeps a task's events only while someone watches that task, so transitions from before are
 * filled in from the times the task itself records. */
export function detail(root, { params, role }) {
  const id = params[0];
  const body = h("div", {}, loading());
  const timeline = []; // events from the bus, in order
  let task = null;
  let caught = false; // the held history has been delivered (or is known to be gone)
  let log = null;
  root.append(h("p", {}, h("a", { href: "/tasks" }, "« Tasks")), h("h1", {}, "Task ", h("code", {}, id)), body);

  function draw() {
    const t = task;
    const actions = h("div", { class: "actions" });
    const msg = h("div", { "aria-live": "polite" });
    if ((t.status === "failed" || t.status === "dead") && STAFF.includes(role)) {
      actions.append(h("button", { type: "button", onclick: () => act("retry") }, "Retry"));
    }
    if (!FINAL.includes(t.status)) {
      actions.append(h("button", { type: "button", class: "danger", onclick: () => act("cancel") }, "Cancel"));
    }
    async function act(what) {
      try {
        const before = timeline.length;
        const answer = await post(`/v1/tasks/${id}/${what}`);
        // Events may overtake the answer; the newest state wins.
        if (timeline.length === before) task = answer;
        draw();
      } catch (e) {
        replace(msg, failure(e));
      }
    }
    if (!log && /^vcc\.(build|deploy)$/.test(t.type)) log = buildLog(id);
    replace(
      body,
      h("dl", { class: "facts" },
        h("dt", {}, "Status"), h("dd", { id: "task-status" }, badge(t.status)),
        h("dt", {}, "Type"), h("dd", {}, t.type),
        h("dt", {}, "Queue"), h("dd", {}, t.queue),
        h("dt", {}, "Priority"), h("dd", {}, t.priority),
        h("dt", {}, "Attempts"), h("dd", {}, `${t.attempts} of ${t.max_attempts}`),
        h("dt", {}, "Created"), h("dd", {}, when(t.created_at), t.created_by ? ` by ${t.created_by}` : ""),
        h("dt", {}, "Run at"), h("dd", {}, when(t.run_at)),
        h("dt", {}, "Started"), h("dd", {}, when(t.started_at)),
        h("dt", {}, "Finished"), h("dd", {}, when(t.finished_at), t.finished_at ? ` (${took(t.started_at, t.finished_at)})` : ""),
        t.workflow_id ? [h("dt", {}, "Workflow"), h("dd", {}, h("a", { href: "/workflows/" + t.workflow_id }, t.workflow_key || t.workflow_id))] : null,
        t.progress ? [h("dt", {}, "Progress"), h("dd", {}, `${Math.round(t.progress.progress * 100)} %`, t.progress.message ? ` · ${t.progress.message}` : "")] : null,
        t.correlation_id ? [h("dt", {}, "Correlation"), h("dd", {}, h("code", {}, t.correlation_id))] : null,
        t.trace_id ? [h("dt", {}, "Trace"), h("dd", {}, h("code", {}, t.trace_id))] : null),
      actions,
      msg,
      h("h2", {}, "Payload"), pretty(t.payload),
      t.result !== null && t.result !== undefined ? [h("h2", {}, "Result"), pretty(t.result)] : null,
      t.error ? [h("h2", {}, "Error"), pretty(t.error)] : null,
      log ? [h("h2", {}, "Output"), log.el] : null,
      h("h2", {}, "Events"),
      events(),
    );
  }

  function events() {
    if (!caught && !timeline.length) return loading();
    // Transitions the bus did not hold (nobody watched the task then), from the task's own times.
    const held = new Set(timeline.map((e) => e.type));
    const recorded = [
      { type: "task.created", at: task.created_at },
      task.started_at && { type: "task.started", at: task.started_at },
      task.finished_at && FINAL.includes(task.status) && { type: "task." + task.status, at: task.finished_at },
    ].filter((e) => e && !held.has(e.type)).map((e) => ({ ...e, recorded: true }));
    const rows = [...recorded, ...timeline].sort((a, b) => new Date(a.at) - new Date(b.at));
    return [
      recorded.length
        ? h("p", { class: "muted" }, "Events marked “recorded” are the times the task keeps: its events are held only while someone watches it.")
        : null,
      eventTable(rows),
    ];
  }

  const unsub = subscribe("task:" + id, (event) => {
    timeline.push(event);
    if (event.data && event.data.id === id) task = event.data;
    if (event.type === "task.progress" && task) task = { ...task, progress: event.data };
    if (task) draw();
  }, {
    replay: true,
    caughtUp: () => {
      caught = true;
      if (task) draw();
    },
    lost: () => {
      // Events were missed and cannot be replayed: the task as it is now fills the gap.
      caught = true;
      get("/v1/tasks/" + id).then((t) => {
        task = t;
        draw();
      }).catch(() => {});
    },
  });
  get("/v1/tasks/" + id)
    .then((t) => {
      // Replayed events may have brought a newer state already.
      if (!task || !timeline.length) task = t;
      draw();
    })
    .catch((e) => replace(body, e instanceof ApiFailure && e.status === 404 ? empty("No such task.") : failure(e)));
  return () => {
    unsub();
    log?.stop();
  };
}

function eventTable(list) {
  return h("div", { class: "scroll" }, h("table", { class: "timeline" },
    h("thead", {}, h("tr", {}, ["When", "Event", "Attempts", "Detail"].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, list.map((e) => h("tr", { "data-event": e.type },
      h("td", {}, when(e.at)),
      h("td", {}, e.type),
      h("td", {}, e.data?.attempts ?? ""),
      h("td", {}, e.recorded ? h("span", { class: "muted" }, "recorded") : detailOf(e)))))));
}

function detailOf(e) {
  if (e.type === "task.progress") return `${Math.round((e.data?.progress ?? 0) * 100)} %${e.data?.message ? " · " + e.data.message : ""}`;
  if (e.data?.error?.message && /failed|dead|retrying|deferred/.test(e.type)) return e.data.error.message;
  return "";
}

/** The live output of a `vcc.build` or `vcc.deploy` run (`vcc.build:{task id}`), from its first
 * line. */
export function buildLog(taskId) {
  const pre = h("pre", { class: "log", role: "log", "aria-live": "polite", "aria-label": "Build output" });
  const state = h("p", { class: "muted" }, "Waiting for output…");
  const el = h("div", { class: "build-log" }, state, pre);
  const stop = subscribe("vcc.build:" + taskId, (event) => {
    if (event.type === "vcc.build.output") {
      replace(state, "Running…");
      for (const l of event.data?.lines || []) {
        pre.append(h("span", { class: l.stream === "stderr" ? "stderr" : null }, l.line + "\n"));
      }
      pre.scrollTop = pre.scrollHeight;
    } else if (event.type === "vcc.build.finished") {
      const d = event.data || {};
      replace(state, h("span", { class: d.error || d.exit_code ? "bad" : "ok" },
        d.error ? `Failed: ${d.error.code || "error"}` : `Finished with exit code ${d.exit_code}`,
        d.dropped ? ` (${d.dropped} lines dropped from the stream)` : ""));
    }
  }, {
    replay: true,
    lost: (error) => replace(state, error ? failure({ ...error, requestId: null }) : "Earlier output is no longer held; the task's result keeps its tail."),
  });
  return { el, stop };
}
