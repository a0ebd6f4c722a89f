// The home page's sessions table, kept current without reloading the page (included by
// home.html). The hub's REST API says cheaply whether anything changed; when it did, the
// table is fetched again from /hub/home itself, so the rows have one template only.
(function () {
  "use strict";
  const home = document.getElementById("portal-home");
  const api = home.dataset.api;
  const headers = { "X-XSRFToken": window.jhdata.xsrf_token, Accept: "application/json" };
  const live = document.getElementById("portal-sessions-live");
  const notice = document.getElementById("portal-notice");
  const error = document.getElementById("portal-error");
  const BUSY_MS = 1000; // while a session starts or stops
  const IDLE_MS = 10000; // otherwise, and never while the tab is hidden
  let timer = null;
  let polling = false; // one poll at a time, whatever woke it

  function rows() {
    return Array.from(live.querySelectorAll(".portal-session"));
  }

  function human(seconds) {
    if (seconds <= 0) return "stopping soon";
    const m = Math.round(seconds / 60);
    return m >= 120 ? `${Math.round(m / 60)} h` : m >= 1 ? `${m} min` : `${Math.round(seconds)} s`;
  }

  // Time left: the soonest of the idle culler's timeout, the maximum session age and a
  // batch job's time limit.
  function countdown() {
    const table = document.getElementById("portal-sessions");
    const timeout = Number(table.dataset.cullTimeout), maxAge = Number(table.dataset.cullMaxAge);
    const now = Date.now() / 1000;
    for (const row of rows()) {
      if (row.dataset.status !== "running") continue;
      const limits = [];
      if (timeout && row.dataset.lastActivity) {
        limits.push([Date.parse(row.dataset.lastActivity) / 1000 + timeout - now, "if idle"]);
      }
      if (maxAge && row.dataset.started) {
        limits.push([Date.parse(row.dataset.started) / 1000 + maxAge - now, "maximum age"]);
      }
      if (row.dataset.jobEnd) {  // a batch job's time limit, from the cluster
        limits.push([Number(row.dataset.jobEnd) - now, "time limit"]);
      }
      const cell = row.querySelector(".portal-remaining");
      if (!limits.length) {
        cell.textContent = "no limit";
        continue;
      }
      limits.sort((a, b) => a[0] - b[0]);
      cell.textContent = `${human(limits[0][0])} (${limits[0][1]})`;
    }
  }

  function statusOf(server) {
    return server.pending === "stop" ? "stopping" : server.ready ? "running" : "starting";
  }

  function shown() {
    return new Map(rows().map((row) => [row.dataset.serverName, row.dataset.status]));
  }

  function label(name) {
    return name || "default";
  }

  // Say what changed, for screen readers (the status region is polite).
  function announce(before, after) {
    const words = [];
    for (const [name, status] of after) {
      if (before.get(name) !== status) words.push(`${label(name)} is ${status}.`);
    }
    for (const name of before.keys()) {
      if (!after.has(name)) words.push(`${label(name)} has stopped.`);
    }
    if (words.length) notice.textContent = words.join(" ");
  }

  function fail(message) {
    error.textContent = message;
    error.classList.remove("d-none");
  }

  // Replace the table (and the access-revoked notices) with the hub's current rendering.
  async function refresh() {
    const response = await fetch(window.location.pathname, { credentials: "same-origin" });
    if (!response.ok) return;
    const page = new DOMParser().parseFromString(await response.text(), "text/html");
    const fresh = page.getElementById("portal-sessions-live");
    if (!fresh) return; // signed out meanwhile: the next navigation says so
    const hadFocus = live.contains(document.activeElement);
    live.replaceChildren(...fresh.childNodes);
    countdown();
    if (hadFocus) document.getElementById("portal-sessions-heading").focus();
  }

  async function poll() {
    if (polling) return;
    polling = true;
    clearTimeout(timer);
    if (!document.hidden) {
      try {
        const response = await fetch(api, { headers, credentials: "same-origin" });
        if (response.ok) {
          const servers = (await response.json()).servers || {};
          const now = new Map(Object.entries(servers).map(([n, s]) => [n, statusOf(s)]));
          const before = shown();
          const same =
            now.size === before.size && [...now].every(([n, s]) => before.get(n) === s);
          if (!same) {
            await refresh();
            announce(before, shown());
          } else if (await sharingChanged()) {
            await refresh();
            notice.textContent = "Sharing of your sessions has changed.";
          }
          for (const row of rows()) {
            const server = servers[row.dataset.serverName];
            if (server && server.last_activity) row.dataset.lastActivity = server.last_activity;
          }
          countdown();
        }
      } catch (e) {
        // The hub restarting or the network gone: try again at the next tick.
      }
    }
    polling = false;
    const busy = rows().some((row) => row.dataset.status !== "running");
    timer = setTimeout(poll, busy ? BUSY_MS : IDLE_MS);
  }

  async function stop(button) {
    const row = button.closest("tr");
    const name = row.dataset.serverName;
    const url = name ? `${api}/servers/${encodeURIComponent(name)}` : `${api}/server`;
    button.disabled = true;
    row.dataset.status = "stopping";
    row.querySelector(".portal-status").innerHTML =
      '<span class="badge text-bg-secondary">Stopping…</span>';
    row.querySelector(".portal-remaining").textContent = "";
    for (const link of row.querySelectorAll("a")) link.remove();
    notice.textContent = `Stopping ${label(name)}…`;
    try {
      const response = await fetch(url, { method: "DELETE", headers, credentials: "same-origin" });
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        fail(`Could not stop ${label(name)}: ${body.message || response.statusText}`);
      }
    } catch (e) {
      fail(`Could not stop ${label(name)}: the hub did not answer.`);
    }
    poll();
  }

  // Sharing (portal/sharing.py): the hub checks the catalogue and says why it refuses.
  const sharingUrl = `${window.jhdata.base_url}sharing`;

  async function sharing(body) {
    error.classList.add("d-none");
    try {
      const response = await fetch(sharingUrl, {
        method: "POST",
        headers: { ...headers, "Content-Type": "application/json" },
        credentials: "same-origin",
        body: JSON.stringify(body),
      });
      const answer = await response.json().catch(() => ({}));
      if (response.ok) notice.textContent = answer.message || "Done.";
      else fail(answer.message || response.statusText);
    } catch (e) {
      fail("The hub did not answer; nothing was changed.");
    }
    await refresh();
  }

  // Whether the hub's shares and support requests differ from what the table shows.
  async function sharingChanged() {
    const response = await fetch(sharingUrl, { headers, credentials: "same-origin" });
    if (!response.ok) return false;
    const now = await response.json();
    const shown = [], hub = [];
    for (const row of live.querySelectorAll("tr.portal-sharing")) {
      const server = row.dataset.serverName;
      for (const s of row.querySelectorAll(".portal-share")) {
        shown.push(`${server}|${s.dataset.kind}|${s.dataset.name}`);
      }
      for (const r of row.querySelectorAll(".portal-request")) {
        shown.push(`${server}|request|${r.dataset.requester}`);
      }
      const state = now[server] || { shares: [], requests: [] };
      for (const s of state.shares) hub.push(`${server}|${s.kind}|${s.name}`);
      for (const r of state.requests) hub.push(`${server}|request|${r}`);
    }
    return shown.sort().join("\n") !== hub.sort().join("\n");
  }

  live.addEventListener("submit", (event) => {
    const form = event.target.closest(".portal-share-form");
    if (!form) return;
    event.preventDefault();
    const server = form.closest("tr").dataset.serverName;
    sharing({ action: "share", server, name: form.elements.name.value, kind: form.elements.kind.value });
  });

  live.addEventListener("click", (event) => {
    const button = event.target.closest(".portal-stop");
    if (button) stop(button);
    const other = event.target.closest(".portal-revoke, .portal-accept, .portal-decline");
    if (!other) return;
    const server = other.closest("tr").dataset.serverName;
    if (other.matches(".portal-revoke")) {
      const share = other.closest(".portal-share");
      sharing({ action: "revoke", server, name: share.dataset.name, kind: share.dataset.kind });
    } else {
      const name = other.closest(".portal-request").dataset.requester;
      sharing({ action: other.matches(".portal-accept") ? "accept" : "decline", server, name });
    }
  });
  // Back from another tab (a session started there): look at once.
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) poll();
  });
  window.addEventListener("focus", () => poll());
  countdown();
  poll();
})();
