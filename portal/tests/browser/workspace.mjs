// A user's whole way to a desktop, against the portal on the real test cluster: sign in, create a
// workspace through the form, watch "My workspaces" until it shows Running (the row's phase is
// updated in place by server-sent events; the page must not reload), open the desktop view and
// wait until noVNC is connected through the portal's proxy; then screenshot the page and measure
// the canvas. Driven by portal/tests/browser_cluster.rs.
//
// Environment: PORTAL_URL, EMAIL, PASSWORD, TEAM, TEMPLATE, NAME, SCREENSHOT; EXPECT_PANEL=1 waits
// for a desktop panel (XFCE's) to be drawn, not just any picture.
// stdin: the test writes the line `endpoint-registered` once the workspace's desktop endpoint
// (a real Xvnc behind websockify) is annotated on the Workspace; the desktop view is opened only
// after that line AND the Running phase, whichever comes last.
// stdout: progress lines, then one JSON result line:
// { connected, phases, reloaded, width, height, distinctColours, mean, screenshot, problems }
// or { connected: false, error }.
import { launch, signIn, waitForDesktop } from './chromium.mjs';
import { createInterface } from 'node:readline';

const { PORTAL_URL, EMAIL, PASSWORD, TEAM, TEMPLATE, NAME, SCREENSHOT } = process.env;
const RUNNING_WITHIN_MS = 90_000;

const stdin = createInterface({ input: process.stdin });
const registered = new Promise((resolve, reject) => {
  stdin.on('line', (line) => line.trim() === 'endpoint-registered' && resolve());
  stdin.on('close', () => reject(new Error('stdin closed before the desktop endpoint was registered')));
});
registered.catch(() => {}); // handled where it is awaited
const started = Date.now();
const step = (what) => console.log(`step ${((Date.now() - started) / 1000).toFixed(1)}s: ${what}`);

const { page, problems, close } = await launch();
const phases = [];
try {
  await signIn(page, PORTAL_URL, EMAIL, PASSWORD);
  step('signed in');

  await page.goto(`${PORTAL_URL}/workspaces/new`);
  await page.selectOption('select[name=team]', TEAM);
  await page.selectOption('select[name=template]', TEMPLATE);
  await page.fill('input[name=name]', NAME);
  await Promise.all([page.waitForURL(`${PORTAL_URL}/`), page.click('form[action="/workspaces"] button[type=submit]')]);
  step('workspace created');
  // A mark on this document: gone if the page is reloaded.
  await page.evaluate(() => { window.deskpodFirstLoad = true; });

  // Watch the list (its script follows the server-sent events) until the workspace shows
  // Running, noting each phase it shows on the way.
  const row = page.locator(`[data-workspace="${TEAM}/${NAME}"]`);
  const phase = row.locator('[data-field=phase]');
  const deadline = Date.now() + RUNNING_WITHIN_MS;
  for (;;) {
    const shown = (await phase.textContent({ timeout: Math.max(1, deadline - Date.now()) })).trim();
    if (phases.at(-1) !== shown) phases.push(shown);
    if (shown === 'Running') break;
    if (Date.now() > deadline) throw new Error(`not Running within ${RUNNING_WITHIN_MS} ms; phases ${phases}`);
    // Returns as soon as the text changes (or the page reloads), at the latest after the timeout.
    await page
      .waitForFunction(
        ([key, before]) => document.querySelector(`[data-workspace="${key}"] [data-field=phase]`)?.textContent.trim() !== before,
        [`${TEAM}/${NAME}`, shown],
        { timeout: Math.max(1, Math.min(10_000, deadline - Date.now())), polling: 'mutation' },
      )
      .catch(() => {});
  }
  const open = row.locator('a[data-when=ready]');
  await open.waitFor({ state: 'visible', timeout: 10_000 });
  const reloaded = !(await page.evaluate(() => window.deskpodFirstLoad === true));
  step(`running after phases ${phases.join(' -> ')}${reloaded ? ' (the page was reloaded)' : ', updated in place'}`);

  let timer;
  await Promise.race([
    registered,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error('no endpoint-registered line within 60 s')), 60_000);
    }),
  ]).finally(() => clearTimeout(timer));
  step('desktop endpoint registered');

  await Promise.all([page.waitForURL(`${PORTAL_URL}/workspaces/${TEAM}/${NAME}/desktop`), open.click()]);
  const stats = await waitForDesktop(page, SCREENSHOT, { panel: process.env.EXPECT_PANEL === '1' });
  step('noVNC connected, desktop drawn');
  const result = { connected: true, phases, reloaded, ...stats, screenshot: SCREENSHOT, problems };
  console.log(JSON.stringify(result));
} catch (error) {
  console.log(JSON.stringify({ connected: false, phases, error: String(error), problems }));
  process.exitCode = 1;
} finally {
  stdin.close();
  process.stdin.destroy();
  await close();
}
