// runway-proxy's console: reads the proxy's admin paths and draws them. No framework, no
// build step, nothing fetched from anywhere but this proxy. Every text the proxy returns is
// put in the page as text (never as HTML): task ids, errors and URLs come from outside.
"use strict";

const TOKEN_KEY = "runway-proxy.admin-token";
const SVG = "http://www.w3.org/2000/svg";
const PAGES = [
  ["overview", "Overview"],
  ["tasks", "Tasks"],
  ["usage", "Usage"],
  ["deliveries", "Deliveries"],
];
let refresh = null;

// --- talking to the proxy ---------------------------------------------------------------

class AdminError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, method) {
  const headers = {};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = "Bearer " + token;
  const response = await fetch(path, { method: method || "GET", headers, cache: "no-store" });
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  if (!response.ok) {
    const why = (body && (body.msg || body.message || body.error)) || response.statusText;
    throw new AdminError(response.status, why);
  }
  return body;
}

function query(params) {
  const parts = Object.entries(params)
    .filter(([, v]) => v !== undefined && v !== null && v !== "")
    .map(([k, v]) => encodeURIComponent(k) + "=" + encodeURIComponent(v));
  return parts.length ? "?" + parts.join("&") : "";
}

// --- building the page ------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else el.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs || {})) el.setAttribute(name, value);
  for (const child of children) {
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const app = () => document.getElementById("app");

function show(...content) {
  app().replaceChildren(...content.filter((part) => part !== null && part !== undefined));
}

function notice(text, error) {
  return h("p", { class: error ? "notice error" : "notice", role: error ? "alert" : "status" }, text);
}

function time(ms) {
  if (ms === null || ms === undefined) return "";
  return new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

function ago(ms) {
  if (ms === null || ms === undefined) return "";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 90) return s + " s";
  if (s < 5400) return Math.round(s / 60) + " min";
  if (s < 172800) return Math.round(s / 3600) + " h";
  return Math.round(s / 86400) + " d";
}

function duration(seconds) {
  const d = Math.floor(seconds / 86400);
  const hours = Math.floor((seconds % 86400) / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  return (d ? d + "d " : "") + (d || hours ? hours + "h " : "") + m + "m";
}

function stateCell(state) {
  return h("td", { class: "state-" + state }, state);
}

function failed(error) {
  if (error instanceof AdminError && (error.status === 401 || error.status === 403)) {
    signIn(error);
    return;
  }
  show(notice("The proxy did not answer: " + error.message, true));
}

// --- signing in -------------------------------------------------------------------------

function signIn(error) {
  const hadToken = !!sessionStorage.getItem(TOKEN_KEY);
  sessionStorage.removeItem(TOKEN_KEY);
  clearInterval(refresh);
  document.getElementById("nav").hidden = true;
  document.getElementById("nav").replaceChildren();
  document.getElementById("build").textContent = "";
  app().hidden = true;
  app().replaceChildren();
  const why = document.getElementById("login-why");
  if (error && error.status === 403) why.textContent = error.message;
  else if (error && hadToken) why.textContent = "That token was refused: enter the proxy's admin token.";
  else if (hadToken) why.textContent = "Signed out. Enter the admin token to open the console again.";
  else why.textContent = "This console needs the proxy's admin token.";
  document.getElementById("login").hidden = false;
  document.getElementById("token").focus();
}

async function start() {
  try {
    const samples = await api("/-/console/samples");
    document.getElementById("login").hidden = true;
    const nav = document.getElementById("nav");
    nav.replaceChildren(
      ...PAGES.map(([id, title]) => h("a", { href: "#/" + id, "data-page": id }, title)),
      sessionStorage.getItem(TOKEN_KEY)
        ? h("button", { class: "quiet", type: "button", onclick: () => signIn() }, "Sign out")
        : null,
    );
    nav.hidden = false;
    app().hidden = false;
    build(samples);
    route();
  } catch (error) {
    failed(error);
  }
}

function build(samples) {
  document.getElementById("build").textContent =
    "v" + samples.version + " · up " + duration(samples.uptime_s);
}

// --- pages ------------------------------------------------------------------------------

function route() {
  clearInterval(refresh);
  const [path, search] = location.hash.replace(/^#\/?/, "").split("?");
  const params = new URLSearchParams(search || "");
  const [page, id] = path.split("/");
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("current", link.dataset.page === (page === "task" ? "tasks" : page || "overview"));
  }
  const pages = { tasks: tasksPage, task: taskPage, usage: usagePage, deliveries: deliveriesPage };
  const render = pages[page] || overviewPage;
  render(params, id && decodeURIComponent(id)).catch(failed);
}

async function overviewPage() {
  const draw = async () => {
    const samples = await api("/-/console/samples");
    build(samples);
    show(
      h("h2", {}, "Overview: the last hour"),
      h("p", { class: "muted" }, "One point every " + samples.interval_s + " s, kept in the proxy's memory since it started (" + time(samples.started_at) + ")."),
      h("div", { class: "grid" }, samples.charts.map((c) => chart(c, samples.at))),
    );
  };
  await draw();
  refresh = setInterval(() => draw().catch(failed), 10000);
}

function chart(spec, at) {
  const width = 400, height = 150, left = 44, bottom = 18;
  // Series that stayed at 0 are named once, not drawn: a chart shows what moved.
  const moved = spec.series.filter((s) => s.values.some((v) => v !== null && v > 0));
  const still = spec.series.filter((s) => !moved.includes(s)).map((s) => s.name);
  const top = Math.max(0, ...moved.flatMap((s) => s.values.filter((v) => v !== null)));
  const scale = top > 0 ? top : 1;
  const first = at[0], last = at[at.length - 1];
  const x = (t) => left + ((t - first) / Math.max(1, last - first)) * (width - left - 4);
  const y = (v) => height - bottom - (v / scale) * (height - bottom - 8);
  const plot = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": spec.title });
  plot.append(
    svg("line", { class: "axis", x1: left, y1: height - bottom, x2: width, y2: height - bottom }),
    svg("text", { class: "label", x: 2, y: 12 }, format(top)),
    svg("text", { class: "label", x: 2, y: height - bottom }, "0"),
    svg("text", { class: "label", x: left, y: height - 4 }, time(first).slice(11, 16)),
    svg("text", { class: "label", x: width - 34, y: height - 4 }, time(last).slice(11, 16)),
  );
  moved.forEach((series, i) => {
    const points = series.values
      .map((v, j) => (v === null ? null : `${x(at[j]).toFixed(1)},${y(v).toFixed(1)}`))
      .filter((p) => p !== null);
    if (points.length === 1) points.unshift(`${left},${points[0].split(",")[1]}`);
    plot.append(svg("polyline", { class: "c" + (i % 8), points: points.join(" ") }));
  });
  const legend = moved.map((s, i) => {
    const now = s.values.filter((v) => v !== null).pop();
    return h("span", { "data-series": s.name }, h("span", { class: "swatch c" + (i % 8) }), s.name + " " + format(now ?? 0));
  });
  if (still.length) {
    legend.push(h("span", { class: "still", title: still.join(", ") },
      (moved.length ? "at 0: " : "all at 0: ") + still.join(", ")));
  }
  return h("section", { class: "card", "data-chart": spec.id },
    h("h3", {}, spec.title, " ", h("span", { class: "muted" }, "(" + spec.unit + ")")),
    plot,
    h("div", { class: "legend" }, legend.length ? legend : h("span", {}, "nothing yet")));
}

function format(n) {
  if (n >= 100) return Math.round(n).toString();
  if (n >= 1) return n.toFixed(1);
  if (n === 0) return "0";
  return n < 0.01 ? "<0.01" : n.toFixed(2);
}

async function tasksPage(params) {
  const status = params.get("status") || "";
  const key = params.get("key") || "";
  const after = params.get("after") || "";
  const page = await api("/-/tasks" + query({ status, key, after, limit: 100 }));
  const filters = h("form", { class: "filters", onsubmit: (e) => {
    e.preventDefault();
    const form = new FormData(e.target);
    location.hash = "#/tasks" + query({ status: form.get("status"), key: form.get("key") });
  } },
  h("label", {}, "State", h("select", { name: "status" },
    ["", "pending", "watching", "done", "unknown"].map((s) =>
      h("option", { value: s, selected: s === status }, s || "any")))),
  h("label", {}, "Key (label or hash)", h("input", { name: "key", value: key })),
  h("button", { type: "submit" }, "Filter"));
  const rows = page.tasks.map((t) => h("tr", { "data-task": t.task_id },
    h("td", {}, h("a", { href: "#/task/" + encodeURIComponent(t.task_id) }, h("code", {}, t.task_id))),
    stateCell(t.state),
    h("td", {}, t.status ?? ""),
    h("td", {}, t.progress === null || t.progress === undefined ? "" :
      [h("meter", { min: 0, max: 100, value: t.progress }), " " + t.progress + "%"]),
    h("td", { title: time(t.submitted_at) }, ago(t.submitted_at)),
    h("td", {}, t.key),
    h("td", {}, t.model ?? ""),
    h("td", {}, t.subscriber ?? h("span", { class: "muted" }, "none")),
    h("td", { class: "num" }, t.points ?? ""),
    h("td", {}, t.archive ?? "")));
  show(
    h("h2", {}, "Tasks"),
    filters,
    h("table", { id: "tasks" },
      h("thead", {}, h("tr", {}, ["Task", "State", "Status", "Progress", "Age", "Key", "Model", "Subscriber"]
        .map((t) => h("th", {}, t)), h("th", { class: "num" }, "Points"), h("th", {}, "Archive"))),
      h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 10, class: "muted" }, "No task matches.")))),
    page.next ? h("p", { class: "pager" },
      h("a", { href: "#/tasks" + query({ status, key, after: page.next }) }, "Next page")) : null,
  );
}

