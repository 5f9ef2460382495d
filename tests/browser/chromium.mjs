// Debian's Chromium, headless, with what it needs on a machine without
// internet (no background networking, no first-run, no QUIC).
import { chromium } from 'playwright-core';

export async function launch() {
  return chromium.launch({
    executablePath: process.env.SIGHTLINE_CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--autoplay-policy=no-user-gesture-required'],
  });
}

/// Logs `ctx` in through the dashboard's /login form as `user`
/// ({ name, password }); throws with the page's message if refused.
export async function login(ctx, base, user) {
  const page = await ctx.newPage();
  await page.goto(base + '/login');
  await page.fill('input[name=name]', user.name);
  await page.fill('input[name=password]', user.password);
  await Promise.all([page.waitForURL(u => !u.pathname.startsWith('/login')), page.click('button[type=submit]')]);
  await page.close();
}

/// Waits until `fn()` is truthy (polling), or returns its last value after `ms`.
export async function until(fn, ms, step = 100) {
  const end = Date.now() + ms;
  let v;
  while (Date.now() < end) {
    v = await fn();
    if (v) return v;
    await new Promise(r => setTimeout(r, step));
  }
  return v;
}

/// `12,345` → 12345.
export const num = s => Number(String(s ?? '').replace(/[^0-9.-]/g, ''));
