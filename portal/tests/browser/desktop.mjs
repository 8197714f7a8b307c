// Signs in to a running portal, opens a workspace's desktop view and waits until noVNC is
// connected through the portal's proxy; then screenshots the page and measures the canvas.
// Driven by portal/tests/desktop_browser.rs, which starts the portal and a real Xvnc.
// Prints one JSON line: { connected, width, height, distinctColours, mean, screenshot }.
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const { PORTAL_URL, EMAIL, PASSWORD, DESKTOP_PATH, SCREENSHOT } = process.env;
const profile = mkdtempSync(join(tmpdir(), 'deskpod-chromium-'));
// A fresh profile (--user-data-dir) per run, passed the way Playwright wants it.
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
try {
  const page = browser.pages()[0] ?? (await browser.newPage());
  // Failed loads by URL (the browser's own favicon request is not the page's).
  page.on('response', (response) => {
    if (response.status() >= 400 && !response.url().endsWith('/favicon.ico')) {
      problems.push(`${response.status()} ${response.url()}`);
    }
  });
  page.on('pageerror', (error) => problems.push(String(error)));

  await page.goto(`${PORTAL_URL}/signin`);
  await page.fill('input[name=email]', EMAIL);
  await page.fill('input[name=password]', PASSWORD);
  await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);

  await page.goto(`${PORTAL_URL}${DESKTOP_PATH}`);
  await page.waitForSelector('body[data-state=connected]', { timeout: 20000 });
  await page.waitForSelector('#screen canvas', { timeout: 5000 });
  // Wait for the first framebuffer update to be drawn.
  const stats = await page.waitForFunction(() => {
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
    if (colours.size < 2 || mean < 1) return null;
    return { width: canvas.width, height: canvas.height, distinctColours: colours.size, mean };
  }, null, { timeout: 15000, polling: 200 });
  await page.screenshot({ path: SCREENSHOT });
  console.log(JSON.stringify({ connected: true, ...(await stats.jsonValue()), screenshot: SCREENSHOT, problems }));
} catch (error) {
  console.log(JSON.stringify({ connected: false, error: String(error), problems }));
  process.exitCode = 1;
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