async function taskPage(_params, id) {
  const page = await api("/-/tasks/" + encodeURIComponent(id));
  const t = page.task;
  const facts = [
    ["State", t.state], ["Status", t.status ?? ""], ["Progress", t.progress === null ? "" : t.progress + "%"],
    ["Key", t.key], ["Model", t.model ?? ""], ["Format", t.format], ["Route", t.route],
    ["Subscriber", t.subscriber ?? "none"], ["Points", t.points ?? ""], ["Refunded", t.refunded ?? ""],
    ["Checks", t.checks], ["Recovered by a check", t.recovered ? "yes" : "no"],
    ["Trace id", page.trace_id ?? "none (traces off, or not sampled)"],
  ];
  const events = [{ at: t.submitted_at, kind: "submitted", text: "submitted through the proxy" }];
  for (const e of page.journal) {
    const what = [e.kind, e.status, e.progress === null ? null : e.progress + "%", e.detail]
      .filter((p) => p !== null && p !== undefined).join(" · ");
    const repeats = e.repeats > 1 ? ` (×${e.repeats}, until ${time(e.last_at).slice(11)})` : "";
    const bad = /failed|dead/.test(e.detail || "");
    events.push({ at: e.at, kind: e.kind, text: what + repeats, bad });
  }
  // Failed attempts are in the journal; each delivery says how it ended, or what is next.
  for (const d of page.deliveries || []) {
    const what = "delivery · " + (d.status ?? "");
    if (d.delivered_at) {
      events.push({ at: d.delivered_at, kind: "delivery", text: `${what} · delivered (attempt ${d.attempts})` });
    } else if (d.state === "pending" || d.state === "in_flight") {
      events.push({ at: d.next_attempt_at, kind: "delivery", text: `${what} · ${d.state}, attempt ${d.attempts + 1} due` });
    }
  }
  if (t.finished_at) events.push({ at: t.finished_at, kind: "finished", text: "final status " + (t.status ?? "") });
  events.sort((a, b) => a.at - b.at);
  const archive = page.archive ? h("section", {}, h("h3", {}, "Archive"),
    h("p", {}, "State: " + page.archive.state + (page.archive.last_error ? " · " + page.archive.last_error : "")),
    h("ul", {}, (page.archive.outputs || []).map((o) =>
      h("li", {}, o.url ? h("a", { href: o.url }, o.key || "output") : (o.key || "output") + " " + (o.link_error || ""))))) : null;
  show(
    h("p", {}, h("a", { href: "#/tasks" }, "← Tasks")),
    h("h2", {}, "Task ", h("code", { id: "task-id" }, t.task_id)),
    h("dl", { class: "facts" }, facts.flatMap(([k, v]) => [h("dt", {}, k), h("dd", { "data-fact": k }, String(v))])),
    h("h3", {}, "Timeline"),
    h("ol", { class: "timeline", id: "timeline" }, events.map((e) =>
      h("li", { class: "kind-" + e.kind + (e.bad ? " failed" : "") },
        h("time", {}, time(e.at)), e.text))),
    archive,
  );
}

