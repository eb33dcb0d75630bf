// bandit-router dashboard: reads GET /stats and draws SVG charts. No library, nothing remote.
"use strict";

const NS = "http://www.w3.org/2000/svg";
const COLORS = ["#2f80ed", "#eb5757", "#27ae60", "#f2994a", "#56ccf2", "#bb6bd9", "#6fcf97", "#f2c94c"];
const POLICY_COLOR = "#243b53", BASELINE_COLORS = { static: "#9b51e0", random: "#9aa5b1" };
let armColor = {};  // one color per arm on every chart, in the order of the settings' arms

function colorOf(name, i) {
  return armColor[name] || COLORS[i % COLORS.length];
}
const W = 460, H = 200, PAD = { l: 44, r: 110, t: 10, b: 24 };
const params = new URLSearchParams(location.search);
// A link sets it, so it is bounded: 0, a word (NaN) or Infinity made setInterval read /stats
// back to back. 1 s to an hour; anything else the default.
const ASKED_S = Number(params.get("refresh"));
const REFRESH_S = ASKED_S > 0 && ASKED_S <= 3600 ? Math.max(1, ASKED_S) : 5;
// A link sets it too, and a window /stats refuses (a word, -1, 1e9) would leave the page undrawn:
// a whole number above /stats's bound is the bound; anything else the default.
const ASKED_WINDOW = Number(params.get("window") || NaN);
const WINDOW = Number.isSafeInteger(ASKED_WINDOW) && ASKED_WINDOW >= 0 ? Math.min(ASKED_WINDOW, 20000) : 1000;
const DEPLOYMENT = params.get("deployment") || "default";

// The page's own reads, relative to it. Opened as http://user:KEY@host/dashboard (how a link or a
// bookmark gives the browser the Basic key), its address holds the credentials, and fetch refuses
// a URL that does: the reads leave them out, and the browser sends the key it has for the site.
function own(path) {
  const url = new URL(path, location.href);
  url.username = url.password = "";
  return url.href;
}

function el(name, attrs, parent, text) {
  const node = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  if (parent) parent.appendChild(node);
  return node;
}

function fmt(v, digits = 3) {
  if (v === null || v === undefined) return "–";
  const text = Number(v).toFixed(digits);
  return text.includes(".") ? text.replace(/\.?0+$/, "") : text;
}

function svgIn(id, chart) {
  const host = document.getElementById(id);
  host.replaceChildren();
  return el("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", "data-chart": chart }, host);
}

function axes(svg, yMax, xLabels) {
  const x0 = PAD.l, x1 = W - PAD.r, y0 = H - PAD.b, y1 = PAD.t;
  el("line", { x1: x0, y1: y0, x2: x1, y2: y0, stroke: "#9aa5b1" }, svg);
  el("line", { x1: x0, y1: y0, x2: x0, y2: y1, stroke: "#9aa5b1" }, svg);
  for (const f of [0, 0.5, 1]) {
    const y = y0 - f * (y0 - y1);
    el("text", { x: x0 - 4, y: y + 4, "text-anchor": "end" }, svg, fmt(f * yMax, yMax >= 100 ? 0 : 2));
    if (f > 0) el("line", { x1: x0, y1: y, x2: x1, y2: y, stroke: "#e4e7eb" }, svg);
  }
  if (xLabels) {
    el("text", { x: x0, y: H - 6 }, svg, xLabels[0]);
    el("text", { x: x1, y: H - 6, "text-anchor": "end" }, svg, xLabels[1]);
  }
  return { x0, x1, y0, y1 };
}

function legend(svg, names, colors) {
  names.forEach((name, i) => {
    const y = PAD.t + 6 + i * 16;
    el("rect", { x: W - PAD.r + 10, y: y - 8, width: 10, height: 10, fill: colors[i] }, svg);
    el("text", { x: W - PAD.r + 24, y: y + 1, class: "legend" }, svg, name);
  });
}

function clock(t) {
  return new Date(t * 1000).toLocaleTimeString();
}

