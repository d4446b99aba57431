// A few DOM helpers: elements built from data (never from HTML strings), the states every page
// shows (loading, empty, error with the API's message and request id), dates and JSON.

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, v);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
}

export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export const loading = () => h("p", { class: "muted", role: "status" }, "Loading…");
export const empty = (what) => h("p", { class: "empty" }, what);

export function failure(e) {
  return h(
    "div",
    { class: "error", role: "alert" },
    h("strong", {}, e.code ? `${e.code}: ` : "Error: "),
    e.message || String(e),
    e.requestId ? h("small", { class: "rid" }, ` (request ${e.requestId})`) : null,
  );
}

export function when(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return d.toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
}

export function took(from, to) {
  if (!from || !to) return "";
  const ms = new Date(to) - new Date(from);
  return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`;
}

export const pretty = (v) => h("pre", { class: "json" }, JSON.stringify(v, null, 2));

export const badge = (status) => h("span", { class: "badge s-" + status }, status);

/** A table: `columns` are [header, row => cell]. */
export function table(columns, rows, rowAttrs) {
  return h(
    "div",
    { class: "scroll" },
    h(
      "table",
      {},
      h("thead", {}, h("tr", {}, columns.map(([name]) => h("th", { scope: "col" }, name)))),
      h(
        "tbody",
        {},
        rows.map((r) => h("tr", rowAttrs ? rowAttrs(r) : {}, columns.map(([, cell]) => h("td", {}, cell(r))))),
      ),
    ),
  );
}

/** A snippet the API escaped, with `<mark>` around matches, as nodes (no HTML parsing). */
export function snippet(text) {
  const decode = (s) =>
    s.replace(/&(lt|gt|amp|quot|#39);/g, (_, e) => ({ lt: "<", gt: ">", amp: "&", quot: '"', "#39": "'" })[e]);
  const out = h("span", { class: "snippet" });
  const parts = String(text).split(/(<mark>|<\/mark>)/);
  let marked = false;
  for (const p of parts) {
    if (p === "<mark>") marked = true;
    else if (p === "</mark>") marked = false;
    else if (p) out.append(marked ? h("mark", {}, decode(p)) : decode(p));
  }
  return out;
}

/** A form's fields as an object. */
export const values = (form) => Object.fromEntries(new FormData(form).entries());

export function field(label, input) {
  return h("label", { class: "field" }, h("span", {}, label), input);
}
