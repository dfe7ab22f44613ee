"""What the HTML page carries inline besides its charts: fonts, Plotly's chart settings, the
styles, the script that records script errors in the page, and the one that sorts tables."""

FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif"
CONFIG = {"displaylogo": False, "responsive": True, "toImageButtonOptions": {"format": "svg"}}

# Records script errors (uncaught exceptions, rejected promises, resources that failed to load)
# in <html data-errors="[...]"> and shows them at the top of the page. First in <head>.
ERROR_PROBE = """(function () {
  var errors = [], root = document.documentElement;
  root.setAttribute("data-errors", "[]");
  function show() {
    var box = document.getElementById("js-errors");
    if (box && errors.length) { box.hidden = false; box.textContent = "This page hit " + errors.length +
      " script error(s): " + errors.join(" | "); }
  }
  function note(message) { errors.push(String(message)); root.setAttribute("data-errors", JSON.stringify(errors)); show(); }
  window.addEventListener("error", function (e) {
    var t = e.target;
    if (t && t !== window && (t.src || t.href)) { note("could not load " + (t.src || t.href)); }
    else { note(e.message || "error"); }
  }, true);
  window.addEventListener("unhandledrejection", function (e) {
    note("unhandled rejection: " + ((e.reason && e.reason.message) || e.reason));
  });
  document.addEventListener("DOMContentLoaded", show);
  window.addEventListener("load", function () {
    setTimeout(function () {
      var charts = document.querySelectorAll(".plotly-graph-div"), drawn = 0;
      charts.forEach(function (c) { if (c.querySelector(".main-svg")) { drawn++; } });
      root.setAttribute("data-charts", String(charts.length));
      root.setAttribute("data-drawn", String(drawn));
    }, 0);
  });
})();"""

SORT_TABLES = """window.addEventListener("load", function () {  // charts drawn before the layout settled
  document.querySelectorAll(".plotly-graph-div").forEach(function (d) { if (window.Plotly) { Plotly.Plots.resize(d); } });
});
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.title = "sort"; th.addEventListener("click", function () {
      var body = table.tBodies[0], rows = Array.from(body.rows), up = th.getAttribute("aria-sort") !== "ascending";
      table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", up ? "ascending" : "descending");
      function key(row) { var c = row.cells[col]; var v = c ? (c.dataset.v !== undefined ? c.dataset.v : c.textContent) : "";
        var n = parseFloat(v); return isNaN(n) || v === "" ? v.toLowerCase() : n; }
      rows.sort(function (a, b) { var x = key(a), y = key(b);
        if (typeof x !== typeof y) { return (typeof x === "number" ? -1 : 1) * (up ? 1 : -1); }
        return (x < y ? -1 : x > y ? 1 : 0) * (up ? 1 : -1); });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});"""

CSS = """
:root { --ink: #1d2433; --muted: #5b6475; --line: #dde2ea; --card: #ffffff; --bg: #f4f6f9; --accent: #08519c;
        --bad: #b00020; --ok: #1b7f3b; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink); font: 14px/1.45 %(font)s; }
main { max-width: 1360px; margin: 0 auto; padding: 20px 24px 60px; }
h1 { font-size: 24px; margin: 4px 0 2px; } h2 { font-size: 19px; margin: 0 0 10px; } h3 { font-size: 15px; margin: 16px 0 6px; }
.sub { color: var(--muted); margin-bottom: 14px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 16px 18px; margin: 14px 0;
        box-shadow: 0 1px 2px rgba(20, 30, 50, .05); }
.facts { display: grid; grid-template-columns: repeat(auto-fit, minmax(300px, 1fr)); gap: 4px 28px; }
.facts dl { display: grid; grid-template-columns: max-content 1fr; gap: 3px 12px; margin: 0; }
.facts dt { color: var(--muted); } .facts dd { margin: 0; overflow-wrap: anywhere; }
.lead { font-size: 17px; }
.badge { display: inline-block; padding: 0 7px; border-radius: 9px; font-size: 12px; font-weight: 600; }
.badge.real { background: #e3f4e8; color: var(--ok); } .badge.synthetic, .badge.unverified { background: #fff1d6; color: #8a5a00; }
.badge.peer { background: #ece6f7; color: #5b3a99; } .badge.bad { background: #fde7ea; color: var(--bad); }
.chart { min-width: 0; margin: 6px 0 14px; } .note { color: var(--muted); font-size: 12.5px; margin: 4px 0 8px; }
table { border-collapse: collapse; width: 100%%; font-size: 13px; margin: 6px 0 4px; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #eef1f6; position: sticky; top: 0; cursor: pointer; user-select: none; white-space: nowrap; }
th[aria-sort=ascending]::after { content: " \\25B2"; } th[aria-sort=descending]::after { content: " \\25BC"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.group td { background: #f7f8fb; color: var(--muted); font-weight: 600; }
.scroll { overflow-x: auto; } td.flags { min-width: 220px; }
nav a { margin-right: 14px; color: var(--accent); text-decoration: none; } nav a:hover { text-decoration: underline; }
#js-errors { background: var(--bad); color: #fff; padding: 8px 12px; font-weight: 600; }
footer { color: var(--muted); font-size: 12px; margin-top: 30px; }
""" % {"font": FONT}
