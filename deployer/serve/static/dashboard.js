// deployer serve: live updates of the dashboard over server-sent events.
// Every value is written with textContent (never innerHTML): what the catalog, labels or
// commit messages say is shown as text, not parsed as HTML.
(function () {
  "use strict";
  var body = document.body;
  var stream = body.getAttribute("data-stream");
  var page = body.getAttribute("data-page");
  if (!stream || !window.EventSource) { return; }

  var HEALTH = ["passing", "warning", "critical", "unknown"];
  var live = document.getElementById("live");
  var activity = document.getElementById("activity");

  function setText(el, text) { if (el) { el.textContent = text == null ? "" : String(text); } }

  function rowsByKey() {
    var map = {};
    var rows = document.querySelectorAll("[data-key]");
    for (var i = 0; i < rows.length; i++) { map[rows[i].getAttribute("data-key")] = rows[i]; }
    return map;
  }

  function cell(row, field) { return row.querySelector('[data-field="' + field + '"]'); }

  function setCode(td, text) {
    if (!td) { return; }
    var code = td.querySelector("code");
    setText(code || td, text);
  }

  function applyRow(row, data) {
    setCode(cell(row, "image"), data.image);
    setCode(cell(row, "running"), data.running);
    setCode(cell(row, "commit"), data.commit);
    setText(cell(row, "state"), data.state);
    var lock = cell(row, "lock");
    setText(lock, data.lock);
    if (lock) { lock.title = data.lock_error || ""; }
    var drift = cell(row, "drift");
    setText(drift, data.drift);
    if (drift) { drift.classList.toggle("drifted", !!data.drift); }
    var health = cell(row, "health");
    if (health) {
      var cls = HEALTH.indexOf(data.health_class) >= 0 ? data.health_class : "unknown";
      setText(health, data.health);
      health.title = data.checks || "";
      for (var i = 0; i < HEALTH.length; i++) { health.classList.remove("health-" + HEALTH[i]); }
      health.classList.add("health-" + cls);
    }
  }

  function applyFleet(fleet) {
    var rows = rowsByKey();
    var seen = 0;
    var changed = false;
    (fleet.rows || []).forEach(function (data) {
      var row = rows[data.key];
      if (row) { applyRow(row, data); seen++; } else if (page === "fleet") { changed = true; }
    });
    if (page === "fleet" && seen !== Object.keys(rows).length) { changed = true; }
    var banner = document.getElementById("fleet-changed");
    if (banner && changed) { banner.hidden = false; }
    var sections = document.querySelectorAll("section[data-dc]");
    var consul = fleet.consul_errors || {};
    for (var i = 0; i < sections.length; i++) {
      var note = sections[i].querySelector('[data-dc-field="consul"]');
      if (!note) { continue; }
      var err = consul[sections[i].getAttribute("data-dc")];
      setText(note.querySelector("span"), err || "");
      note.hidden = !err;
    }
    var sync = document.getElementById("sync-error");
    if (sync) {
      setText(sync.querySelector('[data-field="sync-error"]'), fleet.sync_error || "");
      sync.hidden = !fleet.sync_error;
    }
  }

  var pending = null;
  var inflight = false;
  function refresh() {
    // coalesce bursts of status events into one fetch
    if (pending || inflight) { pending = pending || true; return; }
    inflight = true;
    fetch("/fleet.json", { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.json(); })
      .then(applyFleet)
      .catch(function (e) { setText(live, "update failed: " + e.message); })
      .then(function () {
        inflight = false;
        if (pending) { pending = null; refresh(); }
      });
  }

  var KEYS = ["state", "text", "targets", "target", "node", "image", "commit", "who", "by", "holder", "reason",
              "message", "error", "line"];
  var PLAIN = ["text", "message", "line"];
  function describe(ev) {
    // the same words as the server's feed (page_data.describe)
    var parts = ev.ok == null ? [] : [ev.ok ? "ok" : "failed"];
    KEYS.forEach(function (k) {
      var v = ev[k];
      if (v == null || v === "") { return; }
      if (Array.isArray(v)) { v = v.join(", "); }
      if (typeof v === "object") { v = JSON.stringify(v); }
      parts.push(PLAIN.indexOf(k) >= 0 ? String(v) : k + " " + String(v));
    });
    return parts.join(" \u00b7 ");
  }

  var FEED = ["deploy", "rollback", "lock", "alert", "drift", "sync"];
  function addActivity(ev) {
    if (!activity || FEED.indexOf(ev.type) < 0) { return; }
    var empty = activity.querySelector(".empty");
    if (empty) { empty.remove(); }
    var li = document.createElement("li");
    li.className = "kind-" + ev.type + " new";
    var when = document.createElement("time");
    setText(when, new Date((ev.t || Date.now() / 1000) * 1000).toISOString().replace("T", " ").slice(0, 19) + "Z");
    var kind = document.createElement("span");
    kind.className = "kind";
    setText(kind, ev.type);
    var text = document.createElement("span");
    text.className = "text";
    setText(text, describe(ev));
    li.appendChild(when);
    li.appendChild(document.createTextNode(" "));
    li.appendChild(kind);
    li.appendChild(document.createTextNode(" "));
    li.appendChild(text);
    activity.insertBefore(li, activity.firstChild);
    while (activity.children.length > 100) { activity.removeChild(activity.lastChild); }
  }

  var jobId = body.getAttribute("data-job");
  var jobLines = document.getElementById("job-lines");
  function onJob(ev) {
    // job events carry the job's id in "job" ("id" is the event's own number)
    if (!jobId || ev.job == null || String(ev.job) !== jobId) { return; }
    if (ev.type === "job") {
      if (ev.line != null && jobLines) {
        jobLines.appendChild(document.createTextNode(String(ev.line) + "\n"));
        jobLines.setAttribute("data-streamed", String(Number(jobLines.getAttribute("data-streamed") || 0) + 1));
      }
      if (ev.state) {
        var st = document.getElementById("job-state");
        setText(st, ev.state);
        if (st) { st.className = "job-" + String(ev.state).replace(/[^a-z]/g, ""); }
      }
    } else if (ev.type === "deploy" || ev.type === "rollback" || ev.type === "lock") {
      var res = document.getElementById("job-result");
      setText(res, ev.error ? ev.error : (ev.commit ? "commit " + String(ev.commit).slice(0, 12) : (ev.ok ? "ok" : "failed")));
    }
  }

  function onEvent(msg) {
    var ev;
    try { ev = JSON.parse(msg.data); } catch (e) { return; }
    if (!ev || typeof ev !== "object") { return; }
    if (ev.type === "status" || ev.type === "sync" || ev.type === "drift" || ev.type === "health" ||
        ev.type === "deploy" || ev.type === "rollback" || ev.type === "lock") {
      if (page === "fleet" || page === "service") { refresh(); }
    }
    onJob(ev);
    addActivity(ev);
  }

  var source = new EventSource(stream);
  source.onopen = function () {
    setText(live, "live");
    if (live) { live.className = "live on"; }
    if (page === "fleet" || page === "service") { refresh(); }  // catch up on what changed while away
  };
  source.onerror = function () {
    setText(live, "reconnecting");
    if (live) { live.className = "live off"; }
  };
  source.onmessage = onEvent;
  window.deployerEvents = source;
})();
