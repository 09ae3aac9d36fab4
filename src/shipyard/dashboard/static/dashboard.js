// shipyard dashboard: confirmations for action forms, effect bars, and the traffic charts (uPlot).
// Loaded from the package (no CDN); the page's Content-Security-Policy allows only scripts of this server.
(function () {
  "use strict";

  function confirmations(root) {
    root.querySelectorAll("form[data-confirm]").forEach(function (form) {
      if (form.dataset.bound) return;
      form.dataset.bound = "1";
      form.addEventListener("submit", function (event) {
        if (!window.confirm(form.dataset.confirm)) event.preventDefault();
      });
    });
  }

  function bars(root) {
    root.querySelectorAll(".bar[data-width]").forEach(function (bar) {
      bar.style.width = Math.max(0, Math.min(100, Number(bar.dataset.width) || 0)) + "px";
    });
  }

  function chart(el, title, series, data) {
    if (typeof uPlot === "undefined") return;
    var opts = {
      title: title, width: Math.min(560, Math.max(320, el.parentElement.clientWidth / 2 - 40)), height: 220,
      series: [{}].concat(series), axes: [{}, {size: 60}],
      scales: {x: {time: true}},
    };
    new uPlot(opts, data, el);
  }

  function charts() {
    var source = document.getElementById("series");
    if (!source) return;
    var points = JSON.parse(source.textContent || "[]") || [];
    var t = points.map(function (p) { return p.t; });
    var pick = function (key) { return points.map(function (p) { return p[key]; }); };
    var latency = document.querySelector('[data-chart="latency"]');
    var throughput = document.querySelector('[data-chart="throughput"]');
    if (latency) chart(latency, "Latency (ms)", [
      {label: "p50", stroke: "#1f5fbf", width: 2, points: {show: true, size: 4}},
      {label: "p99", stroke: "#b42318", width: 2, points: {show: true, size: 4}},
    ], [t, pick("p50_ms"), pick("p99_ms")]);
    if (throughput) chart(throughput, "Throughput", [
      {label: "req/s", stroke: "#067647", width: 2, fill: "rgba(6,118,71,0.08)"},
      {label: "errors %", stroke: "#b42318", width: 1},
    ], [t, pick("requests_per_second"), pick("error_percent")]);
  }

  function realized() {
    var source = document.getElementById("realized-series");
    var el = document.querySelector('[data-chart="realized"]');
    if (!source || !el) return;
    var doc = JSON.parse(source.textContent || "null");
    if (!doc) return;
    var colors = ["#1f5fbf", "#b42318", "#067647", "#7a2e9e", "#b54708"];
    var names = Object.keys(doc.versions).sort();
    chart(el, "Realized " + doc.metric + " (labelled predictions, by when they were made)",
      names.map(function (name, i) {
        return {label: name, stroke: colors[i % colors.length], width: 2, points: {show: true, size: 5}};
      }),
      [doc.t].concat(names.map(function (name) { return doc.versions[name]; })));
  }

  // Drift per feature: the reference's and the window's share per bin (bars side by side), from the
  // /drift/distributions document the page embeds. Drawn charts are kept in window.shipyardCharts by name.
  function distributions() {
    var source = document.getElementById("drift-distributions");
    if (!source || typeof uPlot === "undefined") return;
    var doc = JSON.parse(source.textContent || "null");
    if (!doc) return;
    window.shipyardCharts = window.shipyardCharts || {};
    var bars = uPlot.paths && uPlot.paths.bars;
    doc.features.forEach(function (f) {
      var el = document.querySelector('[data-chart="distribution"][data-feature="' + CSS.escape(f.feature) + '"]');
      if (!el) return;
      var labels = f.labels, n = labels.length;
      var x = labels.map(function (_, i) { return i; });
      var side = function (align, color, fill) {
        return {stroke: color, fill: fill, width: 1,
                paths: bars ? bars({size: [0.45, 40], align: align}) : undefined, points: {show: false}};
      };
      var opts = {
        title: f.feature + " (" + f.side + ")",
        width: Math.min(560, Math.max(320, el.parentElement.clientWidth / 2 - 40)), height: 200,
        series: [{label: "bin", value: function (u, i) { return i == null ? "" : labels[i]; }},
          Object.assign({label: "reference (" + f.reference.rows + ")"}, side(-1, "#1f5fbf", "rgba(31,95,191,0.45)")),
          Object.assign({label: "current (" + f.current.rows + ")"}, side(1, "#b42318", "rgba(180,35,24,0.45)"))],
        scales: {x: {time: false, range: [-0.6, n - 0.4]}, y: {range: [0, null]}},
        axes: [{values: function (u, splits) {
          return splits.map(function (i) { return Number.isInteger(i) && i >= 0 && i < n ? labels[i] : ""; });
        }, incrs: [1, 2, 5, 10, 20, 50, 100], space: 110, size: 40}, {size: 50}],
      };
      window.shipyardCharts["distribution:" + f.feature] =
        new uPlot(opts, [x, f.reference.shares, f.current.shares], el);
    });
  }

  function ready() {
    confirmations(document);
    bars(document);
    charts();
    realized();
    distributions();
    document.body.addEventListener("htmx:afterSwap", function (event) {
      confirmations(event.target);
      bars(event.target);
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", ready);
  else ready();
})();
