"""Answers every GET with the pod's name and the path, and logs each request to stdout.

`/ready` answers 503 until the file named by READY_FILE exists (when that variable is set), so
that a test can see the readiness probe hold a pod back and then let it through.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/ready":
            ready_file = os.environ.get("READY_FILE")
            if ready_file and not os.path.exists(ready_file):
                self._reply(503, {"ready": False})
                return
            self._reply(200, {"ready": True})
            return
        if self.path.startswith("/resolve/"):
            name = self.path.removeprefix("/resolve/")
            try:
                address = socket.gethostbyname(name)
            except OSError as exc:
                self._reply(502, {"name": name, "error": str(exc)})
                return
            self._reply(200, {"name": name, "address": address})
            return
        self._reply(200, {"pod": socket.gethostname(), "path": self.path})

    def _reply(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        print(f"echo {self.command} {self.path} {args[1] if len(args) > 1 else ''}", flush=True)


def main() -> None:
    # PID 1 in a container ignores SIGTERM unless it handles it: stop at once when deleted.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    port = int(os.environ.get("PORT", "8080"))
    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    print(f"echo listening on {port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
