// berth dashboard: the terminal page. xterm.js shows what the instance's
// terminal shows and sends what is typed, over the page's WebSocket
// (data-socket on #terminal): binary messages both ways, text messages for
// sizes (sent) and for started / exited / ended (received).
(function () {
  "use strict";
  var box = document.getElementById("terminal");
  var status = document.getElementById("terminal-status");
  if (!box || !window.Terminal || !window.FitAddon) { return; }
  var say = function (text) { if (status) { status.textContent = text; } };
  var term = new window.Terminal({ cursorBlink: true, convertEol: false, scrollback: 5000 });
  var fit = new window.FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(box);
  fit.fit();
  var url = new URL(box.getAttribute("data-socket"), window.location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.searchParams.set("cols", String(term.cols));
  url.searchParams.set("rows", String(term.rows));
  var ws = new WebSocket(url.toString());
  ws.binaryType = "arraybuffer";
  var encoder = new TextEncoder();
  var over = false;
  window.berthTerminal = { term: term, socket: ws, ended: null };
  ws.onopen = function () { say("Connecting…"); };
  ws.onmessage = function (e) {
    if (typeof e.data !== "string") { term.write(new Uint8Array(e.data)); return; }
    var m = {};
    try { m = JSON.parse(e.data); } catch (_) { return; }
    if (m.type === "started") {
      say("Connected to " + m.instanceId + ". Closing this page hangs up.");
      term.focus();
    } else if (m.type === "exited") {
      over = true;
      window.berthTerminal.ended = "exit code " + m.exitCode;
      say("The program ended: exit code " + m.exitCode + ".");
    } else if (m.type === "ended") {
      over = true;
      window.berthTerminal.ended = m.message;
      say("The session ended: " + m.message);
    } else if (m.type === "refused") {
      say(m.message);
    }
  };
  ws.onclose = function (e) {
    if (!over) {
      over = true;
      window.berthTerminal.ended = "closed";
      say(e.code === 1006 ? "The terminal could not be opened, or the connection was lost." : "The connection closed.");
    }
  };
  // What is typed; a paste comes as one string, sent in pieces the API
  // takes (64 KiB at most each).
  var PIECE = 64 * 1024;
  term.onData(function (d) {
    if (ws.readyState !== WebSocket.OPEN) { return; }
    var bytes = encoder.encode(d);
    for (var at = 0; at < bytes.length; at += PIECE) {
      ws.send(bytes.subarray(at, at + PIECE));
    }
  });
  term.onResize(function (size) {
    if (ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify({ type: "resize", cols: size.cols, rows: size.rows }));
    }
  });
  window.addEventListener("resize", function () { fit.fit(); });
})();
