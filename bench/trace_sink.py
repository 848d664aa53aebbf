"""A trace sink for the benchmark: an OTLP/HTTP endpoint that accepts every export and
discards it, so a traced gateway pays for making and sending its spans and nothing waits.

    python bench/trace_sink.py PORT

On SIGTERM it prints how many exports and bytes it took, then exits.
"""

from __future__ import annotations

import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType


class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    exports = 0
    received = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        size = int(self.headers.get("content-length", "0"))
        self.rfile.read(size)
        with Sink.lock:
            Sink.exports += 1
            Sink.received += size
        # An empty ExportTraceServiceResponse: everything accepted.
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> int:
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink)
    server.daemon_threads = True

    def finish(signum: int, frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever, which runs in this thread: stop from another.
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, finish)
    server.serve_forever()
    print(f"trace sink: {Sink.exports} exports, {Sink.received} bytes", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
