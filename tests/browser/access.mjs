// Role and scope checks in the dashboard, run by tests/e2e/dashboard_access.rs
// against a real core. Input: one JSON argument (base URL, the accounts, what
// to look at). Protocol: once every account's Live page is open and its live
// feed is flowing, one JSON line `{"ready": …}` on stdout; then the test
// publishes more events and writes one line on stdin; then the remaining
// pages are visited and one JSON object with everything observed is printed.
// Nothing is judged here: the Rust test compares it with the ground truth.
//
// det_oids do not fit in a JavaScript number: they travel as strings, and
// the live feed's ticks are passed on as raw JSON text.
import { mkdirSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { launch, login, until, num } from './chromium.mjs';

const cfg = JSON.parse(process.argv[2]);
// Never hang the test: past this, stop (the test reports the missing JSON).
setTimeout(() => { console.error('access.mjs: timed out'); process.exit(3); }, cfg.timeout_ms ?? 120000).unref();
mkdirSync(cfg.artifacts, { recursive: true });
const stdin = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const browser = await launch();
const errors = [];
// A console error as reported: its first line or so (a wasm panic's stack is long).
const brief = s => String(s).slice(0, 400);

// One logged-in browser per account, each with its own session cookie.
const roles = [];
for (const r of cfg.roles) {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  await login(ctx, cfg.base, r);
  const page = await ctx.newPage();
  page.on('console', m => { if (m.type() === 'error') errors.push(`${r.key}: console: ${brief(m.text())} @ ${page.url()}`); });
  page.on('pageerror', e => errors.push(`${r.key}: pageerror: ${brief(e.message)} @ ${page.url()}`));
  roles.push({ r, ctx, page, out: {} });
}
const shot = (x, name) => x.page.screenshot({ path: `${cfg.artifacts}/${x.r.key}-${name}.png`, fullPage: true });
const dets = page => page.$$eval('table.events tbody tr', rs => rs.map(r => r.dataset.det));
const thumbs = page => page.locator('table.events img.thumb').count();

// 1. Live: hydrated, the feed flowing, and our own reader on /api/live with
// the page's session cookie, keeping every tick as text.
for (const x of roles) {
  const { page, out } = x;
  await page.goto(cfg.base + '/');
  out.hydrated = !!(await until(() => page.locator('.state.live').count(), 30000));
  await page.evaluate(() => {
    window.__ticks = [];
    window.__feed = new AbortController();
    fetch('/api/live', { signal: window.__feed.signal }).then(async r => {
      window.__feedStatus = r.status;
      const reader = r.body.getReader();
      const text = new TextDecoder();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += text.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const data = buf.slice(0, i).split('\n').filter(l => l.startsWith('data:'))
            .map(l => l.slice(5).replace(/^ /, '')).join('\n');
          buf = buf.slice(i + 2);
          if (data) window.__ticks.push(data);
        }
      }
    }).catch(e => { if (e.name !== 'AbortError') window.__feedError = String(e); });
  });
}
// A tick on both feeds (one a second when idle), so the counters are the feed's.
for (const x of roles) {
  await until(() => x.page.evaluate(() => window.__ticks.length >= 2), 10000);
  x.out.live_before = num(await x.page.textContent('#stored'));
  x.out.live_rows_before = await dets(x.page);
  x.out.live_thumbs_before = await thumbs(x.page);
  await x.page.evaluate(() => { window.__mark = 7; });
}
console.log(JSON.stringify({ ready: Object.fromEntries(roles.map(x => [x.r.key, x.out.live_before])) }));

// 2. The test publishes in and out of every scope, then says what each
// counter must reach.
const go = JSON.parse((await stdin.next()).value);
for (const x of roles) {
  const { page, out } = x;
  const want = go.stored[x.r.key];
  out.live_after = await until(async () => {
    const v = num(await page.textContent('#stored'));
    return v >= want ? v : 0;
  }, 15000, 100) || num(await page.textContent('#stored'));
}
// Anything that should not come would have come by now.
await new Promise(r => setTimeout(r, 1500));
for (const x of roles) {
  const { page, out } = x;
  out.live_after_settled = num(await page.textContent('#stored'));
  out.live_rows_after = await dets(page);
  out.live_thumbs_after = await thumbs(page);
  out.live_no_reload = (await page.evaluate(() => window.__mark)) === 7;
  const feed = await page.evaluate(() => {
    window.__feed.abort();
    return { status: window.__feedStatus ?? null, error: window.__feedError ?? null, ticks: window.__ticks };
  });
  out.feed_status = feed.status;
  out.feed_error = feed.error;
  out.feed_ticks = feed.ticks;
  await shot(x, 'live');
}

