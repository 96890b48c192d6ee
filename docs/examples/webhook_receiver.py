"""A minimal receiver of identity-sidecar change events (docs/events.md).

It verifies each delivery with the Standard Webhooks library, parses the body with the
CloudEvents SDK, handles each event once (deliveries are at least once: a repeat has the same
webhook-id) and answers 2xx only after handling it, so an event that failed is sent again.

    pip install standardwebhooks==1.1.0 cloudevents==2.2.0
    PORT=8000 WEBHOOK_SECRET="$(head -n1 /etc/identity-sidecar/lms-webhook.secret)" \
        python webhook_receiver.py

WEBHOOK_SECRET is one line of the webhook's secret_file (whsec_...); during a rotation either
line verifies. PORT=0 picks a free port; HOST (default 127.0.0.1) is the address to listen on. It prints "listening on <url>", then
"handled <event id> <type>" per event handled.
"""

import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cloudevents.core.bindings.http import HTTPMessage, from_http_event
from standardwebhooks import Webhook, WebhookVerificationError

webhook = Webhook(os.environ["WEBHOOK_SECRET"])

# The ids already handled. Keep them in your database, in the same transaction as the
# handling, and for at least events.retention_days; memory is enough for an example.
handled = set()
lock = threading.Lock()


def handle(event):
    """Your code: update your copy of memberships, attachments, contracts..."""
    data = event.get_data()
    print(f"handled {event.get_id()} {event.get_type()}", flush=True)
    return data


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        headers = {name.lower(): value for name, value in self.headers.items()}
        try:
            # Checks the signature and the timestamp (at most 5 minutes off).
            webhook.verify(body, headers)
        except WebhookVerificationError:
            return self.answer(401)
        event = from_http_event(HTTPMessage(headers=headers, body=body))
        # Events of one webhook arrive one at a time, in `sequence` order; the lock only
        # guards against a retry racing a slow first attempt.
        with lock:
            if headers["webhook-id"] not in handled:
                try:
                    handle(event)
                except Exception:
                    # Not acknowledged: the sidecar sends it again, and nothing after it first.
                    return self.answer(500)
                handled.add(headers["webhook-id"])
        self.answer(204)

    def answer(self, status):
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


host = os.environ.get("HOST", "127.0.0.1")
server = ThreadingHTTPServer((host, int(os.environ.get("PORT", "8000"))), Receiver)
print(f"listening on http://{host}:{server.server_address[1]}/", flush=True)
server.serve_forever()
