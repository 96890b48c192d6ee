// A minimal receiver of identity-sidecar change events (docs/events.md) for Node.js 20, with
// nothing but the standard library: the Standard Webhooks signature checked by hand
// (HMAC-SHA256 of "id.timestamp.body", compared in constant time, timestamp at most 5 minutes
// off), the CloudEvents body read as JSON, each event handled once (deliveries are at least
// once: a repeat has the same webhook-id), 2xx answered only after handling.
//
//   PORT=8000 WEBHOOK_SECRET="$(head -n1 /etc/identity-sidecar/lms-webhook.secret)" \
//       node webhook_receiver.mjs
//
// WEBHOOK_SECRET is one line of the webhook's secret_file (whsec_...); during a rotation either
// line verifies. PORT=0 picks a free port; HOST (default 127.0.0.1) is the address to listen
// on. It prints "listening on <url>", then "handled <event id> <type>" per event handled.

import { createHmac, timingSafeEqual } from 'node:crypto';
import { createServer } from 'node:http';

const TOLERANCE_SECS = 5 * 60;
const key = Buffer.from(process.env.WEBHOOK_SECRET.replace(/^whsec_/, ''), 'base64');

// The ids already handled. Keep them in your database, in the same transaction as the
// handling, and for at least events.retention_days; memory is enough for an example.
const handled = new Set();

function verify(headers, body) {
  const id = headers['webhook-id'];
  const timestamp = headers['webhook-timestamp'];
  const signatures = headers['webhook-signature'];
  if (!id || !timestamp || !signatures) return false;
  const now = Math.floor(Date.now() / 1000);
  if (!/^\d+$/.test(timestamp) || Math.abs(now - Number(timestamp)) > TOLERANCE_SECS) return false;
  const expected = createHmac('sha256', key)
    .update(`${id}.${timestamp}.`)
    .update(body)
    .digest();
  // One "v1,<base64>" per secret the sender holds, space-separated (rotation).
  return signatures.split(' ').some((versioned) => {
    const [version, signature] = versioned.split(',');
    if (version !== 'v1' || !signature) return false;
    const given = Buffer.from(signature, 'base64');
    return given.length === expected.length && timingSafeEqual(given, expected);
  });
}

// Your code: update your copy of memberships, attachments, contracts...
async function handle(event) {
  console.log(`handled ${event.id} ${event.type}`);
}

const server = createServer((req, res) => {
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', async () => {
    const body = Buffer.concat(chunks);
    if (req.method !== 'POST' || !verify(req.headers, body)) {
      res.writeHead(401).end();
      return;
    }
    let event;
    try {
      // CloudEvents structured mode: the whole event is the JSON body.
      event = JSON.parse(body.toString('utf8'));
      if (event.specversion !== '1.0' || typeof event.id !== 'string') throw new Error('not a CloudEvent');
    } catch {
      res.writeHead(400).end();
      return;
    }
    // Events of one webhook arrive one at a time, in `sequence` order.
    if (!handled.has(event.id)) {
      try {
        await handle(event);
      } catch {
        // Not acknowledged: the sidecar sends it again, and nothing after it first.
        res.writeHead(500).end();
        return;
      }
      handled.add(event.id);
    }
    res.writeHead(204).end();
  });
});

const host = process.env.HOST ?? '127.0.0.1';
server.listen(Number(process.env.PORT ?? 8000), host, () => {
  console.log(`listening on http://${host}:${server.address().port}/`);
});
