// The console's shell: routes in the browser (every page has its own URL, so it can be
// bookmarked and reloaded), the navigation that follows the role, the sign-in page, the theme.

import { current, onSession, signIn, signOut, documented } from "./api.js";
import { h, replace, failure, field } from "./dom.js";
import { onStatus } from "./live.js";
import * as tasks from "./tasks.js";
import * as ops from "./ops.js";
import * as admin from "./admin.js";
import * as integrations from "./integrations.js";
import * as schedules from "./schedules.js";
import * as workflows from "./workflows.js";
import * as settings from "./settings.js";

const STAFF = ["admin", "operator"];
const ADMIN = ["admin"];

// path pattern, title, page, roles that see it (all when absent), probe (shown only when the
// API documents that route: features that land later appear by themselves)
const PAGES = [
  { path: /^\/$/, title: "Overview", nav: "/", render: ops.overview },
  { path: /^\/tasks$/, title: "Tasks", nav: "/tasks", render: tasks.list },
  { path: /^\/tasks\/([^/]+)$/, title: "Task", render: tasks.detail },
  { path: /^\/queues$/, title: "Queues", nav: "/queues", render: ops.queues, roles: STAFF },
  { path: /^\/workers$/, title: "Workers", nav: "/workers", render: ops.workers, roles: STAFF },
  { path: /^\/memory$/, title: "Memory", nav: "/memory", render: ops.memory },
  { path: /^\/integrations$/, title: "Integrations", nav: "/integrations", render: integrations.integrations, roles: STAFF },
  { path: /^\/schedules$/, title: "Schedules", nav: "/schedules", render: schedules.schedules, roles: STAFF, probe: "/v1/schedules" },
  { path: /^\/workflows$/, title: "Workflows", nav: "/workflows", render: workflows.list, probe: "/v1/workflows" },
  { path: /^\/workflows\/([^/]+)$/, title: "Workflow", render: workflows.detail, probe: "/v1/workflows" },
  { path: /^\/settings$/, title: "Settings", nav: "/settings", render: settings.settings, roles: STAFF, probe: "/v1/settings" },
  { path: /^\/admin\/users$/, title: "Users", nav: "/admin/users", render: admin.users, roles: ADMIN },
  { path: /^\/admin\/api-keys$/, title: "API keys", nav: "/admin/api-keys", render: admin.apiKeys, roles: ADMIN },
  { path: /^\/admin\/audit$/, title: "Audit log", nav: "/admin/audit", render: admin.audit, roles: ADMIN },
];

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
let cleanup = null;
let probed = new Map(); // probe path -> bool
const dot = h("span", { class: "live", title: "live updates" });
onStatus((state) => {
  dot.dataset.state = state;
  dot.title = "live updates: " + state;
});

export function go(path, replaceState = false) {
  if (replaceState) history.replaceState(null, "", path);
  else history.pushState(null, "", path);
  render();
}

function allowed(page, role) {
  if (page.roles && !page.roles.includes(role)) return false;
  if (page.probe && probed.get(page.probe) !== true) return false;
  return true;
}

async function probe() {
  const s = current();
  const list = PAGES.filter((p) => p.probe && (!p.roles || p.roles.includes(s.role)));
  const results = await Promise.all(list.map((p) => documented(p.probe)));
  list.forEach((p, i) => probed.set(p.probe, results[i]));
  drawNav();
}

function drawNav() {
  const s = current();
  if (!s) {
    replace(nav);
    replace(who, themeButton());
    return;
  }
  const here = location.pathname;
  replace(
    nav,
    h(
      "ul",
      {},
      PAGES.filter((p) => p.nav && allowed(p, s.role)).map((p) =>
        h(
          "li",
          {},
          h(
            "a",
            {
              href: p.nav,
              "aria-current": (p.nav === "/" ? here === "/" : here.startsWith(p.nav)) ? "page" : null,
            },
            p.title,
          ),
        ),
      ),
    ),
  );
  replace(
    who,
    dot,
    h("span", { class: "me" }, `${s.subject} (${s.role})`),
    themeButton(),
    h("button", { type: "button", onclick: () => signOut() }, "Sign out"),
  );
}

