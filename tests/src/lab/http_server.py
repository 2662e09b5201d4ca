"""Tiny HTTP/1.1 server for a lab real server.

Usage: http_server.py NAME PORT [--tls TLS_PORT CERT KEY]

Answers every GET and HEAD with 200 and the body "NAME\\n" (GET /peer:
"NAME CLIENT_ADDRESS\\n", the address the server sees). Binds 0.0.0.0 so
that a VIP configured on lo is served too. With --tls it also serves HTTPS on
TLS_PORT with the given certificate. Exits cleanly on SIGTERM.
"""

import signal
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "lab-http/1"
    body = b""

    def _send_head(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()

    def do_GET(self):
        if self.path == "/peer":
            # Who the server sees: NAT keeps the client's address, SNAT not.
            body = f"{self.body.decode().strip()} {self.client_address[0]}\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self._send_head()
        self.wfile.write(self.body)

    def do_HEAD(self):
        self._send_head()

    def log_message(self, format, *args):
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024


def main():
    args = sys.argv[1:]
    if len(args) not in (2, 6) or (len(args) == 6 and args[2] != "--tls"):
        sys.exit("usage: http_server.py NAME PORT [--tls TLS_PORT CERT KEY]")
    name, port = args[0], int(args[1])
    Handler.body = (name + "\n").encode()
    if len(args) == 6:
        tls_port, cert, key = int(args[3]), args[4], args[5]
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        tls = Server(("0.0.0.0", tls_port), Handler)
        tls.socket = context.wrap_socket(tls.socket, server_side=True)
        threading.Thread(target=tls.serve_forever, kwargs={"poll_interval": 0.5}, daemon=True).start()
        print(f"{name}: listening on 0.0.0.0:{tls_port} (TLS)", flush=True)

    def stop(_signum, _frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    server = Server(("0.0.0.0", port), Handler)
    print(f"{name}: listening on 0.0.0.0:{port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