async function usagePage() {
  const [budgets, usage] = await Promise.all([api("/-/budgets").catch((e) => {
    if (e.status === 404) return null;
    throw e;
  }), api("/-/usage")]);
  const bar = (name, use) => use ? [
    h("span", {}, name),
    h("meter", { min: 0, max: use.budget || 1, value: use.used, high: (use.budget || 1) * 0.9, "data-budget": name }),
    h("span", {}, `${use.used} of ${use.budget} (${Math.round(use.share * 100)}%)`),
  ] : [];
  const cards = budgets && budgets.keys.length ? budgets.keys.map((k) => h("section", { class: "card", "data-key": k.key },
    h("h3", {}, k.key),
    h("div", { class: "budget" }, bar("tasks", k.tasks), bar("points", k.points)),
    h("p", { class: "muted" },
      k.next_frees ? `Next to leave the window: one task (${k.next_frees.points} points) at ${k.next_frees.at}.` : "No task in the window.",
      k.room_at ? ` A spent budget has room again at ${k.room_at}.` : ""))) : [
    h("p", { class: "muted" }, "No per-key budget is set (guard.daily_task_budget_per_key, guard.daily_point_budget_per_key)."),
  ];
  const keys = Object.entries(usage.usage.keys);
  show(
    h("h2", {}, "Usage"),
    h("h3", {}, "Budgets over the last " + (budgets ? budgets.window : "window")),
    h("div", { class: "grid", id: "budgets" }, cards),
    h("h3", {}, "Spent since " + usage.from),
    h("table", { id: "usage" },
      h("thead", {}, h("tr", {}, h("th", {}, "Key"), ["Tasks", "Succeeded", "Failed", "Unfinished", "Net points"]
        .map((t) => h("th", { class: "num" }, t)))),
      h("tbody", {}, keys.length ? keys.map(([key, t]) => h("tr", {}, h("td", {}, key),
        [t.tasks, t.succeeded, t.failed, t.unfinished, t.net_points].map((n) => h("td", { class: "num" }, n))))
        : h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No task in the window.")))),
  );
}

async function deliveriesPage(params) {
  const subscriber = params.get("subscriber") || "";
  const [dead, pending, subscribers] = await Promise.all([
    api("/-/deliveries?state=dead&limit=200"),
    api("/-/deliveries?state=pending&limit=200"),
    api("/-/subscribers"),
  ]);
  const mine = (d) => !subscriber || d.subscriber === subscriber;
  const failing = pending.deliveries.filter((d) => d.attempts > 0 && mine(d));
  const letters = dead.deliveries.filter(mine);
  const status = h("div", { id: "replayed", "aria-live": "polite" });
  const replay = async (path, button) => {
    button.disabled = true;
    try {
      const answer = await api(path, "POST");
      const count = answer && answer.data && answer.data.replayed !== undefined ? answer.data.replayed : 1;
      status.replaceChildren(notice(`Re-queued ${count} ${count === 1 ? "delivery" : "deliveries"}.`));
      setTimeout(() => deliveriesPage(params).catch(failed), 1500);
    } catch (error) {
      button.disabled = false;
      status.replaceChildren(notice("Replay refused: " + error.message, true));
    }
  };
  const table = (id, rows, action) => h("table", { id },
    h("thead", {}, h("tr", {}, ["Id", "Task", "Status", "Subscriber", "Attempts", "Last error", "Since", ""].map((t) => h("th", {}, t)))),
    h("tbody", {}, rows.length ? rows.map((d) => h("tr", { "data-delivery": d.id },
      h("td", { class: "num" }, d.id),
      h("td", {}, h("code", {}, d.task_key.split("/task:")[1] || d.webhook_id)),
      h("td", {}, d.status ?? ""),
      h("td", {}, d.target_url),
      h("td", { class: "num" }, d.attempts),
      h("td", { class: "error" }, d.last_error ?? ""),
      h("td", { title: time(d.created_at) }, ago(d.created_at)),
      h("td", {}, action ? h("button", { type: "button", class: "replay", onclick: (e) => replay(`/-/deliveries/${d.id}/replay`, e.target) }, "Replay") : "")))
      : h("tr", {}, h("td", { colspan: 8, class: "muted" }, "None."))));
  const picker = h("form", { class: "filters", onsubmit: (e) => {
    e.preventDefault();
    location.hash = "#/deliveries" + query({ subscriber: new FormData(e.target).get("subscriber") });
  } }, h("label", {}, "Subscriber", h("select", { name: "subscriber" },
    h("option", { value: "" }, "all"),
    subscribers.subscribers.map((s) => h("option", { value: s.id, selected: s.id === subscriber }, s.url + " (" + s.state + ")")))),
  h("button", { type: "submit" }, "Filter"),
  h("button", { type: "button", id: "replay-all", disabled: letters.length === 0, onclick: (e) =>
    replay("/-/deliveries/replay" + query({ status: "dead", subscriber }), e.target) },
  "Replay all dead letters" + (subscriber ? " of this subscriber" : "")));
  show(
    h("h2", {}, "Deliveries"),
    picker, status,
    h("h3", {}, "Dead letters"), table("dead", letters, true),
    h("h3", {}, "Failing (will retry)"), table("failing", failing, false),
    h("h3", {}, "Subscribers"),
    h("table", { id: "subscribers" },
      h("thead", {}, h("tr", {}, ["Subscriber", "State", "Backlog", "In flight", "Dead", "Failures in a row", "Last error"].map((t) => h("th", {}, t)))),
      h("tbody", {}, subscribers.subscribers.map((s) => h("tr", {},
        h("td", {}, s.url), stateCell(s.state), h("td", { class: "num" }, s.backlog), h("td", { class: "num" }, s.in_flight),
        h("td", { class: "num" }, s.dead), h("td", { class: "num" }, s.consecutive_failures), h("td", { class: "error" }, s.last_error ?? ""))))),
  );
}

// --- wiring -------------------------------------------------------------------------------

document.getElementById("login").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("token");
  sessionStorage.setItem(TOKEN_KEY, input.value);
  input.value = "";
  start();
});
window.addEventListener("hashchange", () => {
  if (!app().hidden) route();
});
start();
