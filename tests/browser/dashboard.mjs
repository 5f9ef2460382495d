// The dashboard's browser checks, run by tests/e2e/dashboard.rs against a real
// core. Input: one JSON argument (base URL, what to look for, where to put
// screenshots). Output: one JSON object on stdout with what was observed;
// the Rust test compares it with the gRPC API and the ground truth.
import { mkdirSync } from 'node:fs';
import { launch, login, until, num } from './chromium.mjs';

const cfg = JSON.parse(process.argv[2]);
mkdirSync(cfg.artifacts, { recursive: true });
const out = { errors: [] };
const browser = await launch();

// 0. Without a session, a page sends the browser to the login form.
{
  const ctx = await browser.newContext();
  const page = await ctx.newPage();
  await page.goto(cfg.base + '/top');
  const u = new URL(page.url());
  out.anonymous_landed_on = u.pathname + u.search;
  await ctx.close();
}

// 1. Server-side rendering: with JavaScript off, the Live page has its rows
// (after a login through the plain HTML form).
{
  const ctx = await browser.newContext({ javaScriptEnabled: false });
  await login(ctx, cfg.base, cfg.user);
  const page = await ctx.newPage();
  await page.goto(cfg.base + '/');
  out.ssr_rows = await page.locator('table.events tbody tr').count();
  out.ssr_stored = num(await page.textContent('#stored'));
  // The audit page's GET form works without JavaScript.
  await page.goto(cfg.base + '/admin/audit');
  await page.selectOption('select[name="action"]', 'login_succeeded');
  await page.fill('input[name="actor"]', cfg.user.name);
  await Promise.all([page.waitForNavigation(), page.click('form.controls button[type="submit"]')]);
  out.ssr_audit_url = new URL(page.url()).search;
  out.ssr_audit_rows = await page.$$eval('table.audit tbody tr', rs => rs.map(r => [r.dataset.actor, r.dataset.action]));
  // A bad filter is said on the page (a 400, not a 500).
  const bad = await page.goto(cfg.base + '/admin/audit?camera=three');
  out.audit_bad_status = bad.status();
  out.audit_bad = await page.textContent('p.error');
  await ctx.close();
}

const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
await login(ctx, cfg.base, cfg.user);
const page = await ctx.newPage();
page.on('console', m => { if (m.type() === 'error') out.errors.push(`console: ${m.text()} @ ${page.url()}`); });
page.on('pageerror', e => out.errors.push(`pageerror: ${e.message} @ ${page.url()}`));
const shot = async name => page.screenshot({ path: `${cfg.artifacts}/${name}.png`, fullPage: true });

// 2. Hydration and the live counter, without a reload.
await page.goto(cfg.base + '/');
out.hydrated = !!(await until(() => page.locator('.state.live').count(), 30000));
await page.evaluate(() => { window.__sightlineMark = 42; });
out.live_before = num(await page.textContent('#stored'));
out.live_after = await until(async () => {
  const v = num(await page.textContent('#stored'));
  return v > out.live_before ? v : 0;
}, 30000, 250);
out.live_no_reload = (await page.evaluate(() => window.__sightlineMark)) === 42;
out.live_rows = await page.locator('table.events tbody tr').count();
await shot('live');

// 3. Top items for a fixed range, as the table shows it.
await page.goto(`${cfg.base}/top?range=custom&from=${cfg.top.from}&to=${cfg.top.to}&x=${cfg.top.x}`);
await until(() => page.locator('section.card.top').count(), 15000);
out.top = await page.$$eval('section.card.top', cards => cards.map(c => ({
  location: Number(c.dataset.location),
  items: [...c.querySelectorAll('tr[data-item]')].map(r => [r.dataset.item, Number(r.dataset.count)]),
})));
await shot('top');

// 4. Timeline.
await page.goto(cfg.base + '/timeline?range=1h&by=item');
out.timeline_series = await until(() => page.locator('figure.chart polyline').count(), 15000);
await shot('timeline');

