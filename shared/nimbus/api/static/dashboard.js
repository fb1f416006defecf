/* Nimbus monitoring dashboard: polls dashboard/data and draws it with Chart.js (bundled).
 *
 * Every number a chart draws is also in the DOM: tables whose cells carry data-field and
 * data-value (the raw number), and data-* attributes on the experiment cards; Chart
 * instances are reachable with Chart.getChart(canvas). window.nimbusDashboard holds the
 * last document drawn and how many renders happened (tests wait on it).
 *
 * Page query: ?refresh=N polls every N seconds (default 5; 0 = once). The window parameters
 * of /dashboard/data (traffic_window_s, ...) are passed through.
 *
 * The data needs an API key with the read scope (header X-API-Key). The page asks for it in a
 * form, or takes it from the URL fragment (#key=..., never sent to a server), and keeps it in
 * sessionStorage for this tab only.
 */
"use strict";
(() => {
  const params = new URLSearchParams(location.search);
  const refreshS = params.has("refresh") ? Math.max(0, Number(params.get("refresh")) || 0) : 5;
  const passed = ["traffic_window_s", "traffic_bucket_s", "performance_window_s", "performance_bucket_s",
                  "drift_limit", "experiments_limit"].filter((k) => params.has(k));
  const dataUrl = "dashboard/data" + (passed.length
    ? "?" + new URLSearchParams(passed.map((k) => [k, params.get(k)])).toString() : "");
  const PALETTE = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563",
                   "#65a30d", "#9333ea"];
  const WARN = "#b42318";
  const charts = {};
  const state = { data: null, renders: 0, charts, dataUrl, refreshS };
  window.nimbusDashboard = state;

  Chart.defaults.animation = false;
  Chart.defaults.maintainAspectRatio = false;
  Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;

  // ---- formatting -------------------------------------------------------------------------
  // epoch seconds or ms, or ISO-8601 text; text without a zone is UTC (MongoDB hands back naive UTC times)
  const toMs = (t) => (t == null ? null : typeof t === "number" ? (t > 1e11 ? t : t * 1000)
    : Date.parse(/(Z|[+-]\d\d:?\d\d)$/i.test(t) ? t : `${t}Z`));
  const clock = (ms) => new Date(ms).toISOString().slice(11, 19);
  const stamp = (t) => (t == null ? "–" : new Date(toMs(t)).toISOString().replace("T", " ").slice(0, 19) + " UTC");
  const isNum = (x) => typeof x === "number" && Number.isFinite(x);
  const pct = (x, d = 2) => (isNum(x) ? (100 * x).toFixed(d) + "%" : "–");
  const fixed = (x, d = 1) => (isNum(x) ? x.toFixed(d) : "–");
  const pval = (x) => (isNum(x) ? (x < 0.0001 ? x.toExponential(1) : x.toFixed(4)) : "–");
  const signedPct = (x) => (isNum(x) ? (x >= 0 ? "+" : "") + (100 * x).toFixed(1) + "%" : "–");
  const color = (i) => PALETTE[i % PALETTE.length];
  const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

  /** A table cell that shows ``text`` and keeps the raw value in data-value. */
  function td(field, value, text) {
    const raw = value == null ? "" : Array.isArray(value) ? value.join(",") : String(value);
    return `<td data-field="${esc(field)}" data-value="${esc(raw)}">${esc(text ?? raw)}</td>`;
  }

  /** A time x axis; ``min``/``max`` (epoch ms) pin it to the window the data covers. */
  function timeAxis(min, max) {
    return { type: "linear", min, max, title: { display: true, text: "time (UTC)" },
             ticks: { callback: (v) => clock(v), maxTicksLimit: 8, maxRotation: 0 } };
  }

  /** Fill the <select> ``id`` with ``options`` and return the chosen one (kept across refreshes). */
  function choose(id, options, preferred) {
    const select = document.getElementById(id);
    const previous = select.value;
    const wanted = options.includes(previous) ? previous : options.includes(preferred) ? preferred : options[0];
    if ([...select.options].map((o) => o.value).join("\n") !== options.join("\n")) {
      select.innerHTML = options.map((o) => `<option value="${esc(o)}">${esc(o)}</option>`).join("");
    }
    select.value = wanted ?? "";
    select.disabled = options.length < 2;
    return wanted;
  }

  function redrawOnChange(id) {
    document.getElementById(id).addEventListener("change", () => state.data && render(state.data));
  }

  function upsertChart(canvas, config) {
    const existing = Chart.getChart(canvas);
    if (existing) {
      existing.data = config.data;
      existing.options = config.options;
      existing.update("none");
      return existing;
    }
    const chart = new Chart(canvas, config);
    charts[canvas.id || canvas.closest("[data-experiment-id]")?.dataset.experimentId] = chart;
    return chart;
  }

  function sectionError(id, message) {
    const el = document.querySelector(`#${id} > .error`);
    el.hidden = !message;
    el.textContent = message ? `Could not read this section: ${message}` : "";
  }

  // ---- traffic ----------------------------------------------------------------------------
  function renderTraffic(t) {
    document.getElementById("traffic-window").textContent = `last ${t.window_s / 60} min, ${t.bucket_s} s buckets`;
    const names = Object.keys(t.functions || {}).sort();
    const series = t.series || [];
    const points = (fn, field, scale = 1) => series.filter((p) => p.function === fn && isNum(p[field]))
      .map((p) => ({ x: toMs(p.t), y: p[field] * scale }));
    const ts = series.map((p) => toMs(p.t));
    const [min, max] = ts.length ? [Math.min(...ts), Math.max(...ts)] : [undefined, undefined];
    upsertChart(document.getElementById("chart-traffic"), {
      type: "line",
      data: { datasets: names.map((fn, i) => ({
        label: fn, function: fn, data: points(fn, "requests", 1 / t.bucket_s),
        borderColor: color(i), backgroundColor: color(i), pointRadius: 1.5, tension: 0.2 })) },
      options: { parsing: false, scales: { x: timeAxis(min, max), y: { beginAtZero: true, title: { display: true, text: "req/s" } } } },
    });
    // latency of one function at a time (the busiest unless chosen): p50, p95, p99
    const busiest = [...names].sort((a, b) => t.functions[b].requests - t.functions[a].requests)[0];
    const fn = choose("latency-function", names, busiest);
    const shades = { p50_ms: ["#2563eb", []], p95_ms: ["#d97706", [6, 3]], p99_ms: ["#dc2626", [2, 2]] };
    const latency = upsertChart(document.getElementById("chart-latency"), {
      type: "line",
      data: { datasets: fn == null ? [] : Object.entries(shades).map(([field, [shade, dash]]) => ({
        label: field.replace("_ms", ""), function: fn, field, data: points(fn, field),
        borderColor: shade, backgroundColor: shade, borderDash: dash, pointRadius: 3, tension: 0.2 })) },
      options: { parsing: false, scales: { x: timeAxis(min, max),
        y: { type: "logarithmic", title: { display: true, text: "ms (log scale)" } } } },
    });
    latency.canvas.dataset.function = fn ?? "";
    document.querySelector("#table-traffic tbody").innerHTML = names.map((fn) => {
      const f = t.functions[fn];
      return `<tr data-function="${esc(fn)}">${td("function", fn)}${td("requests", f.requests)}` +
        `${td("errors", f.errors)}${td("degraded", f.degraded)}${td("p50_ms", f.p50_ms, fixed(f.p50_ms, 2))}` +
        `${td("p95_ms", f.p95_ms, fixed(f.p95_ms, 2))}${td("p99_ms", f.p99_ms, fixed(f.p99_ms, 2))}` +
        `${td("rps", f.rps, fixed(f.rps, 2))}</tr>`;
    }).join("") || `<tr><td colspan="8" class="empty">No requests in the window.</td></tr>`;
  }

  // ---- experiments ------------------------------------------------------------------------
  const EXPERIMENT_CARD = `
    <h3><span class="name"></span><span class="badge verdict"></span><span class="badge srm"></span></h3>
    <div class="meta"></div>
    <p class="verdict-reason"></p>
    <div class="layout">
      <figure data-chart="ctr"><figcaption>CTR per variant: point = rate, bar = 95% interval</figcaption><canvas></canvas></figure>
      <table class="variants"><thead><tr><th>variant</th><th>model</th><th>weight</th><th>exposures</th><th>users</th>
        <th>clicks</th><th>purchases</th><th>CTR</th><th>CTR 95% CI</th><th>lift</th><th>p</th><th>P(beat control)</th>
        <th>conversion</th><th>conv. 95% CI</th></tr></thead><tbody></tbody></table>
    </div>`;

  function renderExperiments(results) {
    const holder = document.getElementById("experiment-cards");
    document.querySelector("#experiments > .empty").hidden = results.length > 0;
    const keep = new Set(results.map((r) => String(r.experiment.id)));
    for (const card of [...holder.children]) {
      if (!keep.has(card.dataset.experimentId)) {
        Chart.getChart(card.querySelector("canvas"))?.destroy();
        delete charts[card.dataset.experimentId];
        card.remove();
      }
    }
    results.forEach((r) => holder.appendChild(experimentCard(r)));  // appendChild moves: keeps the order
    renderSrmBanners(results);
  }

  function experimentCard(r) {
    const e = r.experiment;
    const id = String(e.id);
    let card = [...document.querySelectorAll(".experiment")].find((c) => c.dataset.experimentId === id);
    if (!card) {
      card = document.createElement("div");
      card.className = "experiment";
      card.dataset.experimentId = id;
      card.innerHTML = EXPERIMENT_CARD;
    }
    const verdict = r.verdict || {};
    const srm = r.srm || {};
    Object.assign(card.dataset, {
      status: e.status, verdictStatus: verdict.status || "", verdictWinner: verdict.winner ?? "",
      verdictMetric: verdict.metric ?? "", srmFlagged: String(Boolean(srm.flagged)), srmP: srm.p_value ?? "",
    });
    card.querySelector(".name").textContent = `${e.name} (${e.id})`;
    const badge = card.querySelector(".badge.verdict");
    badge.className = `badge verdict ${verdict.status || ""}`;
    badge.textContent = verdict.status === "winner" ? `winner: ${verdict.winner} on ${verdict.metric}`
      : (verdict.status || "no verdict").replace("_", " ");
    const srmBadge = card.querySelector(".badge.srm");
    srmBadge.className = `badge srm ${srm.flagged ? "srm-flagged" : "srm-ok"}`;
    srmBadge.textContent = srm.flagged ? `SRM! p = ${pval(srm.p_value)}` : `SRM ok (p = ${pval(srm.p_value)})`;
    card.querySelector(".meta").textContent = `${e.status} on surface “${e.surface}” · started ${stamp(e.started_at)}` +
      (e.stopped_at ? ` · stopped ${stamp(e.stopped_at)}` : "");
    card.querySelector(".verdict-reason").textContent = verdict.reason || "";

    const declared = Object.fromEntries((e.variants || []).map((v) => [v.name, v]));
    const variants = r.variants || [];
    const ctr = (v) => (v.metrics && v.metrics.ctr) || {};
    const conv = (v) => (v.metrics && v.metrics.conversion) || {};
    card.querySelector("tbody").innerHTML = variants.map((v) => {
      const c = ctr(v), k = conv(v), d = declared[v.name] || {};
      const ci = c.ci95 || [], kci = k.ci95 || [];
      const winner = verdict.status === "winner" && verdict.winner === v.name;
      return `<tr data-variant="${esc(v.name)}"${winner ? ' class="winner"' : ""}>${td("variant", v.name)}` +
        `${td("model", d.model, d.version != null ? `${d.model} (v${d.version})` : d.model)}${td("weight", d.weight, fixed(d.weight, 2))}${td("exposures", v.exposures)}` +
        `${td("users", v.users)}${td("clicks", v.clicks)}${td("purchases", v.purchases)}` +
        `${td("ctr.rate", c.rate, pct(c.rate))}${td("ctr.ci95", ci, `${pct(ci[0])} – ${pct(ci[1])}`)}` +
        `${td("ctr.lift", c.lift, signedPct(c.lift))}${td("ctr.p_value", c.p_value, pval(c.p_value))}` +
        `${td("ctr.chance_to_beat_control", c.chance_to_beat_control, pct(c.chance_to_beat_control, 1))}` +
        `${td("conversion.rate", k.rate, pct(k.rate))}${td("conversion.ci95", kci, `${pct(kci[0])} – ${pct(kci[1])}`)}</tr>`;
    }).join("");

    const labels = variants.map((v) => v.name);
    const tint = (v, alpha) => (verdict.status === "winner" && verdict.winner === v.name ? `rgba(6,118,71,${alpha})`
      : `rgba(37,99,235,${alpha})`);
    upsertChart(card.querySelector("canvas"), {
      type: "bar",
      data: { labels, datasets: [
        { type: "bar", label: "95% interval", metric: "ctr.ci95", data: variants.map((v) => ctr(v).ci95 || null),
          backgroundColor: variants.map((v) => tint(v, 0.25)), borderColor: variants.map((v) => tint(v, 0.9)),
          borderWidth: 1, barPercentage: 0.35, order: 2 },
        { type: "line", label: "CTR", metric: "ctr.rate", data: variants.map((v) => ctr(v).rate ?? null),
          showLine: false, pointRadius: 7, pointStyle: "rectRot", borderColor: "#1d2330",
          backgroundColor: variants.map((v) => tint(v, 1)), order: 1 },
      ] },
      options: { scales: { y: { beginAtZero: true, ticks: { callback: (v) => pct(v, 1) }, title: { display: true, text: "CTR" } } },
                 plugins: { tooltip: { callbacks: { label: (c) => Array.isArray(c.raw)
                   ? `95% CI ${pct(c.raw[0])} – ${pct(c.raw[1])}` : `CTR ${pct(c.raw)}` } } } },
    });
    return card;
  }

  function renderSrmBanners(results) {
    const flagged = results.filter((r) => r.srm && r.srm.flagged);
    document.getElementById("banners").querySelectorAll(".banner.srm").forEach((b) => b.remove());
    for (const r of flagged) {
      const b = document.createElement("div");
      b.className = "banner srm";
      b.dataset.experimentId = String(r.experiment.id);
      b.textContent = `Sample ratio mismatch in “${r.experiment.name}”: observed ${JSON.stringify(r.srm.observed)} ` +
        `vs expected ${JSON.stringify((r.srm.expected || []).map((x) => Math.round(x * 10) / 10))} ` +
        `(χ² = ${fixed(r.srm.chi2, 2)}, p = ${pval(r.srm.p_value)}). Do not trust this experiment's results until the cause is found.`;
      document.getElementById("banners").appendChild(b);
    }
  }

  // ---- performance ------------------------------------------------------------------------
  function renderPerformance(p, generatedAt) {
    document.getElementById("performance-window").textContent = `last ${p.window_s / 60} min, ${p.bucket_s} s buckets`;
    for (const name of ["coverage", "diversity"]) {
      const el = document.getElementById(name);
      el.dataset.value = p[name] ?? "";
      el.textContent = pct(p[name], 1);
    }
    const key = (r) => `v${r.model_version} / ${r.variant === "-" ? "no experiment" : r.variant}`;
    const keys = [...new Set((p.series || []).map(key))].sort();
    upsertChart(document.getElementById("chart-ctr-time"), {
      type: "line",
      data: { datasets: keys.map((k, i) => ({
        label: k, data: p.series.filter((r) => key(r) === k && isNum(r.ctr)).map((r) => ({ x: toMs(r.t), y: r.ctr })),
        borderColor: color(i), backgroundColor: color(i), pointRadius: 2, tension: 0.2 })) },
      options: { parsing: false, scales: { x: timeAxis(toMs(generatedAt) - p.window_s * 1000, toMs(generatedAt)),
        y: { beginAtZero: true, ticks: { callback: (v) => pct(v, 1) }, title: { display: true, text: "CTR" } } } },
    });
    document.querySelector("#table-performance tbody").innerHTML = (p.by_version || []).map((r) =>
      `<tr data-key="${esc(key(r))}">${td("model_version", r.model_version)}${td("variant", r.variant)}` +
      `${td("exposures", r.exposures)}${td("clicks", r.clicks)}${td("purchases", r.purchases)}` +
      `${td("ctr", r.ctr, pct(r.ctr))}${td("conversion", r.conversion, pct(r.conversion))}</tr>`).join("")
      || `<tr><td colspan="7" class="empty">No recommendations served in the window.</td></tr>`;
  }

  // ---- drift ------------------------------------------------------------------------------
  function renderDrift(d) {
    const checks = d.checks || [];  // oldest first; one per live model version per run
    document.getElementById("drift-model").textContent = d.model;
    document.querySelector("#drift > .empty").hidden = checks.length > 0;
    const versions = [...new Set(checks.map((c) => String(c.model_version)))].sort();
    // one model version at a time (the newest check's unless chosen): a line per feature, the score, the threshold
    const newest = checks.length ? String(checks[checks.length - 1].model_version) : undefined;
    const version = choose("drift-version", versions, newest);
    const mine = checks.filter((c) => String(c.model_version) === version);
    const names = [...new Set(mine.flatMap((c) => (c.features || []).map((f) => f.name)))].sort();
    const datasets = names.map((name, i) => {
      const rows = mine.map((c) => [toMs(c.checked_at), (c.features || []).find((f) => f.name === name)])
        .filter(([, f]) => f && isNum(f.psi));
      return { label: name, feature: name, model_version: version,
               data: rows.map(([x, f]) => ({ x, y: f.psi })), borderColor: color(i),
               backgroundColor: rows.map(([, f]) => (f.drifted ? WARN : color(i))),
               pointRadius: rows.map(([, f]) => (f.drifted ? 6 : 3)), tension: 0.1 };
    });
    const scored = mine.filter((c) => c.score && isNum(c.score.psi));
    if (scored.length) {
      datasets.push({ label: "prediction score", feature: "__score__", model_version: version,
                      borderDash: [4, 3], borderColor: "#111827", backgroundColor: "#111827",
                      data: scored.map((c) => ({ x: toMs(c.checked_at), y: c.score.psi })) });
    }
    const xs = mine.map((c) => toMs(c.checked_at));
    let min, max;
    if (xs.length) {
      const pad = Math.max((Math.max(...xs) - Math.min(...xs)) * 0.05, 1000);
      [min, max] = [Math.min(...xs) - pad, Math.max(...xs) + pad];
      datasets.push({ label: `threshold ${d.psi_threshold}`, threshold: true, borderColor: WARN, borderDash: [8, 4],
                      borderWidth: 1.5, pointRadius: 0, data: [{ x: min, y: d.psi_threshold }, { x: max, y: d.psi_threshold }] });
    }
    const chart = upsertChart(document.getElementById("chart-drift"), {
      type: "line", data: { datasets },
      options: { parsing: false, scales: { x: timeAxis(min, max), y: { beginAtZero: true, title: { display: true, text: "PSI" } } } },
    });
    chart.canvas.dataset.modelVersion = version ?? "";
    // the latest check of each version
    const latest = versions.map((v) => checks.filter((c) => String(c.model_version) === v).pop());
    document.getElementById("drift-latest").textContent = latest.map((c) =>
      `v${c.model_version}: ${stamp(c.checked_at)}, ${c.samples ?? "?"} samples` +
      (c.status && c.status !== "ok" ? ` (${c.status.replace(/_/g, " ")})` : "")).join(" · ");
    const rows = latest.flatMap((c) => [
      ...(c.features || []).map((f) => ({ ...f, version: String(c.model_version) })),
      ...(c.score && isNum(c.score.psi) ? [{ name: "prediction score", kind: "score", feature: "__score__",
                                              version: String(c.model_version), ...c.score }] : []),
    ]);
    document.querySelector("#table-drift tbody").innerHTML = rows.map((f) =>
      `<tr data-feature="${esc(f.feature || f.name)}" data-model-version="${esc(f.version)}"${f.drifted ? ' class="drifted"' : ""}>` +
      `${td("name", f.name)}${td("model_version", f.version, "v" + f.version)}${td("kind", f.kind)}` +
      `${td("psi", f.psi, fixed(f.psi, 4))}${td("ks_p", f.ks_p, pval(f.ks_p))}` +
      `${td("chi2_p", f.chi2_p, pval(f.chi2_p))}${td("drifted", Boolean(f.drifted), f.drifted ? "yes" : "no")}</tr>`).join("")
      || `<tr><td colspan="7" class="empty">No statistics yet.</td></tr>`;
    document.getElementById("drift-alerts").innerHTML = (d.alerts || []).map((a) => {
      const what = (a.features || []).join(", ") + (a.score_drifted ? " score" : "");
      return `<li data-at="${esc(a.raised_at)}" data-model-version="${esc(a.model_version)}">${esc(stamp(a.raised_at))}: ` +
        `${esc(a.message ?? `${a.model} v${a.model_version}: drift in ${what}`)}</li>`;
    }).join("") || "<li class=\"empty\">none</li>";
  }

  // ---- alerts -----------------------------------------------------------------------------
  function renderAlerts(list) {
    const firing = list.filter((a) => a.state === "firing").length;
    document.getElementById("alerts-firing").textContent = `${firing} firing, ${list.length - firing} resolved`;
    document.querySelector("#table-alerts tbody").innerHTML = list.map((a) =>
      `<tr data-key="${esc(a.key)}" data-state="${esc(a.state)}"${a.state === "firing" ? ' class="drifted"' : ""}>` +
      `${td("state", a.state)}${td("kind", a.kind)}${td("subject", a.subject)}` +
      `${td("since", a.since, stamp(a.since))}${td("last_seen", a.last_seen, stamp(a.last_seen))}` +
      `${td("count", a.count)}${td("summary", a.summary)}</tr>`).join("")
      || `<tr><td colspan="7" class="empty">No alert has fired.</td></tr>`;
  }

  // ---- models -----------------------------------------------------------------------------
  function renderModels(m, generatedAt) {
    document.getElementById("models-name").textContent = m.model;
    const timeline = m.timeline || [];
    const aliases = [...new Set(timeline.map((e) => e.alias))].sort();
    const now = toMs(generatedAt);
    upsertChart(document.getElementById("chart-models"), {
      type: "line",
      data: { datasets: aliases.map((alias, i) => {
        const steps = timeline.filter((e) => e.alias === alias).map((e) => ({ x: toMs(e.at), y: Number(e.version) }));
        if (steps.length && m.live && m.live[alias] != null) steps.push({ x: Math.max(now, steps[steps.length - 1].x), y: Number(m.live[alias]) });
        return { label: alias, alias, data: steps, stepped: "before", borderColor: color(i), backgroundColor: color(i),
                 pointRadius: steps.map((_, j) => (j === steps.length - 1 ? 0 : 4)) };
      }) },
      options: { parsing: false, scales: { x: timeAxis(),
        y: { title: { display: true, text: "version" }, ticks: { stepSize: 1, precision: 0 } } } },
    });
    document.querySelector("#table-models tbody").innerHTML = (m.versions || []).map((v) =>
      `<tr data-version="${esc(v.version)}">${td("version", v.version)}${td("registered_at", v.registered_at, stamp(v.registered_at))}` +
      `${td("went_live_at", v.went_live_at, v.went_live_at ? stamp(v.went_live_at) : "never")}` +
      `${td("aliases", v.aliases, v.aliases.join(", ") || "–")}${td("live_aliases", v.live_aliases, v.live_aliases.join(", ") || "–")}</tr>`).join("")
      || `<tr><td colspan="5" class="empty">No registered versions.</td></tr>`;
    document.getElementById("model-changes").innerHTML = (m.changes || []).map((c) =>
      `<li>${esc(stamp(c.at))}: ${esc(c.action)} ${esc(c.alias)} ${esc(c.from ?? "–")} → ${esc(c.to)} by ${esc(c.actor)}` +
      `${c.reason ? ` (${esc(c.reason)})` : ""}</li>`).join("") || "<li class=\"empty\">none audited</li>";
  }

  // ---- served models (predict): traffic, p99, version per alias, the rollout and its guardrails ----
  const SERVED_CARD = `
    <h3><span class="name"></span><span class="badge rollout-state"></span></h3>
    <div class="meta"></div>
    <div class="charts two">
      <figure data-chart="served-traffic"><figcaption>Requests per second and p99 latency (ms)</figcaption><canvas></canvas></figure>
      <figure data-chart="served-aliases"><figcaption>Version per alias over time (audited moves)</figcaption><canvas></canvas></figure>
    </div>
    <table class="served-totals"><thead><tr><th>model</th><th>requests</th><th>errors</th><th>error rate</th><th>p50 ms</th>
      <th>p95 ms</th><th>p99 ms</th><th>req/s</th></tr></thead><tbody></tbody></table>
    <div class="rollout" hidden>
      <h3>Rollout <small class="rollout-id"></small></h3>
      <div class="rollout-meta"></div>
      <table class="guardrails"><thead><tr><th>guardrail</th><th>status</th><th>value</th><th>limit</th><th>detail</th></tr></thead><tbody></tbody></table>
      <table class="roles"><thead><tr><th>role</th><th>version</th><th>requests</th><th>errors</th><th>p50 ms</th><th>p95 ms</th><th>p99 ms</th></tr></thead><tbody></tbody></table>
      <ul class="rollout-history"></ul>
    </div>`;

  function renderServedModels(s, generatedAt) {
    document.getElementById("served-window").textContent = `last ${s.window_s / 60} min, ${s.bucket_s} s buckets`;
    const models = s.models || [];
    const holder = document.getElementById("served-model-cards");
    document.querySelector("#served_models > .empty").hidden = models.length > 0;
    const keep = new Set(models.map((m) => m.model));
    for (const card of [...holder.children]) {
      if (!keep.has(card.dataset.model)) {
        card.querySelectorAll("canvas").forEach((c) => { Chart.getChart(c)?.destroy(); delete charts[c.id]; });
        card.remove();
      }
    }
    models.forEach((m) => holder.appendChild(servedCard(m, s.bucket_s, generatedAt)));
  }

  function servedCard(m, bucketS, generatedAt) {
    let card = [...document.querySelectorAll(".served")].find((c) => c.dataset.model === m.model);
    if (!card) {
      card = document.createElement("div");
      card.className = "served";
      card.dataset.model = m.model;
      card.innerHTML = SERVED_CARD;
      const [traffic, aliases] = card.querySelectorAll("canvas");
      traffic.id = `chart-served-traffic-${m.model}`;
      aliases.id = `chart-served-aliases-${m.model}`;
    }
    const r = m.rollout;
    card.dataset.rolloutState = r ? r.state : "";
    card.querySelector(".name").textContent = m.model;
    const badge = card.querySelector(".badge.rollout-state");
    badge.className = `badge rollout-state ${r ? r.state : ""}`;
    badge.textContent = r ? `${r.mode} ${r.state.replace("_", " ")}${r.state === "running" ? ` at ${r.share}%` : ""}` : "no rollout";
    card.querySelector(".meta").textContent = Object.entries(m.live || {}).sort()
      .map(([alias, version]) => `${alias} → v${version}`).join(" · ") || "no audited alias";

    const series = m.series || [];
    const xs = series.map((p) => toMs(p.t));
    const [min, max] = xs.length ? [Math.min(...xs), Math.max(...xs)] : [undefined, undefined];
    upsertChart(card.querySelector('[data-chart="served-traffic"] canvas'), {
      type: "line",
      data: { datasets: [
        { label: "req/s", field: "requests", yAxisID: "y", borderColor: color(0), backgroundColor: color(0), pointRadius: 1.5,
          tension: 0.2, data: series.map((p) => ({ x: toMs(p.t), y: p.requests / bucketS })) },
        { label: "p99 ms", field: "p99_ms", yAxisID: "ms", borderColor: "#dc2626", backgroundColor: "#dc2626",
          borderDash: [2, 2], pointRadius: 3, tension: 0.2,
          data: series.filter((p) => isNum(p.p99_ms)).map((p) => ({ x: toMs(p.t), y: p.p99_ms })) },
      ] },
      options: { parsing: false, scales: { x: timeAxis(min, max),
        y: { beginAtZero: true, position: "left", title: { display: true, text: "req/s" } },
        ms: { beginAtZero: true, position: "right", grid: { drawOnChartArea: false }, title: { display: true, text: "p99 ms" } } } },
    });
    const now = toMs(generatedAt);
    const aliases = Object.keys(m.aliases || {}).sort();
    upsertChart(card.querySelector('[data-chart="served-aliases"] canvas'), {
      type: "line",
      data: { datasets: aliases.map((alias, i) => {
        const steps = m.aliases[alias].map((e) => ({ x: toMs(e.at), y: Number(e.version) }));
        if (steps.length) steps.push({ x: Math.max(now, steps[steps.length - 1].x), y: steps[steps.length - 1].y });
        return { label: alias, alias, data: steps, stepped: "before", borderColor: color(i), backgroundColor: color(i),
                 pointRadius: steps.map((_, j) => (j === steps.length - 1 ? 0 : 4)) };
      }) },
      options: { parsing: false, scales: { x: timeAxis(),
        y: { title: { display: true, text: "version" }, ticks: { stepSize: 1, precision: 0 } } } },
    });
    card.querySelector(".served-totals tbody").innerHTML = `<tr data-model="${esc(m.model)}">${td("model", m.model)}` +
      `${td("requests", m.requests)}${td("errors", m.errors)}${td("error_rate", m.error_rate, pct(m.error_rate))}` +
      `${td("p50_ms", m.p50_ms, fixed(m.p50_ms, 2))}${td("p95_ms", m.p95_ms, fixed(m.p95_ms, 2))}` +
      `${td("p99_ms", m.p99_ms, fixed(m.p99_ms, 2))}${td("rps", m.rps, fixed(m.rps, 2))}</tr>`;

    const box = card.querySelector(".rollout");
    box.hidden = !r;
    if (r) {
      box.dataset.rolloutId = r.id;
      card.querySelector(".rollout-id").textContent = r.id;
      card.querySelector(".rollout-meta").textContent = `v${r.candidate} (candidate) vs v${r.champion} (champion) · ` +
        `${r.mode} · ${r.state.replace("_", " ")} · share ${r.share}% (steps ${(r.steps || []).join(" → ")}%) · ` +
        `started ${stamp(r.started_at)}${r.ended_at ? ` · ended ${stamp(r.ended_at)}` : ""}`;
      card.querySelector(".guardrails tbody").innerHTML = (r.guardrails || []).map((g) =>
        `<tr data-guardrail="${esc(g.name)}" data-status="${esc(g.status)}" class="guard-${esc(g.status)}">` +
        `${td("name", g.name)}${td("status", g.status)}${td("value", g.value, fixed(g.value, 4))}` +
        `${td("limit", g.limit, fixed(g.limit, 4))}${td("detail", g.detail)}</tr>`).join("")
        || `<tr><td colspan="5" class="empty">Not judged yet.</td></tr>`;
      const counts = r.counts || {};
      card.querySelector(".roles tbody").innerHTML = counts.error
        ? `<tr><td colspan="7" class="error">${esc(counts.error)}</td></tr>`
        : ["canary", "champion"].map((role) => {
          const c = counts[role] || {};
          return `<tr data-role="${role}">${td("role", role)}${td("version", role === "canary" ? r.candidate : r.champion)}` +
            `${td("requests", c.requests ?? 0)}${td("errors", c.errors ?? 0)}${td("p50_ms", c.p50_ms, fixed(c.p50_ms, 2))}` +
            `${td("p95_ms", c.p95_ms, fixed(c.p95_ms, 2))}${td("p99_ms", c.p99_ms, fixed(c.p99_ms, 2))}</tr>`;
        }).join("");
      card.querySelector(".rollout-history").innerHTML = (r.history || []).map((h) =>
        `<li data-action="${esc(h.action)}">${esc(stamp(h.at))}: ${esc(h.action)} → ${esc(h.share)}%` +
        `${h.reason ? ` (${esc(h.reason)})` : ""}</li>`).join("");
    }
    return card;
  }

  // ---- the loop ---------------------------------------------------------------------------
  const RENDERERS = { alerts: renderAlerts, traffic: renderTraffic, experiments: renderExperiments, performance: renderPerformance,
                      drift: renderDrift, models: renderModels, served_models: renderServedModels };

  function render(data) {
    for (const [name, draw] of Object.entries(RENDERERS)) {
      const message = (data.errors || {})[name];
      sectionError(name, message);
      if (data[name] != null) draw(data[name], data.generated_at);
      if (name === "experiments" && data[name] == null) renderSrmBanners([]);
    }
    const updated = document.getElementById("updated");
    updated.textContent = `updated ${stamp(data.generated_at)}`;
    document.body.dataset.generatedAt = data.generated_at;
    document.body.dataset.state = "ready";
    state.data = data;
    state.renders += 1;
  }

  function fetchError(message) {
    const banners = document.getElementById("banners");
    let b = banners.querySelector(".banner.error");
    if (!message) { b?.remove(); return; }
    if (!b) { b = document.createElement("div"); b.className = "banner error"; banners.prepend(b); }
    b.textContent = `Could not load ${dataUrl}: ${message} (retrying)`;
  }

  // ---- the API key ------------------------------------------------------------------------
  const KEY_SLOT = "nimbus.dashboard.key";
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.get("key")) {
    sessionStorage.setItem(KEY_SLOT, fragment.get("key"));
    history.replaceState(null, "", location.pathname + location.search);  // the key leaves the address bar
  }
  const keyForm = document.getElementById("key-form");
  let timer = null;

  function askForKey(message) {
    keyForm.hidden = false;
    document.getElementById("key-error").textContent = message || "";
    document.body.dataset.state = "locked";
  }

  keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_SLOT, document.getElementById("api-key").value.trim());
    keyForm.hidden = true;
    clearTimeout(timer);
    tick();
  });

  async function tick() {
    const key = sessionStorage.getItem(KEY_SLOT);
    if (!key) { askForKey(); return; }
    try {
      const answer = await fetch(dataUrl, { cache: "no-store", headers: { Accept: "application/json", "X-API-Key": key } });
      if (answer.status === 401 || answer.status === 403) {
        sessionStorage.removeItem(KEY_SLOT);
        askForKey(answer.status === 401 ? "That key is not valid." : "That key lacks the read scope.");
        return;
      }
      if (!answer.ok) throw new Error(`HTTP ${answer.status}: ${(await answer.text()).slice(0, 200)}`);
      render(await answer.json());
      fetchError(null);
    } catch (exc) {
      fetchError(exc.message || String(exc));
      document.body.dataset.state = state.renders ? "stale" : "error";
    } finally {
      if (refreshS > 0) timer = setTimeout(tick, refreshS * 1000);
    }
  }

  redrawOnChange("latency-function");
  redrawOnChange("drift-version");
  document.getElementById("refresh-note").textContent = refreshS > 0 ? `· refreshes every ${refreshS} s` : "· not refreshing";
  tick();
})();
