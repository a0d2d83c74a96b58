// Browser tests of `kubectl apitoken ui` in the system Chromium: the page
// driven as a person would, against the real operator, proxy and API on
// the Kubernetes API test server (cli/examples/console_stack.rs), with the
// proxy asked whether each token works.
//
// CONSOLE_STACK: the built example binary (default: the debug build).
// CONSOLE_SCREENSHOTS: a folder to write the docs' screenshots into.
//
// The stack reads `down` and `up` on its standard input to make the
// Kubernetes API unreachable and reachable again.

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, afterEach, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const root = resolve(fileURLToPath(new URL('.', import.meta.url)), '../../..');
const stackBinary = process.env.CONSOLE_STACK ?? join(root, 'target/debug/examples/console_stack');
const screenshots = process.env.CONSOLE_SCREENSHOTS;
const DAY = 86_400_000;
const WIDE = { width: 1200, height: 800 };

let stack;
let context;
let page;
let profile;
let proxy;

async function startStack() {
  const child = spawn(stackBinary, [], { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines = createInterface({ input: child.stdout });
  const first = await new Promise((ok, fail) => {
    const timer = setTimeout(() => fail(new Error('the stack printed nothing within 90 s')), 90_000);
    child.once('exit', (code) => fail(new Error(`the stack exited (${code}) before it was ready`)));
    lines.once('line', (line) => {
      clearTimeout(timer);
      ok(line);
    });
  });
  return { child, ...JSON.parse(first) };
}

// Ctrl-C, as a user stops `kubectl apitoken ui`; the stack must be gone
// within 15 s. A stack that hangs is killed and fails the run, not holds it.
async function stopStack(child) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const stopped = new Promise((ok) => child.once('exit', () => ok(true)));
  child.kill('SIGINT');
  const bound = new Promise((ok) => setTimeout(() => ok(false), 15_000).unref());
  if (!(await Promise.race([stopped, bound]))) {
    child.kill('SIGKILL');
    await stopped;
    throw new Error('the stack did not stop within 15 s of SIGINT');
  }
}

before(async () => {
  stack = await startStack();
  proxy = stack.proxy;
  profile = mkdtempSync(join(tmpdir(), 'console-chromium-'));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
    timezoneId: 'UTC',
    locale: 'en-US',
    viewport: WIDE,
    permissions: ['clipboard-read', 'clipboard-write'],
  });
  page = context.pages()[0] ?? (await context.newPage());
  await page.goto(stack.url);
  await page.getByRole('button', { name: 'Create Token' }).waitFor();
});

after(async () => {
  await context?.close();
  if (stack) await stopStack(stack.child);
  if (profile) rmSync(profile, { recursive: true, force: true });
});

// A failed test leaves no dialog open and no odd window size behind.
afterEach(async () => {
  await page.evaluate(() => document.querySelectorAll('dialog[open]').forEach((d) => d.close()));
  await page.setViewportSize(WIDE);
});

