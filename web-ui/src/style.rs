//! The dashboard's one stylesheet, inlined in the shell (no extra request).
//! Laid out for a laptop first; below 800 px wide (a tablet upright) tables
//! scroll sideways and cards stack.

pub const CSS: &str = r#"
:root { --fg:#111827; --muted:#6b7280; --line:#e5e7eb; --bg:#f8fafc; --card:#fff; --accent:#2563eb; --warn:#b45309; --bad:#b91c1c; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color:var(--fg); background:var(--bg); }
header.top { display:flex; align-items:center; gap:1.5rem; padding:.6rem 1rem; background:#0f172a; color:#fff; flex-wrap:wrap; }
header.top .brand { color:#fff; font-weight:700; text-decoration:none; font-size:1.1rem; }
header.top nav { display:flex; gap:.25rem; flex-wrap:wrap; }
header.top nav a { color:#cbd5e1; text-decoration:none; padding:.3rem .6rem; border-radius:.3rem; }
header.top nav a[aria-current="page"], header.top nav a:hover { background:#1e293b; color:#fff; }
header.top form.user { margin-left:auto; display:flex; gap:.5rem; align-items:center; color:#cbd5e1; }
header.top form.user button { background:#1e293b; color:#fff; border:1px solid #334155; border-radius:.3rem; padding:.2rem .6rem; cursor:pointer; }
main { padding:1rem; max-width:1400px; margin:0 auto; }
h1 { font-size:1.35rem; margin:.2rem 0 .8rem; }
h2 { font-size:1.05rem; margin:.2rem 0 .5rem; }
a { color:var(--accent); }
.muted { color:var(--muted); font-weight:normal; }
.error { color:var(--bad); background:#fef2f2; border:1px solid #fecaca; padding:.5rem .8rem; border-radius:.3rem; }
.pending { color:var(--warn); background:#fffbeb; border:1px solid #fde68a; padding:.5rem .8rem; border-radius:.3rem; }
.state { font-size:.75rem; font-weight:600; padding:.1rem .5rem; border-radius:1rem; vertical-align:middle; background:#e5e7eb; }
.state.live { background:#dcfce7; color:#166534; }
.state.reconnecting, .state.unavailable { background:#fee2e2; color:var(--bad); }
.counters { display:grid; grid-template-columns:repeat(auto-fit, minmax(140px, 1fr)); gap:.6rem; margin-bottom:1rem; }
.counter { background:var(--card); border:1px solid var(--line); border-radius:.5rem; padding:.6rem .8rem; }
.counter .value { font-size:1.6rem; font-weight:700; font-variant-numeric:tabular-nums; }
.counter .label { color:var(--muted); font-size:.8rem; }
table { border-collapse:collapse; width:100%; background:var(--card); }
th, td { text-align:left; padding:.3rem .5rem; border-bottom:1px solid var(--line); white-space:nowrap; }
th { font-size:.75rem; text-transform:uppercase; letter-spacing:.03em; color:var(--muted); }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
tr.unmatched td { background:#fff7ed; }
.thumbcell { width:72px; padding:2px; }
img.thumb { width:64px; height:36px; object-fit:cover; border-radius:3px; display:block; background:#e5e7eb; }
.controls { display:flex; flex-wrap:wrap; gap:.6rem; align-items:center; margin-bottom:1rem; }
.controls input, .controls select, .controls button { font:inherit; padding:.3rem .5rem; border:1px solid #cbd5e1; border-radius:.3rem; background:#fff; }
.controls input.q { flex:1 1 320px; }
.controls button { background:var(--accent); color:#fff; border-color:var(--accent); cursor:pointer; }
.cards { display:grid; grid-template-columns:repeat(auto-fill, minmax(340px, 1fr)); gap:.8rem; }
.cards.wide { grid-template-columns:repeat(auto-fill, minmax(min(100%, 600px), 1fr)); }
.card { background:var(--card); border:1px solid var(--line); border-radius:.5rem; padding:.8rem; overflow-x:auto; }
.bars { margin:.3rem 0 .6rem; }
.bar { display:grid; grid-template-columns:7rem 1fr 4.5rem; gap:.5rem; align-items:center; margin:.15rem 0; }
.bar .label { overflow:hidden; text-overflow:ellipsis; white-space:nowrap; }
.bar .track { background:#eef2ff; border-radius:.2rem; height:.9rem; }
.bar .fill { display:block; height:100%; background:var(--accent); border-radius:.2rem; }
.bar .value { text-align:right; font-variant-numeric:tabular-nums; }
figure.chart { margin:0; background:var(--card); border:1px solid var(--line); border-radius:.5rem; padding:.8rem; }
figure.chart svg { width:100%; height:320px; display:block; border-left:1px solid var(--line); border-bottom:1px solid var(--line); }
.ymax { color:var(--muted); font-size:.8rem; }
.xaxis { display:flex; justify-content:space-between; color:var(--muted); font-size:.75rem; margin-top:.2rem; }
.legend { display:flex; flex-wrap:wrap; gap:.8rem; margin-top:.5rem; }
.legend .dot, h2 .dot, td .dot { display:inline-block; width:.7rem; height:.7rem; border-radius:50%; margin-right:.3rem; }
.dot.connected, .dot.streaming { background:#16a34a; } .dot.disconnected, .dot.off { background:#9ca3af; }
.dot.revoked { background:#dc2626; } dd.warn { color:#b91c1c; font-weight:600; }
.dot.connecting { background:#f59e0b; } .dot.reconnecting { background:#dc2626; }
.event { display:grid; grid-template-columns:minmax(0, 3fr) minmax(280px, 2fr); gap:1rem; margin-bottom:1rem; align-items:start; }
.footage figure { margin:0 0 .8rem; }
.footage img.snapshot, .footage video { width:100%; border-radius:.4rem; background:#000; display:block; }
table.fields th { text-transform:none; letter-spacing:0; font-size:.85rem; width:40%; }
table.fields td { white-space:normal; word-break:break-word; }
dl.kv { display:grid; grid-template-columns:auto 1fr; gap:.15rem .8rem; margin:.3rem 0 .6rem; }
dl.kv dt { color:var(--muted); } dl.kv dd { margin:0; }
code.raw { font-size:.75rem; white-space:pre-wrap; word-break:break-all; }
table.quarantine td { white-space:normal; }
table.audit td:last-child { white-space:normal; max-width:28rem; }
td.outcome.denied { color:var(--bad); font-weight:600; } td.outcome.error { color:var(--warn); font-weight:600; }
nav.pager { display:flex; gap:1.2rem; margin:.6rem 0; }
a.next { display:inline-block; margin:.6rem 0; }
@media (max-width: 800px) {
  main { padding:.6rem; }
  .event { grid-template-columns:1fr; }
  table.events, table.quarantine, table.audit { display:block; overflow-x:auto; }
  .cards { grid-template-columns:1fr; }
}
"#;
