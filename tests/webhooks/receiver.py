"""A webhook receiver for the integration tests (tests/api/helpers/webhooks.rs).

Every POST is checked as a real consumer would: the Standard Webhooks signature with the
`standardwebhooks` library, the body parsed by the CloudEvents SDK. Accepted events are kept in
arrival order and served on `GET /received`; refused ones are counted on `GET /refused`.
`POST /_control/fail/<status>` makes every later delivery answer <status> (an outage that
still accepts connections); `POST /_control/ok` ends it. Stopping the process is the other
kind of outage (connection refused): the test restarts it on the same port.

Usage: receiver.py PORT SECRET   (PORT 0 picks a free port; the first line printed is
"listening <port>").
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cloudevents.core.bindings.http import HTTPMessage, from_http_event
from standardwebhooks import Webhook

PORT, SECRET = int(sys.argv[1]), sys.argv[2]
WEBHOOK = Webhook(SECRET)
LOCK = threading.Lock()
RECEIVED = []
REFUSED = []
FAIL = {"status": None}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        with LOCK:
            body = {"/received": RECEIVED, "/refused": REFUSED}.get(self.path)
            data = json.dumps(body).encode() if body is not None else None
        if data is None:
            self.answer(404, b"")
        else:
            self.answer(200, data)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        if self.path.startswith("/_control/"):
            with LOCK:
                if self.path == "/_control/ok":
                    FAIL["status"] = None
                else:
                    FAIL["status"] = int(self.path.rsplit("/", 1)[1])
            return self.answer(204, b"")
        with LOCK:
            failing = FAIL["status"]
        if failing is not None:
            return self.answer(failing, b"failing on purpose")
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            WEBHOOK.verify(body, headers)
            event = from_http_event(HTTPMessage(headers=headers, body=body))
        except Exception as error:  # a refusal is what the test asserts on, whatever its kind
            with LOCK:
                REFUSED.append({"webhook_id": headers.get("webhook-id"), "error": repr(error)})
            return self.answer(400, repr(error).encode())
        record = {
            "webhook_id": headers["webhook-id"],
            "id": event.get_id(),
            "sequence": event.get_extension("sequence"),
            "type": event.get_type(),
            "subject": event.get_subject(),
            "source": event.get_source(),
            "content_type": headers.get("content-type"),
            "data": event.get_data(),
        }
        with LOCK:
            RECEIVED.append(record)
        self.answer(204, b"")

    def answer(self, status, body):
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
print(f"listening {server.server_address[1]}", flush=True)
server.serve_forever()
