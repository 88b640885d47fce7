#!/usr/bin/env python3
"""HTTP sink for the notifier tests: records every POST (path, headers, body)
as one JSON line in OUT *when it arrives*, then answers. Paths:
/slow/... answers after DELAY seconds, /hang/... never answers in time,
/fail/... answers 500, /flaky/... answers 503 to its first two posts,
anything else 200 at once."""
import json, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, out, delay = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
seen = {}

class H(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        rec = {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
               "body": body.decode("utf-8", "replace"), "at": time.time()}
        with open(out, "a") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
        if self.path.startswith("/slow"):
            time.sleep(delay)
        if self.path.startswith("/hang"):
            time.sleep(600)
        seen[self.path] = seen.get(self.path, 0) + 1
        code = 200
        if self.path.startswith("/fail"):
            code = 500
        elif self.path.startswith("/flaky") and seen[self.path] <= 2:
            code = 503
        self.send_response(code)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *a):
        pass

class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client killed mid-request (the kill -9 test) is expected

Server(("127.0.0.1", port), H).serve_forever()
