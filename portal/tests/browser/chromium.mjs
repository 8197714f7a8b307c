// What the browser tests share: Debian's Chromium with a fresh profile, failed loads collected,
// signing in, and waiting until noVNC has drawn the desktop.
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

// Starts Chromium (/usr/bin/chromium, never a downloaded one) with a fresh --user-data-dir.
// Returns the page, the list of problems seen (HTTP >= 400 but the favicon, page errors) and
// close(), which also removes the profile.
export async function launch() {
  const profile = mkdtempSync(join(tmpdir(), 'deskpod-chromium-'));
  const browser = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    viewport: { width: 1024, height: 700 },
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
  const problems = [];
  const page = browser.pages()[0] ?? (await browser.newPage());
  page.on('response', (response) => {
    if (response.status() >= 400 && !response.url().endsWith('/favicon.ico')) {
      problems.push(`${response.status()} ${response.url()}`);
    }
  });
  page.on('pageerror', (error) => problems.push(String(error)));
  const close = async () => {
    await browser.close();
    rmSync(profile, { recursive: true, force: true });
  };
  return { page, problems, close };
}

// Signs in through the sign-in form.
export async function signIn(page, portalUrl, email, password) {
  await page.goto(`${portalUrl}/signin`);
  await page.fill('input[name=email]', email);
  await page.fill('input[name=password]', password);
  await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
}

// On a desktop view: waits until noVNC is connected and has drawn at least two colours, then
// saves a screenshot. With `panel`, also waits until the top of the desktop is a panel: a band of
// rows near the top that are one light colour across most of the width, over a desktop that is
// not (XFCE's top panel over its wallpaper). Returns { width, height, distinctColours, mean,
// panelRows } of the canvas; panelRows counts the top rows that look like a panel.
export async function waitForDesktop(page, screenshot, { panel = false } = {}) {
  await page.waitForSelector('body[data-state=connected]', { timeout: 20_000 });
  await page.waitForSelector('#screen canvas', { timeout: 5_000 });
  const stats = await page.waitForFunction((wantPanel) => {
    const canvas = document.querySelector('#screen canvas');
    if (!canvas || canvas.width === 0) return null;
    const { data } = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height);
    const colours = new Set();
    let sum = 0;
    for (let i = 0; i < data.length; i += 4 * 7) {
      colours.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]);
      sum += data[i] + data[i + 1] + data[i + 2];
    }
    const mean = sum / (3 * data.length / (4 * 7));
    // A row is panel-like when at least 60% of it is light (each channel above 190).
    const lightShare = (y) => {
      let light = 0;
      for (let x = 0; x < canvas.width; x += 4) {
        const i = 4 * (y * canvas.width + x);
        if (data[i] > 190 && data[i + 1] > 190 && data[i + 2] > 190) light += 1;
      }
      return light / Math.ceil(canvas.width / 4);
    };
    let panelRows = 0;
    while (panelRows < 60 && panelRows < canvas.height && lightShare(panelRows) >= 0.6) panelRows += 1;
    const middleIsDesktop = lightShare(Math.floor(canvas.height / 2)) < 0.6;
    if (colours.size < 2 || mean < 1) return null;
    if (wantPanel && !(panelRows >= 16 && middleIsDesktop)) return null;
    return { width: canvas.width, height: canvas.height, distinctColours: colours.size, mean, panelRows };
  }, panel, { timeout: 15_000, polling: 200 });
  await page.screenshot({ path: screenshot });
  return stats.jsonValue();
}
