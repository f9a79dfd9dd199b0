// Sending: an ordered outbox, paced under the rate limit, one send in flight at a time.

import { $, announce, uuid } from './dom.js';
import { conn, me, view } from './state.js';
import { renderTimeline } from './timeline.js';
import { applyMessage } from './events.js';

export const OUTBOX_KEY = 'chorus.outbox';
export const SEND_TIMEOUT_MS = 8000; // a send with no reply this long is shown failed (a retry cannot duplicate it)
export const SEND_RATE_PER_S = 5; // our own pace, under the server's per-user budget (10/s, burst 30)
export const SEND_BURST = 10;

let tokens = SEND_BURST;
let tokensAt = Date.now();
let pumping = false;
let pumpTimer = null;

export function saveOutbox() {
  sessionStorage.setItem(OUTBOX_KEY, JSON.stringify(view.outbox.map((o) => ({ ...o, owner: me() }))));
}

export function compose(content) {
  view.outbox.push({ cmid: uuid(), room_id: view.open, content, state: 'queued', error: null });
  saveOutbox();
  renderTimeline({ bottom: true });
  pump();
}

export function renderOutbox() {
  if (view.open) renderTimeline({});
}

// Sends the oldest queued message, waits for its reply, then the next: the order of composing is
// the order of storing. A `rate_limited` refusal waits the time the server names and sends the same
// message again (same client_msg_id); a lost connection puts it back in the queue for the next
// `ready`. A send with no reply at all is shown failed; its retry cannot store it twice.
export async function pump() {
  if (pumping) return;
  pumping = true;
  try {
    for (;;) {
      const o = view.outbox.find((x) => x.state === 'queued');
      if (!o || !conn.ready) break;
      const now = Date.now();
      tokens = Math.min(SEND_BURST, tokens + ((now - tokensAt) / 1000) * SEND_RATE_PER_S);
      tokensAt = now;
      if (tokens < 1) {
        clearTimeout(pumpTimer);
        pumpTimer = setTimeout(pump, ((1 - tokens) / SEND_RATE_PER_S) * 1000);
        break;
      }
      tokens -= 1;
      o.state = 'sending';
      renderOutbox();
      try {
        const m = await conn.request('send', { room_id: o.room_id, content: o.content, client_msg_id: o.cmid }, SEND_TIMEOUT_MS);
        removeFromOutbox(o.cmid);
        applyMessage(m);
      } catch (e) {
        if (!view.outbox.includes(o)) continue;
        if (e.transport) {
          o.state = 'queued'; // sent again after the next `ready`
        } else if (e.code === 'rate_limited') {
          o.state = 'queued';
          const wait = Number((/retry in (\d+)/.exec(e.message) || [])[1] || 1);
          tokens = 0;
          tokensAt = Date.now() + wait * 1000 - 1000 / SEND_RATE_PER_S;
          clearTimeout(pumpTimer);
          pumpTimer = setTimeout(pump, wait * 1000);
          renderOutbox();
          break;
        } else {
          o.state = 'failed';
          o.error = e.timeout ? 'no answer from the server' : e.message;
          announce(`Message not sent: ${o.error}`);
        }
        saveOutbox();
        renderOutbox();
      }
    }
  } finally {
    pumping = false;
  }
}

export function retry(cmid) {
  const o = view.outbox.find((x) => x.cmid === cmid);
  if (!o) return;
  o.state = 'queued';
  o.error = null;
  // Behind whatever is queued now; the same client_msg_id means a send the server already stored
  // comes back as that message, never as a second one.
  view.outbox = view.outbox.filter((x) => x !== o).concat(o);
  saveOutbox();
  renderOutbox();
  pump();
}

export function discard(cmid) {
  removeFromOutbox(cmid);
  renderOutbox();
}

export function removeFromOutbox(cmid) {
  view.outbox = view.outbox.filter((x) => x.cmid !== cmid);
  saveOutbox();
}
