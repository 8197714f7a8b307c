// Live status for the "My workspaces" page: polls GET /api/v1/workspaces every 2 s (with the
// session cookie) and updates each workspace's phase, stages, message and problem in place. When a
// workspace appears or goes, or whether it wants to run changes, the page is reloaded so its
// buttons match. Delete forms ask for confirmation first.
(function () {
  "use strict";
  const list = document.getElementById("workspaces");
  if (!list) return;
  const STAGES = ["volume", "scheduling", "image", "desktop", "ready"];

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

  async function poll() {
    try {
      const response = await fetch(list.dataset.poll, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (response.status === 401) { window.location.assign("/signin?next=%2F"); return; }
      if (!response.ok) return;
      const body = await response.json();
      const current = rows();
      const seen = new Set();
      for (const ws of body.workspaces) {
        const key = ws.team + "/" + ws.name;
        seen.add(key);
        const row = current.get(key);
        if (!row || row.dataset.running !== String(ws.running)) { window.location.reload(); return; }
        show(row, ws);
      }
      if (seen.size !== current.size) window.location.reload();
    } catch (error) {
      // The portal restarting or the network blinking: try again at the next tick.
    }
  }

  for (const row of rows().values()) row.dataset.running = row.querySelector('form[action$="/stop"]') ? "true" : "false";
  window.setInterval(poll, 2000);
})();