// Polls `probe` until it returns a truthy value, for at most `ms`.
async function eventually(what, probe, ms = 30_000) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    last = await probe();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms (last: ${last})`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function proxyAnswers(token, status) {
  await eventually(`the proxy answering ${status}`, async () => {
    const r = await fetch(`${proxy}/api/agent-base`, { headers: { authorization: `Bearer ${token}` } });
    await r.arrayBuffer();
    return r.status === status;
  });
}

function card(name) {
  return page.locator('li.card').filter({ has: page.locator('h2', { hasText: new RegExp(`^${name}$`) }) });
}

async function badgeIs(name, status) {
  await eventually(`${name} showing ${status}`, async () => (await card(name).locator('.badge').textContent()) === status);
}

async function createToken({ name, product = 'acme', expires, description, usageLimit, sources }) {
  await page.getByRole('button', { name: 'Create Token' }).click();
  const dialog = page.locator('#create-dialog');
  await dialog.getByLabel('Token name').fill(name);
  await dialog.getByLabel('Product').fill(product);
  if (expires) await dialog.getByLabel('Expiration').fill(expires);
  if (description || usageLimit || sources) await dialog.getByText('Advanced').click();
  if (description) await dialog.getByLabel('Description').fill(description);
  if (usageLimit) await dialog.getByLabel('Usage limit').fill(usageLimit);
  if (sources) await dialog.getByLabel('Allowed sources').fill(sources);
  await dialog.getByRole('button', { name: 'Create', exact: true }).click();
  await page.locator('#token-dialog[open]').waitFor();
  return page.locator('#token-value').textContent();
}

async function closeTokenDialog() {
  await page.locator('#token-dialog').getByRole('button', { name: 'Done' }).click();
  await page.locator('#token-dialog[open]').waitFor({ state: 'detached' });
}

// `datetime-local` text for a moment `ms` from now (the page runs in UTC).
function localInput(ms) {
  return new Date(Date.now() + ms).toISOString().slice(0, 19);
}

async function storedAnywhere(token) {
  return page.evaluate((t) => {
    const stores = [localStorage, sessionStorage];
    return stores.some((s) => Object.keys(s).some((k) => s.getItem(k).includes(t)))
      || document.documentElement.outerHTML.includes(t);
  }, token);
}

// The hints of every card, rendered as if the clock were `shift` ms ahead
// (a change of the Product filter renders the cards again), then as now.
async function hintsAt(shift) {
  return page.evaluate((ms) => {
    const realNow = Date.now;
    const rerender = () => document.querySelector('#product').dispatchEvent(new Event('change'));
    Date.now = () => realNow() + ms;
    try {
      rerender();
      return Object.fromEntries([...document.querySelectorAll('li.card')].map((li) => [
        li.querySelector('h2').textContent,
        [...li.querySelectorAll('.hints li')].map((h) => h.textContent),
      ]));
    } finally {
      Date.now = realNow;
      rerender();
    }
  }, shift);
}

// In the page: the colour and background of every visible text and form
// control under `root`, and the focus ring of each control against the
// background around it (the ring is drawn outside the control).
function colourPairs(root) {
  const background = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const colour = getComputedStyle(e).backgroundColor;
      if (!/^rgba\(.*, 0\)$/.test(colour)) return colour;
    }
    return 'rgb(255, 255, 255)';
  };
  const describe = (el) => `${el.tagName.toLowerCase()}${el.id ? `#${el.id}` : ''} "${el.textContent.trim().slice(0, 40)}"`;
  const shown = [...root.querySelectorAll('*')]
    .filter((el) => el.checkVisibility() && !el.closest(':disabled, option'));
  const ownText = (el) => [...el.childNodes].some((n) => n.nodeType === Node.TEXT_NODE && n.textContent.trim());
  const texts = shown
    .filter((el) => ownText(el) || el.matches('input:not([type="checkbox"]), select'))
    .map((el) => ({ what: describe(el), fg: getComputedStyle(el).color, bg: background(el) }));
  const rings = shown.filter((el) => el.matches('button, input, select, summary')).map((el) => {
    el.focus();
    const style = getComputedStyle(el);
    const ring = el.matches(':focus-visible') && style.outlineStyle !== 'none';
    return { what: describe(el), ring, fg: style.outlineColor, bg: background(el.parentElement) };
  });
  document.activeElement.blur();
  return { texts, rings };
}

// WCAG 2 relative luminance of an `rgb(...)` colour (alpha ignored).
function luminance(colour) {
  const [r, g, b] = colour.match(/[\d.]+/g).slice(0, 3).map((v) => {
    const c = Number(v) / 255;
    return c <= 0.04045 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
  });
  return 0.2126 * r + 0.7152 * g + 0.0722 * b;
}

function contrast(a, b) {
  const [light, dark] = [luminance(a), luminance(b)].sort((x, y) => y - x);
  return (light + 0.05) / (dark + 0.05);
}

// Text under `root` keeps 4.5:1, and the focus ring 3:1, against their backgrounds.
async function assertContrast(root) {
  // Tab first: focus then moved by script shows the ring as after Tab.
  await page.keyboard.press('Tab');
  const { texts, rings } = await page.locator(root).evaluate(colourPairs);
  const below = (pairs, least) => pairs
    .map((p) => ({ ...p, ratio: Math.round(contrast(p.fg, p.bg) * 100) / 100 }))
    .filter((p) => p.ratio < least);
  assert.ok(texts.length > 0 && rings.length > 0, `${root}: ${texts.length} texts, ${rings.length} controls`);
  assert.deepEqual(below(texts, 4.5), [], `${root}: text below 4.5:1`);
  assert.deepEqual(rings.filter((r) => !r.ring).map((r) => r.what), [], `${root}: controls without a focus ring`);
  assert.deepEqual(below(rings, 3), [], `${root}: focus ring below 3:1`);
}

// Why the page scrolls sideways, if it does.
async function sideways() {
  return page.evaluate(() => [document.documentElement, ...document.querySelectorAll('dialog[open]')]
    .filter((el) => el.scrollWidth > el.clientWidth)
    .map((el) => `${el.tagName.toLowerCase()}: ${el.scrollWidth} > ${el.clientWidth}`));
}

let token;

test('a created token is shown once, then never again', async () => {
  token = await createToken({ name: 'ci-bot', description: 'CI pipeline' });
  assert.match(token, /^prod_[A-Za-z0-9]+/);
  assert.ok(await page.locator('#token-dialog').getByText('only time it is shown').isVisible());
  await proxyAnswers(token, 200);
  await closeTokenDialog();
  assert.equal(await page.locator('#token-value').textContent(), '');
  assert.equal(await storedAnywhere(token), false, 'the token stayed on the page or in storage');
  await badgeIs('ci-bot', 'Active');
  await page.reload();
  await badgeIs('ci-bot', 'Active');
  assert.equal(await storedAnywhere(token), false, 'the token came back after a reload');
  assert.equal(await card('ci-bot').locator('[data-field="prefix"]').textContent(), `${token.slice(0, 8)}...`);
});

test('Copy puts the prefix on the clipboard', async () => {
  await card('ci-bot').getByRole('button', { name: 'Copy the prefix of ci-bot' }).click();
  await eventually('the clipboard', async () => (await page.evaluate(() => navigator.clipboard.readText())) === token.slice(0, 8));
});

test('Deactivate makes the proxy refuse the token, Activate accepts it again', async () => {
  await card('ci-bot').getByRole('button', { name: 'Deactivate ci-bot' }).click();
  await badgeIs('ci-bot', 'Inactive');
  await proxyAnswers(token, 401);
  await card('ci-bot').getByRole('button', { name: 'Activate ci-bot' }).click();
  await badgeIs('ci-bot', 'Active');
  await proxyAnswers(token, 200);
});

test('Regenerate shows the new token once and the old one stops working', async () => {
  await card('ci-bot').getByRole('button', { name: 'Regenerate ci-bot' }).click();
  const dialog = page.locator('#regenerate-dialog');
  assert.equal(await dialog.locator('[data-fate]').textContent(), 'the current one stops working at once');
  await dialog.getByRole('button', { name: 'Regenerate' }).click();
  await page.locator('#token-dialog[open]').waitFor();
  const fresh = await page.locator('#token-value').textContent();
  assert.notEqual(fresh, token);
  assert.ok(await page.getByText('The previous token no longer works.').isVisible());
  // Done forgets the token at once, not in the `close` event's later task:
  // the check runs in the same task as the click.
  const kept = await page.evaluate((t) => {
    document.querySelector('#token-dialog [data-close]').click();
    return document.documentElement.outerHTML.includes(t);
  }, fresh);
  assert.equal(kept, false, 'the token stayed on the page after Done');
  await page.locator('#token-dialog[open]').waitFor({ state: 'detached' });
  assert.equal(await storedAnywhere(fresh), false);
  await proxyAnswers(fresh, 200);
  await proxyAnswers(token, 401);
  token = fresh;
});

test('Regenerate with a grace period keeps the old token working meanwhile', async () => {
  const old = await createToken({ name: 'rotating' });
  await closeTokenDialog();
  await proxyAnswers(old, 200);
  await card('rotating').getByRole('button', { name: 'Regenerate rotating' }).click();
  const dialog = page.locator('#regenerate-dialog');
  const fate = dialog.locator('[data-fate]');
  await dialog.getByLabel('Grace period for the current token').fill('1h');
  assert.equal(await fate.textContent(), 'the current one keeps working for 1h, until the grace period ends');
  await dialog.getByRole('button', { name: 'Regenerate' }).click();
  await page.locator('#token-dialog[open]').waitFor();
  const fresh = await page.locator('#token-value').textContent();
  assert.match(await page.locator('#token-extra').textContent(), /^The previous token keeps working until /);
  await closeTokenDialog();
  await proxyAnswers(fresh, 200);
  await proxyAnswers(old, 200);
});

test('Revoke needs the name typed, and is final', async () => {
  await card('ci-bot').getByRole('button', { name: 'Revoke ci-bot' }).click();
  const dialog = page.locator('#revoke-dialog');
  const submit = dialog.getByRole('button', { name: 'Revoke' });
  assert.equal(await submit.isDisabled(), true);
  await dialog.getByLabel("Type the token's name to confirm").fill('ci-bo');
  assert.equal(await submit.isDisabled(), true);
  await dialog.getByLabel("Type the token's name to confirm").fill('ci-bot');
  await submit.click();
  await badgeIs('ci-bot', 'Revoked');
  await proxyAnswers(token, 401);
  const actions = await card('ci-bot').locator('.actions button').allTextContents();
  assert.deepEqual(actions, ['Delete']);
});

test('a usage cap and source ranges set under Advanced show on the card', async () => {
  const capped = await createToken({ name: 'capped', usageLimit: '3/30d', sources: '127.0.0.0/8, ::1/128' });
  await closeTokenDialog();
  await proxyAnswers(capped, 200);
  const limit = card('capped').locator('[data-field="limit"]');
  await eventually('the remaining calls', async () => /^3 per 30d: 2 left, renews /.test(await limit.textContent()));
  assert.equal(await card('capped').locator('[data-field="sources"]').textContent(), '127.0.0.0/8, ::1/128');
  assert.equal(await card('ci-bot').locator('[data-field="limitRow"]').isVisible(), false);
  assert.equal(await card('ci-bot').locator('[data-field="sourcesRow"]').isVisible(), false);
});

test('a token turns Expired at its expiration without a reload', async () => {
  await page.evaluate(() => { window.notReloaded = true; });
  await createToken({ name: 'short-lived', expires: localInput(6_000) });
  await closeTokenDialog();
  await badgeIs('short-lived', 'Active');
  await badgeIs('short-lived', 'Expired', 20_000);
  assert.equal(await page.evaluate(() => window.notReloaded), true);
});

test('an expiry in the past is refused with the reason', async () => {
  await page.getByRole('button', { name: 'Create Token' }).click();
  const dialog = page.locator('#create-dialog');
  await dialog.getByLabel('Token name').fill('too-late');
  await dialog.getByLabel('Product').fill('acme');
  await dialog.getByLabel('Expiration').fill(localInput(-3_600_000));
  await dialog.getByRole('button', { name: 'Create', exact: true }).click();
  await eventually('the error', async () => (await dialog.locator('[data-error]').textContent()).includes('not in the future'));
  await page.keyboard.press('Escape');
});

test('dialogs keep the keyboard focus inside and give it back', async () => {
  const create = page.getByRole('button', { name: 'Create Token' });
  await create.focus();
  await page.keyboard.press('Enter');
  await page.locator('#create-dialog[open]').waitFor();
  assert.equal(await page.evaluate(() => document.activeElement.name), 'name');
  for (const key of [...Array(12).fill('Tab'), ...Array(12).fill('Shift+Tab')]) {
    await page.keyboard.press(key);
    assert.equal(await page.evaluate(() => Boolean(document.activeElement.closest('#create-dialog'))), true, `focus left the dialog after ${key}`);
  }
  await page.keyboard.press('Escape');
  await page.locator('#create-dialog[open]').waitFor({ state: 'detached' });
  assert.equal(await page.evaluate(() => document.activeElement.id), 'create');
});

test('hints: a token without expiration, and one unused for 30 days', async () => {
  const noExpiry = 'No expiration: set one when you can, and revoke the token when nothing uses it.';
  const unused = 'Not used for 30 days: revoke it if no application needs it any more.';
  await createToken({ name: 'forever' });
  await closeTokenDialog();
  await createToken({ name: 'quarterly', expires: localInput(90 * DAY) });
  await closeTokenDialog();
  await badgeIs('forever', 'Active');
  await badgeIs('quarterly', 'Active');
  const now = await hintsAt(0);
  assert.deepEqual(now.forever, [noExpiry]);
  assert.deepEqual(now.quarterly, []);
  assert.equal(await card('quarterly').locator('.hints').isVisible(), false);
  const later = await hintsAt(31 * DAY);
  assert.deepEqual(later.forever, [noExpiry, unused]);
  assert.deepEqual(later.quarterly, [unused]);
  assert.deepEqual((await hintsAt(0)).quarterly, []);
});

test('text keeps 4.5:1 and the focus ring 3:1 against their backgrounds', async () => {
  await card('forever').getByRole('button', { name: 'Deactivate forever' }).click();
  await badgeIs('forever', 'Inactive');
  await assertContrast('body');
  await page.getByRole('button', { name: 'Create Token' }).click();
  await page.locator('#create-dialog').getByText('Advanced').click();
  await assertContrast('#create-dialog');
  await page.keyboard.press('Escape');
  await page.locator('#create-dialog[open]').waitFor({ state: 'detached' });
});

test('a narrow window never scrolls sideways, also with the create dialog open', async () => {
  const narrow = { width: 360, height: 740 };
  await page.setViewportSize(narrow);
  assert.ok(await card('capped').isVisible());
  assert.deepEqual(await sideways(), [], 'the cards');
  await page.getByRole('button', { name: 'Create Token' }).click();
  const dialog = page.locator('#create-dialog');
  await dialog.getByText('Advanced').click();
  assert.deepEqual(await sideways(), [], 'the create dialog');
  const box = await dialog.boundingBox();
  assert.ok(box.x >= 0 && box.y >= 0 && box.x + box.width <= narrow.width && box.y + box.height <= narrow.height,
    `the dialog ${JSON.stringify(box)} is not inside ${JSON.stringify(narrow)}`);
  await page.keyboard.press('Escape');
  await page.locator('#create-dialog[open]').waitFor({ state: 'detached' });
});

// The docs' pictures: the cards of one product in every state, then the
// create dialog with Advanced filled in, a token shown once, a narrow window.
test('screenshot for the docs: the cards', { skip: !screenshots }, async () => {
  const shop = { product: 'shop' };
  const deploy = await createToken({ ...shop, name: 'deploy-prod', expires: localInput(90 * DAY), description: 'Deploys from the release pipeline', usageLimit: '10000/30d' });
  await closeTokenDialog();
  await proxyAnswers(deploy, 200);
  await createToken({ ...shop, name: 'partner-feed', expires: localInput(30 * DAY), sources: '203.0.113.0/24, 2001:db8::/32' });
  await closeTokenDialog();
  await createToken({ ...shop, name: 'nightly-export' });
  await closeTokenDialog();
  await card('nightly-export').getByRole('button', { name: 'Deactivate nightly-export' }).click();
  await createToken({ ...shop, name: 'trial', expires: localInput(5_000) });
  await closeTokenDialog();
  await createToken({ ...shop, name: 'legacy-import' });
  await closeTokenDialog();
  await card('legacy-import').getByRole('button', { name: 'Revoke legacy-import' }).click();
  await page.locator('#revoke-dialog').getByLabel("Type the token's name to confirm").fill('legacy-import');
  await page.locator('#revoke-dialog').getByRole('button', { name: 'Revoke' }).click();
  await page.locator('#product').selectOption('shop');
  await badgeIs('nightly-export', 'Inactive');
  await badgeIs('legacy-import', 'Revoked');
  await badgeIs('trial', 'Expired', 20_000);
  await eventually('the calls left', async () => / left, renews /.test(await card('deploy-prod').locator('[data-field="limit"]').textContent()));
  await page.locator('#notice').evaluate((n) => { n.textContent = ''; });
  await page.mouse.move(0, 0);
  await page.screenshot({ path: join(screenshots, 'console-cards.png'), fullPage: true });
});

test('screenshots for the docs: the dialogs and a narrow window', { skip: !screenshots }, async () => {
  await page.setViewportSize({ width: 1200, height: 1180 });
  await page.getByRole('button', { name: 'Create Token' }).click();
  const dialog = page.locator('#create-dialog');
  await dialog.getByLabel('Token name').fill('billing-sync');
  await dialog.getByLabel('Expiration').fill('2027-06-30T18:00:00');
  await dialog.getByText('Advanced').click();
  await dialog.getByLabel('Description').fill('Nightly invoice sync');
  await dialog.getByLabel('integrations:read').check();
  await dialog.getByLabel('Usage limit').fill('1000/30d');
  await dialog.getByLabel('Allowed sources').fill('10.20.0.0/16');
  await page.screenshot({ path: join(screenshots, 'console-create.png') });
  await page.setViewportSize(WIDE);
  await dialog.getByRole('button', { name: 'Create', exact: true }).click();
  await page.locator('#token-dialog[open]').waitFor();
  await page.screenshot({ path: join(screenshots, 'console-token-once.png') });
  await closeTokenDialog();
  await page.locator('#notice').evaluate((n) => { n.textContent = ''; });
  await page.setViewportSize({ width: 400, height: 860 });
  await page.screenshot({ path: join(screenshots, 'console-narrow.png') });
  await page.locator('#product').selectOption('');
});

test('an unreachable cluster shows a banner that retries, gone once the cluster answers', async () => {
  const banner = page.locator('#banner');
  const retry = banner.getByRole('button', { name: 'Retry now' });
  stack.child.stdin.write('down\n');
  try {
    await retry.waitFor({ timeout: 30_000 });
    assert.equal(await banner.getAttribute('data-code'), 'unreachable');
    assert.match(await banner.textContent(), /^cannot reach the Kubernetes API at .*\. Retrying automatically\./);
    await assertContrast('#banner');
    await retry.click();
    await eventually('the page connecting again', async () => (await page.locator('li.card').count()) === 0);
  } finally {
    stack.child.stdin.write('up\n');
  }
  await banner.waitFor({ state: 'hidden', timeout: 60_000 });
  await badgeIs('capped', 'Active');
});