function themeButton() {
  return h(
    "button",
    {
      type: "button",
      class: "ghost",
      "aria-label": "Switch light or dark theme",
      onclick: () => {
        const dark = document.documentElement.dataset.theme === "dark" ||
          (!document.documentElement.dataset.theme && matchMedia("(prefers-color-scheme: dark)").matches);
        document.documentElement.dataset.theme = dark ? "light" : "dark";
        localStorage.setItem("mkww.theme", document.documentElement.dataset.theme);
      },
    },
    "◐",
  );
}

function signInPage() {
  document.title = "Sign in · MKWW MCP";
  const error = h("div", { "aria-live": "polite" });
  const form = h(
    "form",
    {
      class: "card signin",
      onsubmit: async (e) => {
        e.preventDefault();
        const data = new FormData(form);
        replace(error);
        form.querySelector("button").disabled = true;
        try {
          await signIn(String(data.get("username")), String(data.get("password")));
          const next = sessionStorage.getItem("mkww.next") || "/";
          sessionStorage.removeItem("mkww.next");
          go(next.startsWith("/") && !next.startsWith("//") ? next : "/", true);
        } catch (err) {
          replace(error, failure(err));
          form.querySelector("button").disabled = false;
        }
      },
    },
    h("h1", {}, "Sign in"),
    field("Username", h("input", { name: "username", autocomplete: "username", required: true, autofocus: true })),
    field("Password", h("input", { name: "password", type: "password", autocomplete: "current-password", required: true })),
    error,
    h("button", { type: "submit", class: "primary" }, "Sign in"),
  );
  replace(main, form);
  form.querySelector("input").focus();
}

function render() {
  if (cleanup) cleanup();
  cleanup = null;
  const s = current();
  drawNav();
  if (!s) {
    if (location.pathname !== "/signin") {
      sessionStorage.setItem("mkww.next", location.pathname + location.search);
      history.replaceState(null, "", "/signin");
    }
    return signInPage();
  }
  if (location.pathname === "/signin") return go("/", true);
  for (const page of PAGES) {
    const m = location.pathname.match(page.path);
    if (!m) continue;
    if (!allowed(page, s.role) && !(page.probe && !probed.has(page.probe))) break;
    document.title = `${page.title} · MKWW MCP`;
    const root = h("section", { class: "page" });
    replace(main, root);
    try {
      cleanup = page.render(root, { params: m.slice(1), query: new URLSearchParams(location.search), role: s.role, go }) || null;
    } catch (e) {
      replace(root, failure(e));
    }
    return;
  }
  document.title = "Not found · MKWW MCP";
  replace(main, h("section", { class: "page" }, h("h1", {}, "Not found"), h("p", {}, "No such page. ", h("a", { href: "/" }, "Overview"))));
}

// Same-origin links route in the browser.
document.addEventListener("click", (e) => {
  const a = e.target.closest && e.target.closest("a[href]");
  if (!a || a.target || e.ctrlKey || e.metaKey || e.shiftKey || e.button !== 0) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin || url.pathname.startsWith("/v1/")) return;
  if (a.getAttribute("href").startsWith("#")) return;
  e.preventDefault();
  go(url.pathname + url.search);
});
window.addEventListener("popstate", render);

let lastSubject = current()?.subject;
onSession((s) => {
  // A refresh keeps the page; signing in or out draws it again.
  if ((s?.subject ?? null) !== (lastSubject ?? null)) {
    lastSubject = s?.subject;
    probed = new Map();
    if (s) probe();
    render();
  }
});

const theme = localStorage.getItem("mkww.theme");
if (theme) document.documentElement.dataset.theme = theme;
if (current()) probe();
render();
