"""A real HTTP receiver on loopback for the webhook tests."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class Receiver:
    """A real HTTP server on loopback that answers with the statuses it is given, in turn."""

    def __init__(self, statuses: list[int], delay_s: float = 0.0):
        self.statuses, self.delay_s, self.requests = list(statuses), delay_s, []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body, self.path))
                time.sleep(receiver.delay_s)
                status = receiver.statuses.pop(0) if len(receiver.statuses) > 1 else receiver.statuses[0]
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver_factory():
    made = []

    def make(statuses, delay_s=0.0):
        made.append(Receiver(statuses, delay_s))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()
