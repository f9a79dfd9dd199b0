// The open room's timeline: stored messages by seq with day separators, then its outbox; older
// history on scrolling up; edits and deletes; typing, "seen by", and telling the server what was read.

import { $, h, reconcile, time, dayKey, dayLabel, ask } from './dom.js';
import { api, conn, elements, lastSeen, me, names, notice, online, readBy, rooms, store, typers, view } from './state.js';
import { renderRooms } from './rooms.js';
import { discard, retry } from './outbox.js';
import { applyMessage } from './events.js';

export const TYPING_SHOWN_MS = 5000;

export function roomStore(id) {
  if (!store.has(id)) store.set(id, new Map());
  return store.get(id);
}

export async function loadOlder() {
  if (!view.open || view.oldest === null || view.loadingOlder) return;
  view.loadingOlder = true;
  const id = view.open;
  try {
    const page = await api('GET', `/rooms/${id}/messages?limit=50&before_seq=${view.oldest}`);
    if (view.open !== id) return;
    const held = roomStore(id);
    for (const m of page.items) held.set(m.seq, m);
    view.oldest = page.has_more && page.items.length ? page.items[0].seq : null;
    await namesFor(page.items);
    renderTimeline({ keep: true });
  } catch (e) {
    notice('Could not load older messages: ' + e.message);
  } finally {
    view.loadingOlder = false;
  }
}

export async function namesFor(messages) {
  await Promise.all([...new Set(messages.map((m) => m.sender_id))].map(nameOf));
}

export function nameOf(id) {
  if (names.has(id)) return Promise.resolve(names.get(id));
  return api('GET', '/users/' + id).then((u) => {
    names.set(u.id, u.username);
    if (!online.has(u.id)) online.set(u.id, u.online);
    return u.username;
  }).catch(() => id.slice(0, 8));
}

export const scroller = () => $('scroll');
export const nearBottom = () => { const s = scroller(); return s.scrollHeight - s.scrollTop - s.clientHeight < 60; };

export function renderTimeline({ bottom, keep }) {
  if (!view.open) return;
  const s = scroller();
  const stick = bottom || nearBottom();
  const fromBottom = s.scrollHeight - s.scrollTop;
  const held = [...roomStore(view.open).values()].sort((a, b) => a.seq - b.seq);
  const wanted = [];
  let day = null;
  const myLast = [...held].reverse().find((m) => m.sender_id === me() && !m.deleted);
  for (const m of held) {
    const d = dayKey(m.created_at);
    if (d !== day) {
      day = d;
      wanted.push(keyed('d:' + d, () => h('li', { class: 'day', role: 'separator' }, dayLabel(m.created_at))));
    }
    wanted.push(messageElement(m, m === myLast));
  }
  for (const o of view.outbox.filter((x) => x.room_id === view.open)) wanted.push(pendingElement(o));
  reconcile($('messages'), wanted);
  const shown = new Set(wanted);
  for (const key of [...elements.keys()]) if (!shown.has(elements.get(key))) elements.delete(key);
  $('older').hidden = view.oldest === null;
  if (keep) s.scrollTop = s.scrollHeight - fromBottom;
  else if (stick) {
    s.scrollTop = s.scrollHeight;
    view.unseenBelow = 0;
  }
  renderNewBelow();
}

export function keyed(key, make) {
  if (!elements.has(key)) elements.set(key, make());
  return elements.get(key);
}

export function renderNewBelow() {
  const b = $('newBelow');
  b.hidden = view.unseenBelow === 0;
  b.textContent = `${view.unseenBelow} new message${view.unseenBelow === 1 ? '' : 's'} ↓`;
}

// One message, rebuilt when what it shows changes (content, edit, delete, "seen by").
export function messageElement(m, isMyLast) {
  const mine = m.sender_id === me();
  const seen = isMyLast ? seenBy(m) : '';
  const sig = [m.content, m.edited_at, m.deleted, names.get(m.sender_id), seen].join('|');
  const key = 'm:' + m.seq;
  const old = elements.get(key);
  if (old && old.dataset.sig === sig && old.dataset.id === m.id) return old;
  if (old && old.querySelector('.edit-form')) return old; // being edited: leave it alone
  const author = names.get(m.sender_id) || '…';
  const acts = mine && !m.deleted ? h('span', { class: 'acts' },
    h('button', { type: 'button', class: 'link', 'aria-label': `Edit message ${m.seq}`, onclick: () => startEdit(m) }, 'Edit'),
    h('button', { type: 'button', class: 'link', 'aria-label': `Delete message ${m.seq}`, onclick: () => deleteMessage(m) }, 'Delete')) : null;
  const el = h('li', { class: 'msg' + (mine ? ' mine' : ''), dataset: { seq: m.seq, id: m.id, sig, state: 'sent' } },
    h('div', { class: 'meta' },
      h('span', { class: 'author' }, author),
      h('time', { datetime: m.created_at, title: new Date(m.created_at).toLocaleString() }, time(m.created_at)),
      m.edited_at && !m.deleted && h('span', {}, '(edited)'),
      mine && h('span', { class: 'state' }, 'sent'),
      acts),
    m.deleted ? h('div', { class: 'body gone' }, 'message deleted') : h('div', { class: 'body' }, m.content),
    seen && h('div', { class: 'seen' }, seen));
  if (old && old.contains(document.activeElement)) requestAnimationFrame(() => el.querySelector('button') && el.querySelector('button').focus());
  if (old) old.replaceWith(el);
  elements.set(key, el);
  return el;
}