// Lines over time; series: [{name, values, dashed, color}], values aligned with t.
function lines(id, chart, t, series, yMax) {
  const svg = svgIn(id, chart);
  const all = series.flatMap(s => s.values).filter(v => v !== null);
  yMax = yMax || Math.max(1e-9, ...all);
  const n = Math.max(...series.map(s => s.values.length), 1);
  const box = axes(svg, yMax, t.length ? [clock(t[0]), clock(t[t.length - 1])] : null);
  const x = i => box.x0 + (n > 1 ? i / (n - 1) : 0.5) * (box.x1 - box.x0);
  const y = v => box.y0 - (v / yMax) * (box.y0 - box.y1);
  series.forEach((s, k) => {
    const pts = s.values.map((v, i) => (v === null ? null : `${x(i).toFixed(1)},${y(v).toFixed(1)}`)).filter(Boolean);
    const attrs = {
      points: pts.join(" "), fill: "none", stroke: s.color || colorOf(s.name, k), "stroke-width": s.dashed ? 1.5 : 2.2,
      "data-series": s.name, "data-values": s.values.map(v => (v === null ? "" : v)).join(" "),
    };
    if (s.dashed) attrs["stroke-dasharray"] = "5 4";
    el("polyline", attrs, svg);
  });
  legend(svg, series.map(s => s.name), series.map((s, k) => s.color || colorOf(s.name, k)));
  svg.setAttribute("data-max", String(Math.max(0, ...all)));
  if (!t.length) el("text", { x: W / 2 - PAD.r / 2, y: H / 2, "text-anchor": "middle" }, svg, "no rewarded events yet");
}

// One bar per arm; values: {arm: number|null}.
function bars(id, chart, values, yMax) {
  const svg = svgIn(id, chart);
  const names = Object.keys(values);
  const nums = names.map(n => values[n]).filter(v => v !== null);
  yMax = yMax || 1.15 * Math.max(1e-9, ...nums);  // headroom for the value labels
  const box = axes(svg, yMax, null);
  const slot = (box.x1 - box.x0) / Math.max(1, names.length);
  names.forEach((name, i) => {
    const v = values[name];
    const h = v === null ? 0 : (v / yMax) * (box.y0 - box.y1);
    const x = box.x0 + i * slot + slot * 0.15;
    el("rect", { x, y: box.y0 - h, width: slot * 0.7, height: h, fill: colorOf(name, i), "data-series": name, "data-values": v === null ? "" : v }, svg);
    el("text", { x: x + slot * 0.35, y: box.y0 - h - 4, "text-anchor": "middle" }, svg, fmt(v, v >= 100 ? 0 : 3));
    el("text", { x: x + slot * 0.35, y: H - 6, "text-anchor": "middle", class: "legend" }, svg, name);
  });
  svg.setAttribute("data-max", String(Math.max(0, ...nums)));
}

function table(id, head, rows) {
  const t = document.getElementById(id);
  t.replaceChildren();
  const tr = t.insertRow();
  head.forEach(h => { const th = document.createElement("th"); th.textContent = h; tr.appendChild(th); });
  rows.forEach(r => {
    const row = t.insertRow();
    r.forEach((c, i) => { const td = row.insertCell(); td.textContent = c; if (i > 0 && typeof c !== "string") td.className = "num"; });
  });
}

function cards(s) {
  const r = s.recent;
  const items = [
    ["model version", s.model_version], ["policy", s.policy], ["decisions", s.decisions],
    ["rewards", s.rewards_accepted], ["mean reward (window)", fmt(r.mean_reward)],
    ["exploration rate (window)", fmt(r.exploration_rate)], ["events in window", r.events],
  ];
  const host = document.getElementById("cards");
  host.replaceChildren();
  for (const [k, v] of items) {
    const d = document.createElement("div");
    d.className = "card";
    d.innerHTML = "<span class='muted'></span><b></b>";
    d.children[0].textContent = k;
    d.children[1].textContent = v;
    host.appendChild(d);
  }
}

function per(arms, key) {
  return Object.fromEntries(Object.entries(arms).map(([n, a]) => [n, a[key]]));
}

