// Signs in to a running portal, opens a workspace's desktop view and waits until noVNC is
// connected through the portal's proxy; then screenshots the page and measures the canvas.
// Driven by portal/tests/desktop_browser.rs, which starts the portal and a real Xvnc.
// Prints one JSON line: { connected, width, height, distinctColours, mean, screenshot }.
import { launch, signIn, waitForDesktop } from './chromium.mjs';

const { PORTAL_URL, EMAIL, PASSWORD, DESKTOP_PATH, SCREENSHOT } = process.env;
const { page, problems, close } = await launch();
try {
  await signIn(page, PORTAL_URL, EMAIL, PASSWORD);
  await page.goto(`${PORTAL_URL}${DESKTOP_PATH}`);
  const stats = await waitForDesktop(page, SCREENSHOT);
  console.log(JSON.stringify({ connected: true, ...stats, screenshot: SCREENSHOT, problems }));
} catch (error) {
  console.log(JSON.stringify({ connected: false, error: String(error), problems }));
  process.exitCode = 1;
} finally {
  await close();
}
