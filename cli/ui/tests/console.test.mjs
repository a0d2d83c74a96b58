// Browser tests of `kubectl apitoken ui` in the system Chromium: the page
// driven as a person would, against the real operator, proxy and API on
// the Kubernetes API test server (cli/examples/console_stack.rs), with the
// proxy asked whether each token works.
//
// CONSOLE_STACK: the built example binary (default: the debug build).
// CONSOLE_SCREENSHOTS: a folder to write the docs' screenshots into.

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const root = resolve(fileURLToPath(new URL('.', import.meta.url)), '../../..');
const stackBinary = process.env.CONSOLE_STACK ?? join(root, 'target/debug/examples/console_stack');
const screenshots = process.env.CONSOLE_SCREENSHOTS;

let stack;
let context;
let page;
let profile;
let proxy;

async function startStack() {
  const child = spawn(stackBinary, [], { stdio: ['ignore', 'pipe', 'inherit'] });
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
    viewport: { width: 1200, height: 800 },
    permissions: ['clipboard-read', 'clipboard-write'],
  });
  page = context.pages()[0] ?? (await context.newPage());
  await page.goto(stack.url);
  await page.getByRole('button', { name: 'Create Token' }).waitFor();
});

after(async () => {
  await context?.close();
  if (stack) {
    const stopped = new Promise((ok) => stack.child.once('exit', ok));
    stack.child.kill('SIGINT');
    await stopped;
  }
  if (profile) rmSync(profile, { recursive: true, force: true });
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

test('screenshots for the docs', { skip: !screenshots }, async () => {
  await createToken({ name: 'deploy-prod', product: 'acme', expires: localInput(90 * 86_400_000), description: 'Deploys from the release pipeline' });
  await closeTokenDialog();
  await createToken({ name: 'nightly-export', product: 'acme' });
  await closeTokenDialog();
  await card('nightly-export').getByRole('button', { name: 'Deactivate nightly-export' }).click();
  await badgeIs('nightly-export', 'Inactive');
  await page.locator('#notice').evaluate((n) => { n.textContent = ''; });
  await page.screenshot({ path: join(screenshots, 'console-cards.png'), fullPage: true });

  await page.getByRole('button', { name: 'Create Token' }).click();
  const dialog = page.locator('#create-dialog');
  await dialog.getByLabel('Token name').fill('billing-sync');
  await dialog.getByLabel('Product').fill('acme');
  await dialog.getByLabel('Expiration').fill('2027-06-30T18:00:00');
  await dialog.getByText('Advanced').click();
  await dialog.getByLabel('Description').fill('Nightly invoice sync');
  await dialog.getByLabel('integrations:read').check();
  await page.screenshot({ path: join(screenshots, 'console-create.png') });
  await dialog.getByRole('button', { name: 'Create', exact: true }).click();
  await page.locator('#token-dialog[open]').waitFor();
  await page.screenshot({ path: join(screenshots, 'console-token-once.png') });
  await closeTokenDialog();
  await page.locator('#notice').evaluate((n) => { n.textContent = ''; });
  await page.setViewportSize({ width: 400, height: 860 });
  await page.screenshot({ path: join(screenshots, 'console-narrow.png') });
});