function render(s) {
  const r = s.recent, names = Object.keys(r.arms);
  armColor = Object.fromEntries(s.settings.arms.map((a, i) => [a.name, COLORS[i % COLORS.length]]));
  cards(s);
  lines("chart-share", "share", r.series.t, names.map(n => ({ name: n, values: r.series.share[n] || [] })), 1);
  const base = Object.entries(r.baselines.policies).filter(([, e]) => e.snips.value !== null);
  const flat = v => r.series.t.map(() => v);
  lines("chart-reward", "reward", r.series.t,
    [{ name: "policy", values: r.series.reward, color: POLICY_COLOR }].concat(base.map(([n, e]) => ({
      name: n.replace("fixed:arm=", "always "), values: flat(e.snips.value), dashed: true,
      color: BASELINE_COLORS[n] || colorOf(n.replace("fixed:arm=", ""), 0),
    }))), 1);
  lines("chart-exploration", "exploration", r.series.t, [{ name: "exploration", values: r.series.exploration, color: POLICY_COLOR }], 1);
  bars("chart-arm-reward", "arm-reward", per(r.arms, "mean_reward"), 1);
  bars("chart-arm-accuracy", "arm-accuracy", per(r.arms, "accuracy"), 1);
  bars("chart-arm-latency", "arm-latency", per(r.arms, "latency_ms"));
  bars("chart-arm-rating", "arm-rating", per(r.arms, "rating"), 5);
  table("arms", ["arm", "decided", "share", "reward", "accuracy", "ms", "rating"],
    // An arm of the window that this process does not serve (removed from BANDIT_ARMS) has no
    // row in the totals: said so, with no count rather than a 0 it never had.
    names.map(n => { const a = r.arms[n], t = s.arms[n]; return [t ? n : `${n} (not served)`, t ? t.decisions : "–", fmt(a.share), fmt(a.mean_reward), fmt(a.accuracy), fmt(a.latency_ms, 0), fmt(a.rating, 2)]; }));
  const ci = e => (e.low === null ? "–" : `${fmt(e.low)}–${fmt(e.high)}`);
  const b = r.baselines, logged = b.logged ? [["this policy (on-policy)", fmt(b.logged.value), fmt(b.logged.value), fmt(b.logged.value), ci(b.logged)]] : [];
  table("baselines", ["policy", "IPS", "SNIPS", "DR", "SNIPS 95% CI"], logged.concat(
    Object.entries(b.policies).map(([n, e]) => [n, fmt(e.ips.value), fmt(e.snips.value), fmt(e.dr.value), ci(e.snips)])));
  document.getElementById("baselines-note").textContent = b.computed_at
    ? `Over ${b.events} events, computed ${new Date(b.computed_at * 1000).toLocaleTimeString()} (refreshed at most every 30 s).` : "";
  challengers(s.challengers, ci);
  const st = s.settings;
  table("settings", ["setting", "value"], [
    // The parameters the policy runs with; BANDIT_EPSILON and BANDIT_LINUCB_ALPHA only fill in
    // what its spec omits, so shown alone they would contradict a spec's own (egreedy:epsilon=0.2).
    ["policy", st.policy], ["policy parameters", pairs(st.policy_params)],
    ["reward weights", pairs(st.reward_weights)],
    ["latency budget", `${st.latency_budget_ms} ms`], ["cost budget", `${st.cost_budget_usd} USD`],
    ["arms", st.arms.map(a => a.name).join(", ")], ["model version", String(s.model_version)],
  ]);
}

const pairs = o => Object.entries(o).map(([k, v]) => `${k}=${typeof v === "string" ? JSON.stringify(v) : v}`).join(", ");

function challengers(c, ci) {
  if (!c) return;
  const iv = e => `${fmt(e.value)} (${ci(e)})`;
  table("challengers", ["challenger", "events", "SNIPS (95% CI)", "DR (95% CI)", "champion", "clears"],
    c.challengers.map(x => [x.policy, x.events, iv(x.snips), iv(x.dr), fmt(x.champion.value), x.clears ? "yes" : "no"]));
  document.getElementById("challengers-note").textContent =
    `Champion ${c.champion}; at least ${c.min_events} events of the newest ${c.window}; ` +
    `automatic promotion ${c.auto_promote ? "on" : "off"}.`;
  table("promotions", ["promoted", "from", "to", "by", "events", "SNIPS low", "champion"],
    c.promotions.slice().reverse().map(p => [new Date(p.ts * 1000).toLocaleString(), p.from_policy, p.to_policy, p.by, p.events, fmt(p.snips.low), fmt(p.champion.value)]));
}

// An error answer's detail names what to change (a ?window= past its bound, a missing key).
async function detail(response) {
  try {
    const body = await response.json();
    return typeof body.detail === "string" ? `: ${body.detail}` : "";
  } catch {
    return "";
  }
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    const query = `window=${WINDOW}&deployment=${encodeURIComponent(DEPLOYMENT)}`;
    const response = await fetch(own(`stats?${query}`), { headers: { accept: "application/json" } });
    if (!response.ok) throw new Error(`GET /stats: HTTP ${response.status}${await detail(response)}`);
    render(await response.json());
    status.textContent = `updated ${new Date().toLocaleTimeString()}, every ${REFRESH_S} s`;
    document.body.dataset.rendered = String(Number(document.body.dataset.rendered || 0) + 1);
  } catch (err) {
    status.textContent = `not updated: ${err.message}`;
  }
}

// With several deployments, a selector reloads the page on the one picked (?deployment=).
async function listDeployments() {
  const response = await fetch(own("deployments"), { headers: { accept: "application/json" } });
  if (!response.ok) return;
  const names = (await response.json()).deployments.map(d => d.name);
  if (names.length < 2) return;
  const select = document.getElementById("deployment");
  for (const name of names) {
    const option = document.createElement("option");
    option.value = option.textContent = name;
    option.selected = name === DEPLOYMENT;
    select.appendChild(option);
  }
  select.addEventListener("change", () => {
    params.set("deployment", select.value);
    location.search = params.toString();
  });
  document.getElementById("deployment-picker").hidden = false;
}

listDeployments();
refresh();
setInterval(refresh, REFRESH_S * 1000);