export function seenBy(m) {
  const readers = [];
  for (const [uid, seq] of readBy.get(m.room_id) || []) if (uid !== me() && seq >= m.seq) readers.push(names.get(uid) || '…');
  return readers.length ? 'Seen by ' + readers.sort().join(', ') : '';
}

export function pendingElement(o) {
  const key = 'p:' + o.cmid;
  const label = { queued: conn.ready ? 'waiting to send' : 'queued: sends when connected', sending: 'sending…', failed: `failed: ${o.error}` }[o.state];
  const sig = o.state + label;
  const old = elements.get(key);
  if (old && old.dataset.sig === sig) return old;
  const el = h('li', { class: 'msg mine', dataset: { cmid: o.cmid, state: o.state, sig } },
    h('div', { class: 'meta' }, h('span', { class: 'author' }, names.get(me()) || 'me'), h('span', { class: 'state' }, label),
      o.state === 'failed' && h('span', { class: 'acts' },
        h('button', { type: 'button', class: 'link', onclick: () => retry(o.cmid) }, 'Retry'),
        h('button', { type: 'button', class: 'link', onclick: () => discard(o.cmid) }, 'Discard'))),
    h('div', { class: 'body' }, o.content));
  if (old) old.replaceWith(el);
  elements.set(key, el);
  return el;
}

export function startEdit(m) {
  const el = elements.get('m:' + m.seq);
  if (!el) return;
  const area = h('textarea', { rows: 2, 'aria-label': 'Edit the message' });
  area.value = m.content;
  const done = () => { el.dataset.sig = ''; renderTimeline({}); };
  const form = h('form', { class: 'edit-form' }, area,
    h('button', { class: 'primary' }, 'Save'), h('button', { type: 'button', onclick: () => { form.remove(); done(); } }, 'Cancel'));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const content = area.value.trim();
    if (!content || content === m.content) { form.remove(); return done(); }
    try {
      const edited = await conn.request('edit', { message_id: m.id, content });
      form.remove();
      applyMessage(edited);
      done();
    } catch (err) {
      notice('Edit failed: ' + err.message);
    }
  });
  area.addEventListener('keydown', (e) => {
    if (e.key === 'Escape') { form.remove(); done(); }
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); form.requestSubmit(); }
  });
  el.querySelector('.body').replaceWith(form);
  area.focus();
}

export async function deleteMessage(m) {
  const v = await ask('Delete this message?', [], 'Delete');
  if (!v) return;
  try {
    await conn.request('delete', { message_id: m.id });
  } catch (e) {
    notice('Delete failed: ' + e.message);
  }
}

export function onTyping(d) {
  if (d.user_id === me()) return;
  if (!typers.has(d.room_id)) typers.set(d.room_id, new Map());
  typers.get(d.room_id).set(d.user_id, { name: d.username, until: Date.now() + TYPING_SHOWN_MS });
  renderTyping();
  setTimeout(renderTyping, TYPING_SHOWN_MS + 50);
}

export function clearTyper(roomId, userId) {
  const t = typers.get(roomId);
  if (t && t.delete(userId)) renderTyping();
}

export function renderTyping() {
  const t = typers.get(view.open);
  const now = Date.now();
  const who = t ? [...t.entries()].filter(([, v]) => v.until > now).map(([, v]) => v.name) : [];
  const text = !who.length ? '' : who.length === 1 ? `${who[0]} is typing…` : `${who.join(', ')} are typing…`;
  if ($('typing').textContent !== text) $('typing').textContent = text;
}

export function onReceipt(d) {
  if (d.user_id === me()) {
    const r = rooms.get(d.room_id);
    if (r && d.read_seq >= (r.last_seq || 0) && r.unread_count) { r.unread_count = 0; renderRooms(); }
    return;
  }
  if (!readBy.has(d.room_id)) readBy.set(d.room_id, new Map());
  const map = readBy.get(d.room_id);
  map.set(d.user_id, Math.max(map.get(d.user_id) || 0, d.read_seq));
  if (d.room_id === view.open) renderTimeline({});
}

// Tells the server (and so the room's "seen by") what this reader has seen: the open room, while
// the tab is visible and the newest message is on screen.
let readTimer = null;
export const readSent = new Map();
export function markRead() {
  clearTimeout(readTimer);
  readTimer = setTimeout(() => {
    if (!view.open || !conn.ready || document.hidden || !nearBottom()) return;
    const seq = lastSeen.get(view.open) || 0;
    if (seq <= (readSent.get(view.open) || 0)) return;
    readSent.set(view.open, seq);
    conn.emit('ack', { room_id: view.open, delivered_seq: seq, read_seq: seq });
  }, 300);
}
