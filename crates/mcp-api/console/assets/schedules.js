// Schedules (docs/scheduling.md): the list, live on `system.schedules`; create (the task body's
// JSON checked before it is sent, the API's errors shown with their request id), pause and
// resume, trigger now, delete, and the next five fire times.

import { get, post, api } from "./api.js";
import { h, replace, empty, failure, when, badge, table, field } from "./dom.js";
import { live } from "./ops.js";

const WRITERS = ["admin", "operator"]; // schedules:write

export function schedules(root, { role }) {
  const may = WRITERS.includes(role);
  const out = h("div", { "aria-live": "polite" });
  const next = h("div", { "aria-live": "polite" });

  async function act(what, s, call) {
    replace(out);
    try {
      const answer = await call();
      if (what === "trigger") {
        replace(out, h("p", { class: "ok" }, `Fired ${s.name}: task `, h("a", { href: "/tasks/" + answer.id }, answer.id), "."));
      } else {
        replace(out, h("p", { class: "ok" }, `${what} ${s.name}.`));
      }
    } catch (e) {
      replace(out, failure(e));
    }
    list.load();
  }

  async function upcoming(s) {
    replace(next, h("p", { class: "muted", role: "status" }, "Loading…"));
    try {
      const v = await get(`/v1/schedules/${encodeURIComponent(s.name)}/next?n=5`);
      replace(next, h("section", { class: "card", "aria-label": `Next fire times of ${s.name}` },
        h("h2", {}, `Next fire times of ${s.name}`),
        v.next.length
          ? h("ol", { class: "fire-times" }, v.next.map((t) => h("li", {}, h("time", { datetime: t }, when(t)), ` (${t})`)))
          : empty("It never fires again (paused, or the expression matches no future time).")));
    } catch (e) {
      replace(next, failure(e));
    }
  }

  const list = live("Schedules", "/v1/schedules", (v) => {
    const rows = v.schedules || [];
    if (!rows.length) return empty("No schedules yet.");
    const name = (s) => encodeURIComponent(s.name);
    return table([
      ["Name", (s) => s.name],
      ["Cron", (s) => h("code", {}, s.cron)],
      ["Time zone", (s) => s.timezone],
      ["Task", (s) => h("code", {}, s.task?.type ?? "")],
      ["State", (s) => badge(s.paused ? "paused" : "active")],
      ["Next", (s) => when(s.next_fire_at)],
      ["Last fired", (s) => when(s.last_fired_at)],
      ["Source", (s) => s.source],
      ["", (s) => h("div", { class: "actions tight" },
        h("button", { type: "button", onclick: () => upcoming(s) }, "Next 5"),
        may ? [
          s.paused
            ? h("button", { type: "button", onclick: () => act("Resumed", s, () => post(`/v1/schedules/${name(s)}/resume`)) }, "Resume")
            : h("button", { type: "button", onclick: () => act("Paused", s, () => post(`/v1/schedules/${name(s)}/pause`)) }, "Pause"),
          h("button", { type: "button", onclick: () => act("trigger", s, () => post(`/v1/schedules/${name(s)}/trigger`)) }, "Trigger now"),
          h("button", {
            type: "button",
            class: "danger",
            onclick: () => confirm(`Delete the schedule ${s.name}?`) && act("Deleted", s, () => api("DELETE", `/v1/schedules/${name(s)}`)),
          }, "Delete"),
        ] : null)],
    ], rows, (s) => ({ "data-schedule": s.name }));
  }, ["system.schedules"]);

  // (`append` of the DOM would write `null` out: only nodes here.)
  root.append(h("h1", {}, "Schedules"), ...(may ? [createForm(() => list.load())] : []), out, list.section, next);
  return list.stop;
}

function createForm(created) {
  const out = h("div", { "aria-live": "polite" });
  const form = h("form", {
    class: "card create",
    onsubmit: async (e) => {
      e.preventDefault();
      replace(out);
      const data = new FormData(form);
      let task;
      try {
        task = JSON.parse(String(data.get("task") || ""));
      } catch (err) {
        replace(out, h("div", { class: "error", role: "alert" }, "Task is not valid JSON: " + err.message));
        form.elements.task.focus();
        return;
      }
      if (!task || typeof task !== "object" || Array.isArray(task)) {
        replace(out, h("div", { class: "error", role: "alert" }, 'Task must be a JSON object, e.g. {"type": "noop"}.'));
        form.elements.task.focus();
        return;
      }
      const body = {
        name: String(data.get("name")),
        cron: String(data.get("cron")),
        timezone: String(data.get("timezone") || "UTC"),
        task,
        missed: String(data.get("missed")),
      };
      if (data.get("paused")) body.paused = true;
      try {
        const s = await post("/v1/schedules", body);
        replace(out, h("p", { class: "ok" }, `Created ${s.name}; it fires next ${when(s.next_fire_at)}.`));
        created(s);
      } catch (err) {
        replace(out, failure(err));
      }
    },
  },
  h("div", { class: "row" },
    field("Name", h("input", { name: "name", required: true, pattern: "[A-Za-z0-9._\\-]{1,100}", placeholder: "nightly-report" })),
    field("Cron", h("input", { name: "cron", required: true, placeholder: "0 3 * * *", spellcheck: "false" })),
    field("Time zone", h("input", { name: "timezone", value: "UTC", placeholder: "Europe/Berlin" })),
    field("Missed runs", h("select", { name: "missed" }, ["skip", "once", "all"].map((m) => h("option", { value: m }, m)))),
    h("label", { class: "check" }, h("input", { type: "checkbox", name: "paused" }), " Paused")),
  field("Task (JSON body of POST /v1/tasks)", h("textarea", { name: "task", rows: "3", spellcheck: "false" }, '{"type": "noop", "payload": {}}')),
  h("button", { type: "submit", class: "primary" }, "Create schedule"),
  out);
  return h("details", { class: "creator" }, h("summary", {}, "Create a schedule"), form);
}