// 5. Search: a known det_oid, then an item.
await page.goto(`${cfg.base}/search?q=det_oid:${cfg.search_det}`);
await until(() => page.locator('#hits').count(), 15000);
out.search_det_rows = await page.$$eval('table.events tbody tr', rs => rs.map(r => r.dataset.det));
await page.goto(`${cfg.base}/search?item=${encodeURIComponent(cfg.search_item)}`);
await until(() => page.locator('#hits').count(), 15000);
out.search_item_hits = num(await page.textContent('#hits'));
out.search_item_rows = await page.locator('table.events tbody tr').count();
await shot('search');

// 6. An event with footage: the clip loads, plays and seeks; the snapshot shows.
await page.goto(`${cfg.base}/event/${cfg.clip_det}`);
await until(() => page.locator('video#clip').count(), 15000);
out.video_ready = await until(() => page.$eval('video#clip', v => v.readyState >= 2 ? v.readyState : 0), 20000);
out.video_played = await page.$eval('video#clip', async v => {
  await v.play();
  const end = Date.now() + 10000;
  while (v.currentTime < 0.3 && Date.now() < end) await new Promise(r => setTimeout(r, 50));
  v.pause();
  return v.currentTime;
});
out.video_seeked = await page.$eval('video#clip', v => new Promise(resolve => {
  const target = Math.min(1.5, v.duration / 2);
  v.addEventListener('seeked', () => resolve([target, v.currentTime, v.duration]), { once: true });
  v.currentTime = target;
  setTimeout(() => resolve([target, -1, v.duration]), 10000);
}));
out.snapshot_width = await until(() => page.$eval('img.snapshot', i => i.complete ? i.naturalWidth : 0), 10000);
await shot('event');

// 7. Fleet and quarantine; the Live page on a tablet.
await page.goto(cfg.base + '/fleet');
out.fleet_agents = await until(() => page.locator('section.agent').count(), 15000);
out.camera_state = await page.$eval('tr[data-camera="101"]', r => r.dataset.state).catch(() => null);
await shot('fleet');
await page.goto(cfg.base + '/quarantine');
await until(() => page.locator('#rejected-total').count(), 15000);
out.quarantine_total = num(await page.textContent('#rejected-total'));
out.quarantine_fields = await page.$$eval('table.quarantine tbody tr', rs => rs.map(r => r.dataset.field));
await shot('quarantine');

// 8. The audit page (admins only, linked in the header): everything, then
// this account's logins one per page, older and newer by seq, after hydration.
await page.goto(cfg.base + '/admin/audit');
await until(() => page.locator('table.audit tbody tr').count(), 15000);
out.audit_nav = await page.locator('header nav a[href="/admin/audit"]').count();
await shot('audit');
const auditRows = () => page.$$eval('table.audit tbody tr', rs => rs.map(r => ({
  seq: Number(r.dataset.seq), actor: r.dataset.actor, action: r.dataset.action,
})));
await page.goto(`${cfg.base}/admin/audit?action=login_succeeded&limit=1`);
await until(() => page.locator('table.audit').count(), 15000);
out.audit_first = await auditRows();
const first = out.audit_first[0]?.seq ?? 0;
await page.click('a.older');
out.audit_older = await until(async () => {
  const rows = await auditRows();
  return rows.length && rows[0].seq < first ? rows : 0;
}, 15000, 100);
await page.click('a.newer');
out.audit_newer = await until(async () => {
  const rows = await auditRows();
  return rows.length && rows[0].seq >= first ? rows : 0;
}, 15000, 100);
await page.setViewportSize({ width: 820, height: 1180 });
await page.goto(cfg.base + '/');
await until(() => page.locator('.state.live').count(), 15000);
await shot('live-tablet');

await browser.close();
console.log(JSON.stringify(out));