// 3. Every other page, per account.
const enc = encodeURIComponent;
for (const x of roles) {
  const { page, out, r } = x;

  // Top items for the dataset's range.
  const t = cfg.top;
  await page.goto(`${cfg.base}/top?range=custom&from=${t.from}&to=${t.to}&x=${t.x}`);
  await until(() => page.locator('section.card.top, p.error').count(), 15000);
  out.top = await page.$$eval('section.card.top', cards => cards.map(c => ({
    location: Number(c.dataset.location),
    total: Number(c.querySelector('h2 .muted').textContent.replace(/[^0-9]/g, '')),
    items: [...c.querySelectorAll('tr[data-item]')].map(i => [i.dataset.item, Number(i.dataset.count)]),
  })));
  await shot(x, 'top');

  // Timeline over the same range, by location and by item: the legend's totals.
  out.timeline = {};
  for (const by of ['location', 'item']) {
    await page.goto(`${cfg.base}/timeline?range=custom&from=${t.from}&to=${t.to}&by=${by}`);
    await until(() => page.locator('figure.chart, p.error').count(), 15000);
    out.timeline[by] = await page.$$eval('figcaption.legend .key', ks => ks.map(k => {
      const s = k.textContent.trim();
      const i = s.lastIndexOf(' ');
      return [s.slice(0, i), Number(s.slice(i + 1).replace(/[^0-9]/g, ''))];
    }));
    await shot(x, `timeline-${by}`);
  }

  // Search: everything; an event in scope by det_oid; one outside.
  const search = async (qs, name) => {
    await page.goto(`${cfg.base}/search?${qs}`);
    await until(() => page.locator('#hits, p.error').count(), 15000);
    const res = {
      hits: (await page.locator('#hits').count()) ? num(await page.textContent('#hits')) : null,
      rows: await dets(page),
      thumbs: await thumbs(page),
      error: (await page.locator('p.error').count()) ? await page.textContent('p.error') : null,
    };
    if (name) await shot(x, name);
    return res;
  };
  out.search_all = await search('q=', 'search');
  out.search_in = await search(`q=${enc('det_oid:' + cfg.events.in)}`);
  if (r.out_det) {
    out.search_out = await search(`q=${enc('det_oid:' + r.out_det)}`);
    // Another location by the filter, and by its name in the query text.
    out.search_location_out = await search(`location=${cfg.out_location}`);
    out.search_named_out = await search(`q=${enc(`"Location ${cfg.out_location}"`)}`);
  }

  // Event pages: in scope, outside (when there is an outside), nonexistent.
  const event = async det => {
    const resp = await page.goto(`${cfg.base}/event/${det}`);
    await until(() => page.locator('table.fields, p.error').count(), 15000);
    return {
      status: resp.status(),
      found: (await page.locator('table.fields').count()) > 0,
      error: (await page.locator('p.error').count()) ? (await page.textContent('p.error')).trim() : null,
    };
  };
  out.event_in = await event(cfg.events.in);
  if (r.out_det) out.event_out = await event(r.out_det);
  out.event_missing = await event(cfg.events.missing);

  // The event with footage in scope: the player and snapshot (or not), the
  // page's HTML naming no footage a viewer may not have, /media answering.
  const f = cfg.footage.in;
  out.footage_in = await event(f.det);
  out.footage_in.nearby = await dets(page);
  out.footage_in.video = await page.locator('video#clip').count();
  out.footage_in.snapshot = await page.locator('img.snapshot').count();
  if (out.footage_in.video) {
    out.footage_in.video_ready = await until(() => page.$eval('video#clip', v => v.readyState >= 2 ? v.readyState : 0), 20000);
  }
  if (out.footage_in.snapshot) {
    out.footage_in.snapshot_width = await until(() => page.$eval('img.snapshot', i => i.complete ? i.naturalWidth : 0), 10000);
  }
  await shot(x, 'event');
  const status = async url => (await page.request.get(cfg.base + url, { maxRedirects: 0 })).status();
  // The pages as the server sends them (with the data they hydrate from):
  // which footage addresses they carry.
  const shas = [...f.shas, ...cfg.footage.out.shas];
  out.html_names = {};
  for (const path of ['/', '/search?q=', `/event/${f.det}`]) {
    const html = await (await page.request.get(cfg.base + path)).text();
    out.html_names[path] = shas.filter(s => html.includes(s));
  }
  // The admin pages.
  out.admin_pages = { fleet: await status('/fleet'), quarantine: await status('/quarantine') };
  out.footage_in.media = {};
  for (const [kind, sha] of Object.entries(f.media)) {
    out.footage_in.media[kind] = await status(`/media/${sha}?event=${f.det}`);
  }
  // The footage of an event outside the scope: by its own event, by an
  // event in scope, and without one.
  const o = cfg.footage.out;
  out.footage_out = {
    page: await event(o.det),
    by_its_event: await status(`/media/${o.media.clip}?event=${o.det}`),
    by_an_event_in_scope: await status(`/media/${o.media.clip}?event=${f.det}`),
    without_event: await status(`/media/${o.media.clip}`),
  };
}

await browser.close();
// Written in full before exiting (a pipe takes large writes asynchronously).
const report = JSON.stringify({ roles: Object.fromEntries(roles.map(x => [x.r.key, x.out])), errors }) + '\n';
process.stdout.write(report, () => process.exit(0));
