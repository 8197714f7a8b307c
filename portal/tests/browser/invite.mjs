// The invite flow in Chromium, against the portal on the real test cluster: a team lead signs in
// and invites a contractor (e-mail, access expiry, template) through the JSON API with their
// session; the contractor, in a browser that has never seen the portal, opens the one-time link,
// chooses a password and lands on their desktop page, which waits for the desktop to start and
// then shows it drawn by noVNC. A third browser then opens the same link and is turned away.
// Driven by portal/tests/browser_invite.rs.
//
// Environment: PORTAL_URL, LEAD_EMAIL, LEAD_PASSWORD, TEAM, TEMPLATE, INVITEE_EMAIL,
// INVITEE_PASSWORD, ACCESS_EXPIRES_AT (RFC 3339), SCREENSHOT.
// stdin: the test writes `endpoint-registered` once the workspace's desktop (a real Xvnc behind
// websockify) is annotated on the Workspace; until then the portal's answer to the password form
// (the redirect to the desktop page) is held back from the page (the clock keeps running), so the
// desktop page is never shown before its desktop exists, as a real desktop container's would not
// answer before it had started.
// stdout: progress lines (`step ...`), then one JSON result line:
// { connected, invite, landedOn, pages, heldMs, linkToDesktopMs, reuse, width, height, distinctColours,
//   mean, screenshot, problems } or { connected: false, error, problems }.
import { launch, signIn, waitForDesktop } from './chromium.mjs';
import { createInterface } from 'node:readline';

const {
  PORTAL_URL, LEAD_EMAIL, LEAD_PASSWORD, TEAM, TEMPLATE, INVITEE_EMAIL, INVITEE_PASSWORD, ACCESS_EXPIRES_AT,
  SCREENSHOT,
} = process.env;
// The promise to the contractor: the desktop drawn this soon after opening the link.
const DESKTOP_WITHIN_MS = 60_000;

const stdin = createInterface({ input: process.stdin });
const registered = new Promise((resolve, reject) => {
  stdin.on('line', (line) => line.trim() === 'endpoint-registered' && resolve());
  stdin.on('close', () => reject(new Error('stdin closed before the desktop endpoint was registered')));
});
registered.catch(() => {}); // handled where it is awaited
const started = Date.now();
const step = (what) => console.log(`step ${((Date.now() - started) / 1000).toFixed(1)}s: ${what}`);

const browsers = [];
const problems = [];
try {
  // --- The lead invites, with their session (cookie + X-CSRF-Token from the page). ---
  const lead = await launch();
  browsers.push(lead);
  await signIn(lead.page, PORTAL_URL, LEAD_EMAIL, LEAD_PASSWORD);
  const invite = await lead.page.evaluate(async (body) => {
    const csrf = document.querySelector('meta[name=csrf-token]').content;
    const response = await fetch('/api/v1/invites', {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf },
      body: JSON.stringify(body),
    });
    return { status: response.status, body: await response.json() };
  }, { email: INVITEE_EMAIL, team: TEAM, role: 'contractor', template: TEMPLATE, access_expires_at: ACCESS_EXPIRES_AT });
  problems.push(...lead.problems);
  if (invite.status !== 201) throw new Error(`the invite was refused: ${JSON.stringify(invite)}`);
  const link = invite.body.url;
  step('the lead created the invite');

  // --- The contractor opens the link in a fresh browser. ---
  const contractor = await launch();
  browsers.push(contractor);
  const { page } = contractor;
  const pages = [];
  page.on('domcontentloaded', async () => {
    pages.push(await page.title().catch(() => '?'));
  });
  // The portal's answer to the password form (a redirect to the desktop page) is handed to the
  // page only once the desktop exists (see the header); the invite has created the workspace by then.
  let heldMs = 0;
  await page.route('**/invite/*', async (route) => {
    if (route.request().method() !== 'POST') return route.continue();
    const response = await route.fetch({ maxRedirects: 0 });
    const answered = Date.now();
    await registered;
    heldMs = Date.now() - answered;
    return route.fulfill({ response });
  });

  const opened = Date.now();
  await page.goto(link);
  const heading = (await page.textContent('h1')).trim();
  const facts = (await page.textContent('ul.facts')).replace(/\s+/g, ' ').trim();
  step(`opened the link: "${heading}"; ${facts}`);
  await page.fill('input[name=display_name]', 'Dave Contractor');
  await page.fill('input[name=password]', INVITEE_PASSWORD);
  await page.fill('input[name=password_confirm]', INVITEE_PASSWORD);
  await Promise.all([
    page.waitForURL(`${PORTAL_URL}/workspaces/${TEAM}/*/desktop`, { timeout: DESKTOP_WITHIN_MS }),
    page.click('form[action^="/invite/"] button[type=submit]'),
  ]);
  const landedOn = new URL(page.url()).pathname;
  step(`set a password and landed on ${landedOn} (the answer held ${heldMs} ms for the desktop to exist)`);
  // The desktop page waits for the desktop (reloading itself) and then shows it.
  await page.waitForSelector('body[data-state]', { timeout: Math.max(1, DESKTOP_WITHIN_MS - (Date.now() - opened)) });
  step('the desktop view is open');
  const stats = await waitForDesktop(page, SCREENSHOT);
  const linkToDesktopMs = Date.now() - opened;
  step(`desktop drawn ${(linkToDesktopMs / 1000).toFixed(1)}s after opening the link; pages: ${pages.join(' | ')}`);
  problems.push(...contractor.problems);

  // --- The same link, opened again by anyone, does not work. ---
  const other = await launch();
  browsers.push(other);
  const again = await other.page.goto(link);
  const reuse = {
    status: again.status(),
    heading: (await other.page.textContent('h1')).trim(),
    message: (await other.page.textContent('[role=alert]')).trim(),
    passwordFields: await other.page.locator('input[type=password]').count(),
  };
  step(`the link again: ${reuse.status} "${reuse.heading}": ${reuse.message}`);

  const result = {
    connected: true,
    invite: { status: invite.status, role: invite.body.role, accessExpiresAt: invite.body.access_expires_at, heading, facts },
    landedOn, pages, heldMs, linkToDesktopMs, reuse, ...stats, screenshot: SCREENSHOT, problems,
  };
  console.log(JSON.stringify(result));
} catch (error) {
  console.log(JSON.stringify({ connected: false, error: String(error), problems }));
  process.exitCode = 1;
} finally {
  stdin.close();
  process.stdin.destroy();
  for (const browser of browsers) await browser.close();
}
