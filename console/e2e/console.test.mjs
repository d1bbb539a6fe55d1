// End-to-end: a real standalone Quiver, the built console in front of it, headless
// Chromium driving the console like a user, and node fetch playing the user's app.
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { startConsoleServer } from './serve.mjs';
import { startQuiver } from './quiver.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const artifacts = path.join(here, 'artifacts');
const distDir = path.join(here, '..', 'dist');
const chromiumPath = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
// Quiver serves the console itself; QUIVER_SERVES_CONSOLE=0 puts e2e/serve.mjs in front instead.
const quiverServesConsole = process.env.QUIVER_SERVES_CONSOLE !== '0';

const email = `ada-${Date.now()}@example.com`;
const password = 'correct horse battery staple';
const projectName = 'shop search';

let quiver;
let server;
let browser;
let page;
let consoleUrl;
let fullKey;
let projectPath;
const pageErrors = [];

function upsert(key) {
  return fetch(`${quiver.dataUrl}/v1/vectors/upsert`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-api-key': key },
    body: JSON.stringify({ vectors: [{ id: 'a', values: [0.1, 0.2, 0.3, 0.4] }] }),
  });
}

async function logIn(pageEmail, pagePassword) {
  await page.getByLabel('Email').fill(pageEmail);
  await page.getByLabel('Password').fill(pagePassword);
  const answer = page.waitForResponse((r) => r.url().endsWith('/v1/auth/login'));
  await page.getByRole('button', { name: 'Log in' }).click();
  return answer;
}

