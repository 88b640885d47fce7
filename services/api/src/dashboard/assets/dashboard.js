// berth dashboard: progressive enhancement only; every page works without it.
// - live updates: an EventSource on the page's stream (data-live-src); each
//   commit re-reads the page and swaps its [data-live] regions in place;
//   the browser resumes a dropped stream with Last-Event-ID by itself.
// - live log lines: on a followed logs page (data-live-logs), each new
//   line's row arrives over SSE and goes on top; the oldest beyond
//   data-max go; a stream that breaks or falls behind re-reads the page.
// - copy buttons (data-copy="element id"), confirmations (data-confirm),
//   typed-name confirmation (data-confirm-name on an input).
(function () {
  "use strict";
  var doc = document;
  window.berthLoadedAt = Date.now();

  function each(sel, fn) { Array.prototype.forEach.call(doc.querySelectorAll(sel), fn); }

  function wire(root) {
    Array.prototype.forEach.call(root.querySelectorAll("[data-copy]"), function (b) {
      b.hidden = false;
      b.addEventListener("click", function () {
        var el = doc.getElementById(b.getAttribute("data-copy"));
        if (!el || !navigator.clipboard) { return; }
        navigator.clipboard.writeText(el.textContent.trim()).then(function () {
          var was = b.textContent; b.textContent = "Copied";
          setTimeout(function () { b.textContent = was; }, 1500);
        });
      });
    });
    Array.prototype.forEach.call(root.querySelectorAll("[data-confirm]"), function (el) {
      var form = el.tagName === "FORM" ? el : el.form;
      if (!form || form.berthConfirm) { return; }
      form.berthConfirm = true;
      form.addEventListener("submit", function (e) {
        if (!window.confirm(el.getAttribute("data-confirm"))) { e.preventDefault(); }
      });
    });
    Array.prototype.forEach.call(root.querySelectorAll("input[data-confirm-name]"), function (input) {
      var button = input.form && input.form.querySelector("button[type=submit]");
      if (!button) { return; }
      var check = function () { button.disabled = input.value !== input.getAttribute("data-confirm-name"); };
      input.addEventListener("input", check);
      check();
    });
  }

  // Live updates.
  var live = doc.querySelector("[data-live-src]");
  var timer = null, busy = false, again = false, stale = false;

  function busyHere(region) {
    var a = doc.activeElement;
    return a && region.contains(a) && /^(INPUT|SELECT|TEXTAREA)$/.test(a.tagName);
  }

  function refresh() {
    timer = null;
    if (busy) { again = true; return; }
    busy = true;
    fetch(location.href, { credentials: "same-origin", headers: { "X-Berth-Live": "1" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html === null) { return; }
        var fresh = new DOMParser().parseFromString(html, "text/html");
        each("[data-live]", function (region) {
          var next = fresh.getElementById(region.id);
          if (!next) { return; }
          if (busyHere(region)) { stale = true; return; }
          region.replaceWith(next);
          wire(next);
        });
      })
      .catch(function () {})
      .then(function () {
        busy = false;
        if (again) { again = false; schedule(); }
      });
  }

  function schedule() {
    if (!timer) { timer = setTimeout(refresh, 120); }
  }

  function showPull(ev) {
    var p = ev.pull;
    if (!p || !ev.deployId) { return; }
    var bar = doc.getElementById("pull-" + ev.deployId + "-" + p.node);
    if (bar && p.bytesTotal > 0) { bar.max = p.bytesTotal; bar.value = p.bytesDone; }
  }

  if (live && window.EventSource) {
    var src = new EventSource(live.getAttribute("data-live-src"));
    var state = doc.getElementById("live-state");
    src.addEventListener("open", function () { if (state) { state.textContent = "· updating as it happens"; } });
    src.addEventListener("error", function () { if (state) { state.textContent = "reconnecting…"; } });
    src.addEventListener("commit", function (e) {
      var data;
      try { data = JSON.parse(e.data); } catch (_) { return; }
      (data.events || []).forEach(showPull);
      window.berthLastEvent = e.lastEventId;
      schedule();
    });
    src.addEventListener("reset", schedule);
    src.addEventListener("gone", function () { src.close(); schedule(); });
    doc.addEventListener("focusout", function () { if (stale) { stale = false; schedule(); } });
  }

  // Live log lines.
  var logs = doc.querySelector("[data-live-logs]");
  if (logs && window.EventSource) {
    var rows = logs.querySelector("tbody");
    var most = parseInt(logs.getAttribute("data-max"), 10) || 200;
    var lines = new EventSource(logs.getAttribute("data-live-logs"));
    var said = doc.getElementById("logs-state");
    var say = function (t) { if (said) { said.textContent = t; } };
    lines.addEventListener("open", function () { say("· new lines appear as they are kept"); });
    var reread = function () {
      lines.close();
      setTimeout(function () { location.reload(); }, 2000);
    };
    lines.addEventListener("line", function (e) {
      var html;
      try { html = JSON.parse(e.data); } catch (_) { return; }
      // The row is the server's, every text in it escaped there.
      rows.insertAdjacentHTML("afterbegin", html);
      var none = doc.getElementById("no-lines");
      if (none) { none.remove(); }
      while (rows.rows.length > most) { rows.deleteRow(-1); }
    });
    lines.addEventListener("reset", reread);
    lines.addEventListener("error", function () {
      // Refused (too many open, signed out): the page stays as it is.
      if (lines.readyState === EventSource.CLOSED) { say("· not following: reload to try again"); return; }
      say("· reconnecting…");
      reread();
    });
    lines.addEventListener("gone", function () { lines.close(); });
  }

  wire(doc);
})();
