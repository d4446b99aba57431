// Workflows (docs/workflows.md): the list with cursor paging, and one workflow's page with every
// task's state, live — staff hear every task on `tasks`, others each unfinished task on its own
// channel, and the workflow's own events on `workflow:{id}` — and cancel.

import { get, post, ApiFailure } from "./api.js";
import { subscribe } from "./live.js";
import { h, replace, loading, empty, failure, when, badge, table } from "./dom.js";
import { throttled } from "./ops.js";

const STAFF = ["admin", "operator"]; // workflows:read:any
const FINAL_TASK = ["succeeded", "dead", "cancelled"];
/** A user's page follows at most this many of its unfinished tasks, each on its own channel. */
const MOST_WATCHED = 40;

export function list(root, { query, role }) {
  const cursor = query.get("cursor") || "";
  const body = h("div", {}, loading());
  root.append(h("h1", {}, "Workflows"), body);
  const load = async () => {
    try {
      const p = new URLSearchParams({ limit: "50" });
      if (cursor) p.set("cursor", cursor);
      const page = await get("/v1/workflows?" + p);
      const next = new URLSearchParams({ cursor: page.next_cursor || "" });
      replace(body,
        page.workflows.length
          ? table([
              ["Workflow", (w) => h("a", { href: "/workflows/" + w.id }, w.name || w.id)],
              ["Status", (w) => badge(w.status)],
              ["On failure", (w) => w.on_failure],
              ["Created", (w) => [when(w.created_at), w.created_by ? ` by ${w.created_by}` : ""]],
              ["Finished", (w) => when(w.finished_at)],
            ], page.workflows, (w) => ({ "data-id": w.id }))
          : empty("No workflows yet."),
        h("nav", { class: "pager", "aria-label": "Pages" },
          cursor ? h("a", { href: "/workflows" }, "« First page") : null,
          page.next_cursor ? h("a", { href: "/workflows?" + next }, "Next page »") : null));
    } catch (e) {
      replace(body, failure(e));
    }
  };
  load();
  if (!STAFF.includes(role)) return null;
  const poke = throttled(load);
  const stop = subscribe("workflows", poke, { lost: (e) => !e && poke() });
  return stop;
}

export function detail(root, { params, role }) {
  const id = params[0];
  const head = h("div", {}, loading());
  const tasks = h("div", {});
  const msg = h("div", { "aria-live": "polite" });
  root.append(h("p", {}, h("a", { href: "/workflows" }, "« Workflows")), h("h1", {}, "Workflow ", h("code", {}, id)), head, msg, h("h2", {}, "Tasks"), tasks);
  let workflow = null;
  const rows = new Map(); // task id -> tr
  const byId = new Map(); // task id -> task

  function drawHead() {
    const w = workflow;
    replace(head,
      h("dl", { class: "facts" },
        h("dt", {}, "Name"), h("dd", {}, w.name),
        h("dt", {}, "Status"), h("dd", { id: "workflow-status" }, badge(w.status)),
        h("dt", {}, "On failure"), h("dd", {}, w.on_failure),
        h("dt", {}, "Created"), h("dd", {}, when(w.created_at), w.created_by ? ` by ${w.created_by}` : ""),
        h("dt", {}, "Finished"), h("dd", {}, when(w.finished_at))),
      w.status === "running"
        ? h("div", { class: "actions" }, h("button", { type: "button", class: "danger", onclick: cancel }, "Cancel workflow"))
        : null);
  }

  async function cancel() {
    if (!confirm(`Cancel the workflow ${workflow.name}? Tasks not finished never run.`)) return;
    try {
      const d = await post(`/v1/workflows/${id}/cancel`);
      replace(msg, h("p", { class: "ok" }, "Cancelled."));
      show(d);
    } catch (e) {
      replace(msg, failure(e));
    }
  }

  function row(t) {
    return h("tr", { "data-id": t.id, "data-key": t.workflow_key },
      h("td", {}, h("strong", {}, t.workflow_key)),
      h("td", {}, h("a", { href: "/tasks/" + t.id }, h("code", {}, t.id.slice(-12)))),
      h("td", {}, t.type),
      h("td", { class: "status" }, badge(t.status)),
      h("td", {}, `${t.attempts}/${t.max_attempts}`),
      h("td", {}, when(t.started_at)),
      h("td", {}, when(t.finished_at)));
  }

  function update(t) {
    if (!t || t.workflow_id !== id || !rows.has(t.id)) return;
    byId.set(t.id, t);
    const fresh = row(t);
    rows.get(t.id).replaceWith(fresh);
    rows.set(t.id, fresh);
  }

  function show(d) {
    const { tasks: list, ...w } = d;
    workflow = w;
    drawHead();
    rows.clear();
    for (const t of list) {
      byId.set(t.id, t);
      rows.set(t.id, row(t));
    }
    replace(tasks, list.length
      ? h("div", { class: "scroll" }, h("table", {},
          h("thead", {}, h("tr", {}, ["Key", "Task", "Type", "Status", "Attempts", "Started", "Finished"].map((c) => h("th", { scope: "col" }, c)))),
          h("tbody", {}, [...rows.values()])))
      : empty("No tasks."));
  }

  async function load() {
    try {
      show(await get("/v1/workflows/" + id));
      if (!STAFF.includes(role)) watchTasks();
    } catch (e) {
      replace(head, e instanceof ApiFailure && e.status === 404 ? empty("No such workflow.") : failure(e));
    }
  }

  const reload = throttled(load);
  const lost = (e) => !e && reload();
  const onTask = (event) => {
    if (event.data?.id) update(event.data);
  };
  // Once a subscription holds, the page is read again: nothing before it is missed.
  const stops = [subscribe("workflow:" + id, (event) => {
    if (event.data && event.data.id === id && workflow) {
      workflow = { ...workflow, ...event.data };
      drawHead();
    }
    // Tasks added by a running one, and the settled ones, in their final form.
    reload();
  }, { lost, caughtUp: reload })];
  if (STAFF.includes(role)) stops.push(subscribe("tasks", onTask, { lost, caughtUp: reload }));
  const watched = new Map(); // task id -> unsubscribe
  function watchTasks() {
    const open = [...byId.values()].filter((t) => !FINAL_TASK.includes(t.status)).slice(0, MOST_WATCHED);
    for (const t of open) if (!watched.has(t.id)) watched.set(t.id, subscribe("task:" + t.id, onTask, { lost }));
  }

  load();
  return () => {
    stops.forEach((s) => s());
    watched.forEach((s) => s());
  };
}