describe('the console against a real Quiver', { timeout: 180_000 }, () => {
  before(async () => {
    mkdirSync(artifacts, { recursive: true });
    quiver = await startQuiver({ logFile: path.join(artifacts, 'quiver.log') });
    if (quiverServesConsole) {
      consoleUrl = quiver.controlUrl;
    } else {
      server = await startConsoleServer({ distDir, upstream: quiver.controlUrl });
      consoleUrl = server.url;
    }
    browser = await chromium.launch({
      executablePath: chromiumPath,
      headless: true,
      args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking'],
    });
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    context.setDefaultTimeout(10_000);
    page = await context.newPage();
    page.on('pageerror', (error) => {
      console.error('page error:', error);
      pageErrors.push(String(error));
    });
  });

  after(async () => {
    await browser?.close();
    await server?.close();
    await quiver?.stop();
  });

  it('signs up and lands on an empty project list', async () => {
    await page.goto(`${consoleUrl}/`);
    await page.waitForURL('**/login');
    await page.getByRole('link', { name: 'Create an account' }).click();
    await page.getByLabel('Email').fill(email);
    await page.getByLabel('Password').fill(password);
    await page.getByRole('button', { name: 'Sign up' }).click();
    await page.getByRole('heading', { name: 'Projects', level: 1 }).waitFor();
    await page.getByText('No projects yet').waitFor();
    assert.ok(await page.evaluate(() => sessionStorage.getItem('quiver.session')), 'session token is in sessionStorage');
    await page.getByRole('button', { name: 'Log out' }).waitFor();
  });

  it('creates a project and lists it', async () => {
    const form = page.getByRole('form', { name: 'Create a project' });
    await form.getByLabel('Name').fill(projectName);
    await form.getByLabel('Dimension').fill('4');
    await form.getByLabel('Metric').selectOption('cosine');
    await form.getByLabel('Plan').selectOption('starter');
    await form.getByRole('button', { name: 'Create project' }).click();
    await page.getByRole('status').filter({ hasText: 'created' }).waitFor();
    const row = page.getByRole('row').filter({ has: page.getByRole('link', { name: projectName }) });
    await row.waitFor();
    assert.match(await row.innerText(), /4\s+cosine\s+Starter/);
    await page.screenshot({ path: path.join(artifacts, 'projects.png'), fullPage: true });
  });

  it('opens the project with its plan, limits and data-plane URL', async () => {
    await page.getByRole('link', { name: projectName }).click();
    await page.getByRole('heading', { name: projectName, level: 1 }).waitFor();
    assert.match(page.url(), /\/projects\/[0-9a-f-]{36}$/);
    assert.equal(await page.getByTestId('plan-name').innerText(), 'Starter');
    const limits = page.getByRole('table', { name: 'Plan limits' });
    assert.match(await limits.getByRole('row', { name: /Queries per minute/ }).innerText(), /30$/);
    assert.ok((await page.getByTestId('api-base-url').innerText()).startsWith('http'));
  });

  it('creates an app_readwrite key and shows the whole key once', async () => {
    const form = page.getByRole('form', { name: 'Create an API key' });
    await form.getByLabel('Label').fill('e2e app');
    await form.getByLabel('Role').selectOption('app_readwrite');
    await form.getByRole('button', { name: 'Create key' }).click();
    const shown = page.getByLabel('New API key');
    await shown.waitFor();
    fullKey = await shown.inputValue();
    assert.match(fullKey, /^qv_live_\S+$/);
    await page.getByText('you will not see it again').waitFor();
    await page.getByRole('button', { name: 'Copy key' }).waitFor();
    await page.screenshot({ path: path.join(artifacts, 'new-key.png'), fullPage: true });
    const row = page.getByRole('table', { name: 'API keys' }).getByRole('row').filter({ hasText: 'e2e app' });
    assert.match(await row.innerText(), /app_readwrite[\s\S]*never[\s\S]*Active/);

    await page.getByRole('button', { name: 'Done' }).click();
    await page.getByLabel('New API key').waitFor({ state: 'detached' });
    assert.ok(!(await page.content()).includes(fullKey), 'the whole key is gone from the page after Done');
    const token = await page.evaluate(() => JSON.parse(sessionStorage.getItem('quiver.session')).token);
    const projectId = page.url().split('/').pop();
    const listed = await fetch(`${consoleUrl}/v1/projects/${projectId}/keys`, {
      headers: { authorization: `Bearer ${token}` },
    });
    assert.equal(listed.status, 200);
    assert.ok(!(await listed.text()).includes(fullKey), 'the key list never carries the whole key');
  });

  it('the key writes to the data plane', async () => {
    const response = await upsert(fullKey);
    assert.equal(response.status, 200, await response.text());
  });

  it('revoking the key in the console locks it out of the data plane within 2 s', async () => {
    await page.getByRole('button', { name: 'Revoke key e2e app' }).click();
    const dialog = page.getByRole('dialog', { name: /Revoke key/ });
    await dialog.getByRole('button', { name: 'Revoke key' }).click();
    const revokedAt = Date.now();
    await dialog.waitFor({ state: 'detached' });
    const row = page.getByRole('table', { name: 'API keys' }).getByRole('row').filter({ hasText: 'e2e app' });
    await row.getByText('Revoked').waitFor();

    let status;
    while (Date.now() - revokedAt < 2_000) {
      status = (await upsert(fullKey)).status;
      if (status === 401) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(status, 401, `still ${status} 2 s after revocation`);
  });

  it('changes the plan to developer and shows the new limits', async () => {
    await page.getByLabel('New plan').selectOption('developer');
    await page.getByRole('button', { name: 'Change plan' }).click();
    await page.getByRole('status').filter({ hasText: 'Plan changed to Developer' }).waitFor();
    assert.equal(await page.getByTestId('plan-name').innerText(), 'Developer');
    const limits = page.getByRole('table', { name: 'Plan limits' });
    assert.match(await limits.getByRole('row', { name: /Queries per minute/ }).innerText(), /300$/);
    assert.match(await limits.getByRole('row', { name: /Documents per minute/ }).innerText(), /1,000$/);
    await page.screenshot({ path: path.join(artifacts, 'project.png'), fullPage: true });
  });

  it('an expired session goes back to the login page, and signing in returns to the page', async () => {
    projectPath = new URL(page.url()).pathname;
    await page.evaluate(() => {
      const session = JSON.parse(sessionStorage.getItem('quiver.session'));
      session.expires_at = new Date(Date.now() - 1000).toISOString();
      sessionStorage.setItem('quiver.session', JSON.stringify(session));
    });
    const form = page.getByRole('form', { name: 'Create an API key' });
    await form.getByLabel('Label').fill('after expiry');
    await form.getByRole('button', { name: 'Create key' }).click();
    await page.waitForURL((url) => url.pathname === '/login' && url.searchParams.get('next') === projectPath);
    const accepted = await logIn(email, password);
    assert.equal(accepted.status(), 200);
    await page.waitForURL((url) => url.pathname === projectPath);
    await page.getByRole('heading', { name: projectName, level: 1 }).waitFor();
  });

  it('a session the server refuses also goes back to the login page', async () => {
    await page.evaluate(() => {
      const session = JSON.parse(sessionStorage.getItem('quiver.session'));
      session.token = `${session.token}x`;
      sessionStorage.setItem('quiver.session', JSON.stringify(session));
    });
    await page.getByLabel('New plan').selectOption('starter');
    await page.getByRole('button', { name: 'Change plan' }).click();
    await page.waitForURL((url) => url.pathname === '/login' && url.searchParams.get('next') === projectPath);
    assert.equal(await page.evaluate(() => sessionStorage.getItem('quiver.session')), null);
    await logIn(email, password);
    await page.waitForURL((url) => url.pathname === projectPath);
    assert.equal(await page.getByTestId('plan-name').innerText(), 'Developer', 'the refused change did not happen');
  });

  it('a link with a malformed escape shows the not-found page', async () => {
    await page.goto(`${consoleUrl}/projects/%zz`);
    await page.getByRole('heading', { name: 'Page not found' }).waitFor();
    await page.getByRole('link', { name: 'Back to your projects' }).click();
    await page.getByRole('link', { name: projectName }).waitFor();
  });

  it('serves the console unframeable, and a missing asset as a 404 nobody caches', { skip: !quiverServesConsole }, async () => {
    const index = await fetch(`${consoleUrl}${projectPath}`);
    assert.equal(index.status, 200);
    assert.match(index.headers.get('content-security-policy') ?? '', /frame-ancestors 'none'/);
    assert.equal(index.headers.get('x-frame-options'), 'DENY');
    const missing = await fetch(`${consoleUrl}/assets/index-00000000.js`);
    assert.equal(missing.status, 404);
    assert.equal(missing.headers.get('cache-control'), 'no-store');
    assert.match(missing.headers.get('content-type') ?? '', /application\/json/);
  });

  it('logs out, refuses a wrong password with the API message, and logs in again', async () => {
    const token = await page.evaluate(() => JSON.parse(sessionStorage.getItem('quiver.session')).token);
    await page.getByRole('button', { name: 'Log out' }).click();
    await page.waitForURL('**/login');
    assert.equal(await page.evaluate(() => sessionStorage.getItem('quiver.session')), null);
    const copied = await fetch(`${consoleUrl}/v1/projects`, { headers: { authorization: `Bearer ${token}` } });
    assert.equal(copied.status, 401, 'a copy of the token stops working at log out');

    const refused = await logIn(email, 'not the password at all');
    assert.equal(refused.status(), 401);
    const { error } = await refused.json();
    const alert = page.getByRole('alert');
    await alert.waitFor();
    assert.equal((await alert.locator('.alert-message').innerText()).trim(), error.message);
    await page.screenshot({ path: path.join(artifacts, 'login-error.png') });

    const accepted = await logIn(email, password);
    assert.equal(accepted.status(), 200);
    await page.getByRole('link', { name: projectName }).waitFor();
  });

  it('deletes the project after confirmation', async () => {
    await page.getByRole('link', { name: projectName }).click();
    await page.getByRole('button', { name: 'Delete project' }).click();
    const dialog = page.getByRole('dialog', { name: /Delete project/ });
    await dialog.getByRole('button', { name: 'Delete project' }).click();
    await page.waitForURL(/\/projects$/);
    await page.getByText('No projects yet').waitFor();
  });

  it('raised no error in the page all along', () => {
    assert.deepEqual(pageErrors, []);
  });
});

process.on('exit', (code) => {
  if (code !== 0 && quiver) {
    const log = readFileSync(path.join(artifacts, 'quiver.log'), 'utf8').trim().split('\n');
    console.error(`--- last lines of quiver's log (${quiver.binary}) ---\n${log.slice(-20).join('\n')}`);
  }
});
