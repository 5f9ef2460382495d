// The dashboard benchmark's browser half (run by tests/src/bin/bench_dashboard.rs
// against a core taking 10,000 events/s): first paint of the Live page, and
// commit → on-screen lag of the rows the Live page shows, measured in the page
// by a MutationObserver (each row carries its commit time, same machine clock).
// Prints one JSON object.
import { launch, login, until } from './chromium.mjs';

const base = process.argv[2];
const seconds = Number(process.argv[3] || 20);
// The account to log in as (argv 4 and 5: name and password).
const user = { name: process.argv[4], password: process.argv[5] };
const browser = await launch();
const out = {};

// First paint: a fresh context (cold cache) each time; median of 5.
const paints = [];
for (let i = 0; i < 5; i++) {
  const ctx = await browser.newContext();
  await login(ctx, base, user);
  const page = await ctx.newPage();
  await page.goto(base + '/', { waitUntil: 'load' });
  await until(() => page.evaluate(() => performance.getEntriesByType('paint').length > 0), 10000);
  const p = await page.evaluate(() => Object.fromEntries(performance.getEntriesByType('paint').map(e => [e.name, e.startTime])));
  paints.push(p['first-contentful-paint'] ?? p['first-paint']);
  await ctx.close();
}
paints.sort((a, b) => a - b);
out.first_paint_ms = paints[Math.floor(paints.length / 2)];
out.first_paints = paints;

// Live lag: rows as they appear on screen.
const ctx = await browser.newContext();
await login(ctx, base, user);
const page = await ctx.newPage();
await page.goto(base + '/');
await until(() => page.locator('.state.live').count(), 30000);
await page.evaluate(() => {
  window.__lags = [];
  // A row kept from an earlier tick may be moved (removed and added again):
  // only a row's first appearance counts.
  const seen = new Set();
  const body = document.querySelector('table.events tbody');
  new MutationObserver(records => {
    const now = Date.now();
    for (const r of records) for (const n of r.addedNodes) {
      if (n.nodeType !== 1 || !n.dataset || !n.dataset.committed || seen.has(n.dataset.det)) continue;
      seen.add(n.dataset.det);
      window.__lags.push(now - Number(n.dataset.committed));
    }
  }).observe(body, { childList: true });
});
const rateBefore = await page.textContent('#rate');
await page.waitForTimeout(seconds * 1000);
const lags = await page.evaluate(() => window.__lags);
lags.sort((a, b) => a - b);
const q = p => lags.length ? lags[Math.min(lags.length - 1, Math.floor(p * lags.length))] : null;
out.rows_seen = lags.length;
out.live_lag_p50_ms = q(0.5);
out.live_lag_p90_ms = q(0.9);
out.live_lag_p99_ms = q(0.99);
out.live_lag_max_ms = lags.length ? lags[lags.length - 1] : null;
out.rate_shown = [rateBefore, await page.textContent('#rate')];
await browser.close();
console.log(JSON.stringify(out));
