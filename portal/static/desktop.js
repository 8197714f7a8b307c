// The desktop view: noVNC's RFB client against the portal's websocket proxy, with clipboard,
// scaling, full screen and reconnection with exponential backoff. The portal authenticates to
// the desktop itself, so the browser never holds a VNC password.
import RFB from '/novnc/core/rfb.js';

const body = document.body;
const screen = document.getElementById('screen');
const status = document.getElementById('status');
const reconnectButton = document.getElementById('reconnect');
const scaling = document.getElementById('scaling');
const clipboardPanel = document.getElementById('clipboard');
const clipboardToggle = document.getElementById('clipboard-toggle');
const clipboardText = document.getElementById('clipboard-text');
const websocketUrl = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}${body.dataset.websocketPath}`;

const FIRST_RETRY_MS = 1000;
const LAST_RETRY_MS = 30000;

let rfb = null;
let failures = 0;
let retryTimer = null;

function setState(state, text) {
  body.dataset.state = state;
  status.textContent = text;
}

function applyScaling() {
  if (!rfb) return;
  rfb.scaleViewport = scaling.value === 'scale';
  rfb.resizeSession = scaling.value === 'remote';
  rfb.clipViewport = scaling.value === 'none';
}

function connect() {
  clearTimeout(retryTimer);
  retryTimer = null;
  reconnectButton.hidden = true;
  setState('connecting', 'Connecting…');
  rfb = new RFB(screen, websocketUrl);
  applyScaling();
  rfb.addEventListener('connect', () => {
    failures = 0;
    setState('connected', 'Connected');
    rfb.focus();
  });
  rfb.addEventListener('disconnect', () => {
    rfb = null;
    scheduleReconnect();
  });
  rfb.addEventListener('clipboard', (event) => {
    clipboardText.value = event.detail.text;
    if (navigator.clipboard && document.hasFocus()) {
      navigator.clipboard.writeText(event.detail.text).catch(() => {});
    }
  });
  rfb.addEventListener('desktopname', (event) => {
    document.title = `${event.detail.name} · Deskpod`;
  });
}

function scheduleReconnect() {
  const delay = Math.min(LAST_RETRY_MS, FIRST_RETRY_MS * 2 ** failures);
  failures += 1;
  setState('disconnected', `Disconnected; reconnecting in ${Math.round(delay / 1000)} s`);
  reconnectButton.hidden = false;
  retryTimer = setTimeout(connect, delay);
}

reconnectButton.addEventListener('click', () => {
  failures = 0;
  connect();
});

scaling.value = localStorage.getItem('deskpod.scaling') || 'remote';
scaling.addEventListener('change', () => {
  localStorage.setItem('deskpod.scaling', scaling.value);
  applyScaling();
});

clipboardToggle.addEventListener('click', () => {
  clipboardPanel.hidden = !clipboardPanel.hidden;
  clipboardToggle.setAttribute('aria-expanded', String(!clipboardPanel.hidden));
});
document.getElementById('clipboard-send').addEventListener('click', () => {
  if (rfb) {
    rfb.clipboardPasteFrom(clipboardText.value);
    rfb.focus();
  }
});

document.getElementById('fullscreen').addEventListener('click', () => {
  if (document.fullscreenElement) {
    document.exitFullscreen();
  } else {
    document.documentElement.requestFullscreen().catch(() => {});
  }
});

connect();
