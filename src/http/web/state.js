// Shared state of the client: the session, the connection, what is known about rooms, messages
// and people, and the open room. Every module reads and changes it; app.js wires the events.

import { $ } from './dom.js';
import { Session } from './api.js';
import { Connection } from './socket.js';

export const session = new Session();
// The connection calls these; app.js fills them in before it starts.
export const handlers = {};
export const conn = new Connection(session, {
  frame: (f) => handlers.frame(f),
  ready: (d) => handlers.ready(d),
  state: (s, detail) => handlers.state(s, detail),
  closed: (code, reason) => handlers.closed(code, reason),
});

export const rooms = new Map(); // room id -> Room from GET /rooms (+ last: the newest message)
export const lastSeen = new Map(); // room id -> highest seq received without a gap
export const store = new Map(); // room id -> Map(seq -> message), for rooms whose messages we hold
export const names = new Map(); // user id -> username
export const online = new Map(); // user id -> bool
export const typers = new Map(); // room id -> Map(user id -> {name, until})
export const readBy = new Map(); // room id -> Map(user id -> read_seq), from receipts
export const syncing = new Set(); // rooms with a sync in flight
export const elements = new Map(); // key -> element of the open room's timeline

// The open room and what belongs to it, and other values more than one module changes.
export const view = {
  open: null, // the open room's id
  oldest: null, // lowest seq loaded for the open room; null: nothing older
  members: [], // the open room's members
  publicRooms: [],
  outbox: [], // [{cmid, room_id, content, state: queued|sending|failed, error}], in compose order
  unseenBelow: 0, // messages that arrived while the reader was scrolled up
  loadingOlder: false,
};

export const me = () => session.user && session.user.id;
export const api = (method, path, body) => session.call(method, path, body);

let noticeTimer = null;
export function notice(text, sticky) {
  const n = $('notice');
  n.textContent = text;
  n.hidden = !text;
  clearTimeout(noticeTimer);
  if (text && !sticky) noticeTimer = setTimeout(() => { n.hidden = true; }, 8000);
}
