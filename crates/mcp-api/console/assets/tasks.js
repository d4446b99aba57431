// Tasks: the list (filters and cursor paging in the URL, live rows), the create form (JSON
// checked before it is sent, the API's errors shown as they come), and one task's page.

import { get, post, ApiFailure } from "./api.js";
import { subscribe } from "./live.js";
import { h, replace, loading, empty, failure, when, took, pretty, badge, table, field } from "./dom.js";

const STATUSES = ["scheduled", "queued", "running", "succeeded", "failed", "dead", "cancelled"];
const FINAL = ["succeeded", "dead", "cancelled"];
const STAFF = ["admin", "operator"];

/** Live updates of tasks: every task for staff, else each task by its own channel. */
function watch(role, ids, fn) {
  if (STAFF.includes(role)) return [subscribe("tasks", fn)];
  return ids.map((id) => subscribe("task:" + id, fn));
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
      unsubs = watch(role, page.tasks.filter((t) => !FINAL.includes(t.status)).map((t) => t.id), update);
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

export function detail(root, { params, role }) {
  const id = params[0];
  const body = h("div", {}, loading());
  const timeline = [];
  let task = null;
  root.append(h("p", {}, h("a", { href: "/tasks" }, "« Tasks")), h("h1", {}, "Task ", h("code", {}, id)), body);

  function draw() {
    const t = task;
    const actions = h("div", { class: "actions" });
    const msg = h("div", { "aria-live": "polite" });
    if (t.status === "failed" || t.status === "dead") {
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
        t.correlation_id ? [h("dt", {}, "Correlation / trace"), h("dd", {}, h("code", {}, t.correlation_id))] : null),
      actions,
      msg,
      h("h2", {}, "Payload"), pretty(t.payload),
      t.result !== null && t.result !== undefined ? [h("h2", {}, "Result"), pretty(t.result)] : null,
      t.error ? [h("h2", {}, "Error"), pretty(t.error)] : null,
      h("h2", {}, "Events"),
      timeline.length
        ? table([["When", (e) => when(e.at)], ["Event", (e) => e.type], ["Attempts", (e) => e.data?.attempts ?? ""]], timeline)
        : empty("No events seen since this page opened."),
    );
  }

  const unsub = subscribe("task:" + id, (event) => {
    timeline.push(event);
    if (event.data && event.data.id === id) task = event.data;
    if (task) draw();
  });
  get("/v1/tasks/" + id)
    .then((t) => {
      task = t;
      draw();
    })
    .catch((e) => replace(body, e instanceof ApiFailure && e.status === 404 ? empty("No such task.") : failure(e)));
  return unsub;
}
