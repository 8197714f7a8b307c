// Live status for the "My workspaces" page, by server-sent events from
// GET /api/v1/workspaces/events (the list's data-events): each `workspace` event carries a
// workspace as GET /api/v1/workspaces shows it, sent first for every workspace and then whenever it
// changes; its phase, stages, message and problem are updated in place. When a workspace appears or
// goes (`removed`), or whether it wants to run changes, the page is reloaded so its buttons match.
// Without JavaScript (or EventSource) the page is still complete; it is just not live. Delete forms
// ask for confirmation first.
(function () {
  "use strict";
  const list = document.getElementById("workspaces");
  if (!list) return;
  const STAGES = ["volume", "scheduling", "image", "desktop", "ready"];
  const RECONNECT_MS = 5000;

  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }

  function rows() {
    const found = new Map();
    for (const row of list.querySelectorAll("[data-workspace]")) found.set(row.dataset.workspace, row);
    return found;
  }

  function show(row, ws) {
    row.querySelector('[data-field="phase"]').textContent = ws.phase;
    row.querySelector('[data-field="phase"]').className = "phase phase-" + ws.phase;
    row.querySelector('[data-field="message"]').textContent = ws.message || "";
    row.querySelector('[data-field="problem"]').textContent = ws.blockedReason || "";
    const at = ws.stage ? STAGES.indexOf(ws.stage) : -1;
    STAGES.forEach((stage, i) => {
      const step = row.querySelector('[data-stage="' + stage + '"]');
      if (!step) return;
      const done = at >= 0 && (i < at || (stage === "ready" && i === at));
      step.className = done ? "stage-done" : i === at ? "stage-current" : "stage-todo";
    });
    const ready = ws.phase === "Running" && ws.running;
    for (const el of row.querySelectorAll('[data-when="ready"]')) el.hidden = !ready;
  }

  function listen() {
    const source = new EventSource(list.dataset.events);
    source.addEventListener("workspace", (event) => {
      const ws = JSON.parse(event.data);
      const row = rows().get(ws.team + "/" + ws.name);
      if (!row || row.dataset.running !== String(ws.running)) { window.location.reload(); return; }
      show(row, ws);
    });
    source.addEventListener("removed", () => window.location.reload());
    source.addEventListener("error", async () => {
      // EventSource retries by itself after a dropped connection; it gives up on an error answer
      // (signed out: 401). Then sign in again, or try anew a little later.
      if (source.readyState !== EventSource.CLOSED) return;
      try {
        const me = await fetch("/api/v1/me", { credentials: "same-origin", headers: { Accept: "application/json" } });
        if (me.status === 401) { window.location.assign("/signin?next=%2F"); return; }
      } catch (error) {
        // The portal restarting or the network blinking.
      }
      window.setTimeout(listen, RECONNECT_MS);
    });
  }

  for (const row of rows().values()) row.dataset.running = row.querySelector('form[action$="/stop"]') ? "true" : "false";
  if (list.dataset.events && "EventSource" in window) listen();
})();
