// What the server says: catching up after `ready`, and each event applied to the state.

import { $, announce } from './dom.js';
import { conn, lastSeen, me, names, notice, online, rooms, session, store, syncing, view } from './state.js';
import { forgetRoom, loadPublic, loadRooms, renderHead, renderRooms, roomName } from './rooms.js';
import { loadMembers, renderMembers } from './members.js';
import { clearTyper, markRead, nameOf, nearBottom, onReceipt, onTyping, renderTimeline, roomStore } from './timeline.js';
import { pump, removeFromOutbox, renderOutbox } from './outbox.js';

export function onReady(d) {
  session.setUser(d.user);
  names.set(d.user.id, d.user.username);
  $('me').textContent = d.user.username;
  const behind = [];
  let unknown = false;
  const listed = new Set();
  for (const r of d.rooms) {
    listed.add(r.room_id);
    if (!rooms.has(r.room_id)) unknown = true;
    const have = lastSeen.get(r.room_id);
    if (have === undefined) lastSeen.set(r.room_id, r.last_seq);
    else if (have < r.last_seq) behind.push({ room_id: r.room_id, after_seq: have });
  }
  for (const id of [...rooms.keys()]) if (!listed.has(id)) forgetRoom(id);
  // Catch up (the missed messages arrive as `message` events), then the list's counts are exact.
  (behind.length ? sync(behind) : Promise.resolve())
    .catch((e) => notice('Catching up failed: ' + e.message))
    .then(() => (unknown ? loadRooms() : null))
    .then(() => { markRead(); pump(); });
  if (view.open) loadMembers();
  renderOutbox();
}

export async function sync(list) {
  list.forEach((r) => syncing.add(r.room_id));
  try {
    for (let i = 0; i < list.length; i += 500) {
      const res = await conn.request('sync', { rooms: list.slice(i, i + 500) }, 30000);
      const more = [];
      for (const r of res.rooms) {
        // A sync replays contiguously (a cleared range is skipped): the reply's last_seq is seen.
        if (r.last_seq > (lastSeen.get(r.room_id) || 0)) lastSeen.set(r.room_id, r.last_seq);
        if (r.has_more) more.push({ room_id: r.room_id, after_seq: r.last_seq });
      }
      if (more.length) await sync(more);
    }
  } finally {
    list.forEach((r) => syncing.delete(r.room_id));
  }
  const delivered = list.map((r) => r.room_id).filter((id) => rooms.has(id));
  for (const id of delivered) conn.emit('ack', { room_id: id, delivered_seq: lastSeen.get(id) });
}

export function onFrame(f) {
  const d = f.data || {};
  switch (f.event) {
    case 'message': return onMessage(d);
    case 'message_edited': return applyMessage(d, true);
    case 'message_deleted': {
      const m = store.has(d.room_id) && store.get(d.room_id).get(d.seq);
      if (m) applyMessage({ ...m, deleted: true, content: '' }, true);
      const r = rooms.get(d.room_id);
      if (r && r.last && r.last.seq === d.seq) { r.last = { ...r.last, deleted: true, content: '' }; renderRooms(); }
      return;
    }
    case 'room_cleared': {
      const held = store.get(d.room_id);
      if (held) for (const seq of [...held.keys()]) if (seq <= d.cleared_seq) held.delete(seq);
      lastSeen.set(d.room_id, Math.max(lastSeen.get(d.room_id) || 0, d.cleared_seq));
      const r = rooms.get(d.room_id);
      if (r) { r.last = null; renderRooms(); }
      if (d.room_id === view.open) { view.oldest = null; renderTimeline({}); announce('The history was cleared.'); }
      return;
    }
    case 'typing': return onTyping(d);
    case 'presence':
      online.set(d.user_id, d.online);
      if (view.open) renderMembers();
      return;
    case 'receipt': return onReceipt(d);
    case 'member_joined':
      if (d.user_id === me() && !rooms.has(d.room_id)) loadRooms();
      if (d.room_id === view.open) loadMembers();
      return;
    case 'member_left':
      if (d.user_id === me()) {
        const r = rooms.get(d.room_id);
        if (r && d.reason !== 'left') notice(`You were ${d.reason} from ${roomName(r)}.`);
        forgetRoom(d.room_id);
        renderRooms();
        loadPublic();
      } else if (d.room_id === view.open) loadMembers();
      return;
    case 'member_updated':
      if (d.room_id === view.open) loadMembers();
      return;
    case 'room_updated': {
      const r = rooms.get(d.id);
      if (r) { Object.assign(r, d); renderRooms(); if (d.id === view.open) renderHead(); }
      return;
    }
    case 'room_deleted': {
      const r = rooms.get(d.room_id);
      if (r) notice(`${roomName(r)} was closed.`);
      forgetRoom(d.room_id);
      renderRooms();
      loadPublic();
      return;
    }
    case 'error':
      notice(`The server refused a request: ${d.message} (${d.code})`);
      return;
    default:
  }
}

// A live or replayed message: stored by seq (so a copy is never shown twice), the contiguous
// position moved, a gap synced.
export function onMessage(m) {
  const r = rooms.get(m.room_id);
  if (!r) { loadRooms(); return; }
  const before = lastSeen.get(m.room_id) || 0;
  const fresh = m.seq > before && !(store.get(m.room_id) && store.get(m.room_id).has(m.seq));
  roomStore(m.room_id).set(m.seq, m);
  if (m.seq === before + 1) {
    let seq = m.seq;
    const held = store.get(m.room_id);
    while (held.has(seq + 1)) seq += 1;
    lastSeen.set(m.room_id, seq);
  } else if (m.seq > before + 1 && !syncing.has(m.room_id) && conn.ready) {
    sync([{ room_id: m.room_id, after_seq: before }]).catch((e) => notice('Catching up failed: ' + e.message));
  }
  if (!fresh) { if (m.room_id === view.open) renderTimeline({}); return; }
  if (m.seq > r.last_seq) r.last_seq = m.seq;
  if (!r.last || r.last.seq < m.seq) r.last = m;
  if (m.sender_id === me() && m.client_msg_id) removeFromOutbox(m.client_msg_id);
  clearTyper(m.room_id, m.sender_id);
  nameOf(m.sender_id).then(() => {
    if (m.room_id === view.open) {
      const stick = nearBottom() || m.sender_id === me();
      if (!stick && m.sender_id !== me()) view.unseenBelow += 1;
      renderTimeline({ bottom: stick });
      markRead();
    } else if (m.sender_id !== me() && !m.deleted) {
      r.unread_count = (r.unread_count || 0) + 1;
      announce(`New message in ${roomName(r)}`);
    }
    renderRooms();
  });
}

// The stored state of a message we may already show (edit, delete, a send's reply).
export function applyMessage(m, announceIt) {
  const held = store.get(m.room_id);
  if (m.client_msg_id && m.sender_id === me()) removeFromOutbox(m.client_msg_id);
  if (!held || !held.has(m.seq)) {
    if (held && m.seq > (lastSeen.get(m.room_id) || 0)) return onMessage(m);
    if (m.room_id === view.open) renderTimeline({});
    return;
  }
  held.set(m.seq, m);
  if (m.room_id === view.open) {
    renderTimeline({});
    if (announceIt) announce(m.deleted ? 'A message was deleted.' : 'A message was edited.');
  }
}
