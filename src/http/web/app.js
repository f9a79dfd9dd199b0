// The Chorus chat client: state, rendering and the wiring between the page, REST and the socket.
// Protocol rules it follows are in docs/PROTOCOL.md (§10: reconnect and resync).

import { $, h, reconcile, announce, time, dayKey, dayLabel, uuid, ask } from './dom.js';
import { Session } from './api.js';
import { Connection } from './socket.js';

const session = new Session();
const OUTBOX_KEY = 'chorus.outbox';
const SEND_TIMEOUT_MS = 8000; // a send with no reply this long is shown failed (a retry cannot duplicate it)
const SEND_RATE_PER_S = 5; // our own pace, under the server's per-user budget (10/s, burst 30)
const SEND_BURST = 10;
const TYPING_SHOWN_MS = 5000;

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------
const rooms = new Map(); // room id -> Room from GET /rooms (+ last: the newest message)
const lastSeen = new Map(); // room id -> highest seq received without a gap
const store = new Map(); // room id -> Map(seq -> message), for rooms whose messages we hold
const names = new Map(); // user id -> username
const online = new Map(); // user id -> bool
const typers = new Map(); // room id -> Map(user id -> {name, until})
const readBy = new Map(); // room id -> Map(user id -> read_seq), from receipts
let members = []; // the open room's members
let publicRooms = [];
let outbox = []; // [{cmid, room_id, content, state: queued|sending|failed, error}], in compose order
let open = null; // the open room's id
let oldest = null; // lowest seq loaded for the open room; null: nothing older
let loadingOlder = false;
let unseenBelow = 0; // messages that arrived while the reader was scrolled up
const syncing = new Set(); // rooms with a sync in flight
const elements = new Map(); // key -> element of the open room's timeline

const conn = new Connection(session, {
  frame: onFrame,
  ready: onReady,
  state: showConnection,
  closed: onClosed,
});
session.onTokens = (token) => { conn.request('auth', { token }).catch(() => {}); };
session.onEnded = (message) => signedOut(message);

const me = () => session.user && session.user.id;
const api = (method, path, body) => session.call(method, path, body);

// ---------------------------------------------------------------------------------------------
// Notices and connection state
// ---------------------------------------------------------------------------------------------
let noticeTimer = null;
function notice(text, sticky) {
  const n = $('notice');
  n.textContent = text;
  n.hidden = !text;
  clearTimeout(noticeTimer);
  if (text && !sticky) noticeTimer = setTimeout(() => { n.hidden = true; }, 8000);
}

let countdown = null;
function showConnection(state, detail) {
  const el = $('conn');
  clearInterval(countdown);
  el.dataset.state = state;
  if (state === 'online') el.dataset.node = detail;
  const text = {
    connecting: 'Connecting…',
    online: `Connected (${detail})`,
    offline: 'Offline: waiting for the network',
    paused: 'Disconnected: reconnects when this tab is visible',
    'signed-out': 'Signed out',
  }[state];
  if (state === 'waiting') {
    const tick = () => {
      const s = Math.max(0, Math.ceil((detail.at - Date.now()) / 1000));
      el.textContent = `Disconnected${detail.why ? ` (${detail.why})` : ''}: retrying in ${s} s`;
    };
    tick();
    countdown = setInterval(tick, 1000);
  } else el.textContent = text;
  if (state !== 'online') renderOutbox();
}

function onClosed(code, reason) {
  if (code === 4001 && reason === 'token_revoked') {
    session.end('You were signed out everywhere (from another tab or device). Sign in again.');
  } else if (code === 4008) {
    notice('The connection fell behind and was reset by the server; catching up now.');
  } else if (code === 1012) {
    notice('The server you were on is restarting; moving to another one.');
  } else if (code === 4001) {
    notice('Your access token expired; refreshed it and reconnecting.');
  } else if (code === 4429) {
    notice('Too many open Chorus tabs or devices: close one. Trying again in 30 s.', true);
  } else if (code === 4000) {
    notice('The connection stopped answering; reconnecting.');
  }
}

// ---------------------------------------------------------------------------------------------
// Sign in / out
// ---------------------------------------------------------------------------------------------
async function authSubmit(register) {
  const username = $('username').value.trim();
  const password = $('password').value;
  $('authError').textContent = '';
  try {
    await session.signIn(username, password, register);
    start();
  } catch (e) {
    $('authError').textContent = e.message + (e.code ? ` (${e.code})` : '');
  }
}

function signedOut(message) {
  conn.stop();
  for (const m of [rooms, lastSeen, store, names, online, typers, readBy, elements]) m.clear();
  outbox = [];
  open = null;
  $('app').hidden = true;
  $('signin').hidden = false;
  $('authError').textContent = message || '';
  document.title = 'Chorus';
  $('username').focus();
}

async function start() {
  $('signin').hidden = true;
  $('app').hidden = false;
  $('me').textContent = session.user ? session.user.username : '';
  if (session.user) names.set(session.user.id, session.user.username);
  outbox = JSON.parse(sessionStorage.getItem(OUTBOX_KEY) || '[]').filter((o) => o.owner === me());
  outbox.forEach((o) => { if (o.state === 'sending') o.state = 'queued'; });
  session.schedule();
  try {
    await loadRooms();
  } catch (e) {
    if (!session.signedIn) return;
    notice('Could not load your rooms: ' + e.message);
  }
  loadPublic();
  const saved = sessionStorage.getItem('chorus.open');
  if (saved && rooms.has(saved)) openRoom(saved, false);
  conn.start();
}

// ---------------------------------------------------------------------------------------------
// Rooms
// ---------------------------------------------------------------------------------------------
async function loadRooms() {
  const page = await api('GET', '/rooms?limit=200');
  const seen = new Set();
  for (const r of page.items) {
    seen.add(r.id);
    const old = rooms.get(r.id);
    // The list was read at some moment; messages that arrived live since then still count.
    const held = store.get(r.id);
    if (held) {
      for (const m of held.values()) if (m.seq > r.last_seq && m.sender_id !== me() && !m.deleted) r.unread_count += 1;
      r.last_seq = Math.max(r.last_seq, ...held.keys());
    }
    if (r.id === open) r.unread_count = 0;
    rooms.set(r.id, Object.assign(old || {}, r));
    if (!lastSeen.has(r.id)) lastSeen.set(r.id, r.last_seq);
    if (!old) loadLast(r.id);
  }
  for (const id of [...rooms.keys()]) if (!seen.has(id)) forgetRoom(id);
  renderRooms();
  renderPublic();
}

// The newest message, for the room list's preview.
async function loadLast(id) {
  const r = rooms.get(id);
  if (r && r.kind === 'direct') peerName(r);
  if (!r || r.last_seq === 0) return;
  try {
    const page = await api('GET', `/rooms/${id}/messages?limit=1`);
    const m = page.items[page.items.length - 1];
    if (m && (!r.last || r.last.seq < m.seq)) {
      r.last = m;
      await nameOf(m.sender_id);
      renderRooms();
    }
  } catch (_) { /* the preview stays empty */ }
}

function forgetRoom(id) {
  rooms.delete(id);
  lastSeen.delete(id);
  store.delete(id);
  if (open === id) closeRoom();
}

async function loadPublic() {
  try {
    publicRooms = (await api('GET', '/rooms?scope=public&limit=100')).items;
    renderPublic();
  } catch (e) {
    notice('Could not load public rooms: ' + e.message);
  }
}

function roomName(r) {
  if (r.kind === 'direct') return r.peer ? '@ ' + r.peer : '@ …';
  return '# ' + r.name;
}

async function peerName(r) {
  if (r.peer) return;
  try {
    const page = await api('GET', `/rooms/${r.id}/members?limit=10`);
    const other = page.items.find((m) => m.user_id !== me()) || page.items[0];
    if (other) {
      r.peer = other.username;
      r.peerId = other.user_id;
      online.set(other.user_id, other.online);
      renderRooms();
      if (r.id === open) renderHead();
    }
  } catch (_) { /* shown as "@ …" */ }
}

const roomButtons = new Map();
function renderRooms() {
  const list = [...rooms.values()].sort((a, b) => ((b.last && b.last.created_at) || b.created_at).localeCompare((a.last && a.last.created_at) || a.created_at));
  const items = list.map((r) => {
    const unread = r.id === open ? 0 : r.unread_count || 0;
    const last = r.last ? (r.last.deleted ? 'message deleted' : `${names.get(r.last.sender_id) || '…'}: ${r.last.content}`) : 'No messages yet';
    const label = `${roomName(r)}${r.visibility === 'private' && r.kind !== 'direct' ? ' (private)' : ''}${r.protected ? ' (password)' : ''}`;
    let li = roomButtons.get(r.id);
    const button = h('button', { type: 'button', class: 'room-item', 'aria-current': r.id === open ? 'true' : 'false',
      'data-room': r.id, onclick: () => openRoom(r.id, true) },
    h('span', { class: 'text' }, h('span', { class: 'name' }, label), h('span', { class: 'last' }, last)),
    unread > 0 && h('span', { class: 'badge', 'aria-label': `${unread} unread` }, unread > 99 ? '99+' : unread));
    if (!li) {
      li = h('li', {});
      roomButtons.set(r.id, li);
    }
    const hadFocus = li.contains(document.activeElement);
    li.replaceChildren(button);
    if (hadFocus) button.focus();
    return li;
  });
  for (const id of [...roomButtons.keys()]) if (!rooms.has(id)) roomButtons.delete(id);
  if (!items.length) items.push(h('li', { class: 'muted small' }, 'No rooms yet: create one or join a public room.'));
  reconcile($('rooms'), items);
  renderTitle();
}

function renderTitle() {
  let unread = 0;
  for (const r of rooms.values()) if (r.id !== open) unread += r.unread_count || 0;
  document.title = unread > 0 ? `(${unread}) Chorus` : 'Chorus';
}

function renderPublic() {
  const list = publicRooms.filter((r) => !rooms.has(r.id));
  const items = list.map((r) => h('li', { class: 'pub-item' },
    h('span', { class: 'name' }, '# ' + r.name, r.protected ? ' (password)' : ''),
    h('span', { class: 'muted small', 'aria-label': `${r.member_count} members` }, `${r.member_count}`),
    h('button', { type: 'button', 'aria-label': `Join ${r.name}`, onclick: () => joinRoom(r) }, 'Join')));
  if (!items.length) items.push(h('li', { class: 'muted small' }, 'Nothing new to join.'));
  $('public').replaceChildren(...items);
}

async function joinRoom(r) {
  const body = {};
  if (r.protected) {
    const v = await ask(`Password for # ${r.name}`, [{ name: 'password', label: 'Password', type: 'password', required: true }], 'Join');
    if (!v) return;
    body.password = v.password;
  }
  try {
    const room = await api('POST', `/rooms/${r.id}/join`, body);
    addRoom(room);
    openRoom(room.id, true);
  } catch (e) {
    notice(`Could not join # ${r.name}: ${e.message}`);
  }
}

function addRoom(room) {
  rooms.set(room.id, Object.assign(rooms.get(room.id) || {}, room));
  if (!lastSeen.has(room.id)) lastSeen.set(room.id, room.last_seq);
  renderRooms();
  renderPublic();
}

async function createRoom() {
  const v = await ask('New room', [
    { name: 'name', label: 'Name', required: true },
    { name: 'visibility', label: 'Who can find it', value: 'public',
      options: [['public', 'Public: anyone can find and join'], ['private', 'Private: members you add']] },
    { name: 'password', label: 'Password to join (optional, public rooms)', type: 'password' },
    { name: 'members', label: 'Add people (usernames, comma-separated)' },
  ], 'Create');
  if (!v) return;
  try {
    const ids = await userIds(v.members);
    const body = { name: v.name.trim(), visibility: v.visibility };
    if (v.password) body.password = v.password;
    if (ids.length) body.member_ids = ids;
    const room = await api('POST', '/rooms', body);
    addRoom(room);
    openRoom(room.id, true);
    loadPublic();
  } catch (e) {
    notice('Could not create the room: ' + e.message);
  }
}

// Usernames (comma-separated) to user ids; an unknown name is an error.
async function userIds(text) {
  const ids = [];
  for (const name of (text || '').split(',').map((s) => s.trim()).filter(Boolean)) {
    const page = await api('GET', '/users?limit=20&q=' + encodeURIComponent(name));
    const u = page.items.find((x) => x.username.toLowerCase() === name.toLowerCase());
    if (!u) throw new Error(`nobody is called "${name}"`);
    names.set(u.id, u.username);
    ids.push(u.id);
  }
  return ids;
}

async function searchPeople(e) {
  e.preventDefault();
  const q = $('dmQuery').value.trim();
  if (!q) return;
  try {
    const page = await api('GET', '/users?limit=10&q=' + encodeURIComponent(q));
    const people = page.items.filter((u) => u.id !== me());
    $('dmResults').replaceChildren(...people.map((u) => h('li', { class: 'person' },
      h('span', { class: 'name' }, u.username), h('span', { class: 'presence small' + (u.online ? ' on' : '') }, u.online ? 'online' : 'offline'),
      h('button', { type: 'button', 'aria-label': `Message ${u.username}`, onclick: () => direct(u) }, 'Message'))));
    if (!people.length) $('dmResults').replaceChildren(h('li', { class: 'muted small' }, 'Nobody found.'));
  } catch (err) {
    notice('Search failed: ' + err.message);
  }
}

async function direct(u) {
  try {
    const room = await api('POST', '/direct', { user_id: u.id });
    room.peer = u.username;
    room.peerId = u.id;
    addRoom(room);
    $('dmResults').replaceChildren();
    $('dmQuery').value = '';
    openRoom(room.id, true);
  } catch (e) {
    notice('Could not open the conversation: ' + e.message);
  }
}

// ---------------------------------------------------------------------------------------------
// The open room
// ---------------------------------------------------------------------------------------------
function closeRoom() {
  open = null;
  members = [];
  elements.clear();
  $('messages').replaceChildren();
  $('roomTitle').textContent = 'Pick a room';
  $('text').disabled = $('sendBtn').disabled = $('membersBtn').disabled = $('settingsBtn').disabled = true;
  $('members').hidden = true;
  $('older').hidden = true;
  $('typing').textContent = '';
  $('panes').dataset.view = 'list';
  sessionStorage.removeItem('chorus.open');
  renderRooms();
}

async function openRoom(id, focus) {
  const r = rooms.get(id);
  if (!r) return;
  closeRoom();
  open = id;
  sessionStorage.setItem('chorus.open', id);
  r.unread_count = 0;
  unseenBelow = 0;
  $('panes').dataset.view = 'room';
  $('text').disabled = $('sendBtn').disabled = $('membersBtn').disabled = $('settingsBtn').disabled = false;
  renderHead();
  renderRooms();
  if (focus) $('text').focus();
  loadMembers();
  try {
    const page = await api('GET', `/rooms/${id}/messages?limit=50`);
    if (open !== id) return;
    const held = roomStore(id);
    for (const m of page.items) held.set(m.seq, m);
    const newest = page.items.length ? page.items[page.items.length - 1].seq : 0;
    if (newest > (lastSeen.get(id) || 0)) lastSeen.set(id, newest);
    oldest = page.has_more && page.items.length ? page.items[0].seq : null;
    if (page.items.length && page.items[0].seq <= 1) oldest = null;
    await namesFor(page.items);
    renderTimeline({ bottom: true });
    markRead();
  } catch (e) {
    notice('Could not load the history: ' + e.message);
  }
}

function renderHead() {
  const r = rooms.get(open);
  if (!r) return;
  $('roomTitle').textContent = roomName(r);
}

function roomStore(id) {
  if (!store.has(id)) store.set(id, new Map());
  return store.get(id);
}

async function loadOlder() {
  if (!open || oldest === null || loadingOlder) return;
  loadingOlder = true;
  const id = open;
  try {
    const page = await api('GET', `/rooms/${id}/messages?limit=50&before_seq=${oldest}`);
    if (open !== id) return;
    const held = roomStore(id);
    for (const m of page.items) held.set(m.seq, m);
    oldest = page.has_more && page.items.length ? page.items[0].seq : null;
    await namesFor(page.items);
    renderTimeline({ keep: true });
  } catch (e) {
    notice('Could not load older messages: ' + e.message);
  } finally {
    loadingOlder = false;
  }
}

async function namesFor(messages) {
  await Promise.all([...new Set(messages.map((m) => m.sender_id))].map(nameOf));
}

function nameOf(id) {
  if (names.has(id)) return Promise.resolve(names.get(id));
  return api('GET', '/users/' + id).then((u) => {
    names.set(u.id, u.username);
    if (!online.has(u.id)) online.set(u.id, u.online);
    return u.username;
  }).catch(() => id.slice(0, 8));
}

async function loadMembers() {
  const id = open;
  try {
    const page = await api('GET', `/rooms/${id}/members?limit=200`);
    if (open !== id) return;
    members = page.items;
    for (const m of members) {
      names.set(m.user_id, m.username);
      online.set(m.user_id, m.online);
    }
    renderMembers();
    renderTimeline({});
  } catch (_) { /* the panel stays as it was */ }
}

function myRole() {
  const m = members.find((x) => x.user_id === me());
  return m ? m.role : 'member';
}

function renderMembers() {
  const role = myRole();
  const r = rooms.get(open);
  const group = r && r.kind !== 'direct';
  const manage = group && (role === 'owner' || role === 'admin');
  $('memberList').replaceChildren(...members.map((m) => {
    const on = !!online.get(m.user_id);
    const mine = m.user_id === me();
    const buttons = [];
    if (manage && !mine && m.role !== 'owner') {
      if (role === 'owner') {
        buttons.push(h('button', { type: 'button', onclick: () => setRole(m, m.role === 'admin' ? 'member' : 'admin') }, m.role === 'admin' ? 'Make member' : 'Make admin'));
        buttons.push(h('button', { type: 'button', onclick: () => transfer(m) }, 'Make owner'));
      }
      if (role === 'owner' || m.role === 'member') {
        buttons.push(h('button', { type: 'button', onclick: () => removeMember(m) }, 'Remove'));
        buttons.push(h('button', { type: 'button', onclick: () => ban(m) }, 'Ban'));
      }
    }
    return h('li', { class: 'member', 'data-user': m.username },
      h('div', { class: 'line' }, h('span', { class: 'grow' }, m.username + (mine ? ' (you)' : '')),
        m.role !== 'member' && h('span', { class: 'role' }, m.role)),
      h('span', { class: 'presence' + (on ? ' on' : '') }, on ? 'online' : 'offline'),
      buttons.length > 0 && h('div', { class: 'manage', role: 'group', 'aria-label': `Manage ${m.username}` }, buttons));
  }));
  $('addMember').hidden = !manage;
}

async function act(what, fn) {
  try {
    await fn();
    loadMembers();
  } catch (e) {
    notice(`${what} failed: ${e.message}`);
  }
}
const setRole = (m, role) => act('Changing the role', () => api('PATCH', `/rooms/${open}/members/${m.user_id}`, { role }));
const transfer = async (m) => {
  const v = await ask(`Make ${m.username} the owner? You become an admin.`, [], 'Make owner');
  if (v) act('Transferring ownership', () => api('POST', `/rooms/${open}/owner`, { user_id: m.user_id }));
};
const removeMember = (m) => act('Removing', () => api('DELETE', `/rooms/${open}/members/${m.user_id}`));
const ban = async (m) => {
  const v = await ask(`Ban ${m.username}? They are removed and cannot rejoin.`, [{ name: 'reason', label: 'Reason (optional)' }], 'Ban');
  if (v) act('Banning', () => api('POST', `/rooms/${open}/bans`, v.reason ? { user_id: m.user_id, reason: v.reason } : { user_id: m.user_id }));
};

async function addMember(e) {
  e.preventDefault();
  const name = $('addMemberName').value.trim();
  if (!name) return;
  await act('Adding', async () => {
    const ids = await userIds(name);
    await api('POST', `/rooms/${open}/members`, { user_ids: ids });
    $('addMemberName').value = '';
  });
}

async function roomSettings() {
  const r = rooms.get(open);
  if (!r) return;
  const role = myRole();
  const group = r.kind !== 'direct';
  const fields = [];
  if (group && (role === 'owner' || role === 'admin')) {
    fields.push({ name: 'name', label: 'Name', value: r.name, required: true });
    fields.push({ name: 'visibility', label: 'Who can find it', value: r.visibility, options: [['public', 'Public'], ['private', 'Private']] });
    fields.push({ name: 'password', label: r.protected ? 'New password (blank keeps it)' : 'Password to join (optional)', type: 'password' });
  }
  const actions = [['none', 'Just save']];
  if (r.protected && (role === 'owner' || role === 'admin')) actions.push(['unprotect', 'Remove the password']);
  if (role === 'owner' || role === 'admin') actions.push(['clear', 'Clear the history']);
  if (group) actions.push(['leave', 'Leave the room']);
  if (group && role === 'owner') actions.push(['close', 'Close the room for everyone']);
  fields.push({ name: 'action', label: 'Also', value: 'none', options: actions });
  const v = await ask(`${roomName(r)}: settings`, fields, 'Apply');
  if (!v) return;
  try {
    if (fields.length > 1) {
      const patch = {};
      if (v.name.trim() !== r.name) patch.name = v.name.trim();
      if (v.visibility !== r.visibility) patch.visibility = v.visibility;
      if (v.password) patch.password = v.password;
      if (v.action === 'unprotect') patch.password = null;
      if (Object.keys(patch).length) Object.assign(r, await api('PATCH', `/rooms/${r.id}`, patch));
    }
    if (v.action === 'clear') await api('DELETE', `/rooms/${r.id}/messages`);
    if (v.action === 'leave') {
      await api('POST', `/rooms/${r.id}/leave`);
      forgetRoom(r.id);
      loadPublic();
    }
    if (v.action === 'close') {
      await api('DELETE', `/rooms/${r.id}`);
      forgetRoom(r.id);
      loadPublic();
    }
    renderRooms();
    renderHead();
  } catch (e) {
    notice('That failed: ' + e.message);
  }
}

// ---------------------------------------------------------------------------------------------
// The timeline: stored messages by seq with day separators, then this room's outbox
// ---------------------------------------------------------------------------------------------
const scroller = () => $('scroll');
const nearBottom = () => { const s = scroller(); return s.scrollHeight - s.scrollTop - s.clientHeight < 60; };

function renderTimeline({ bottom, keep }) {
  if (!open) return;
  const s = scroller();
  const stick = bottom || nearBottom();
  const fromBottom = s.scrollHeight - s.scrollTop;
  const held = [...roomStore(open).values()].sort((a, b) => a.seq - b.seq);
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
  for (const o of outbox.filter((x) => x.room_id === open)) wanted.push(pendingElement(o));
  reconcile($('messages'), wanted);
  const shown = new Set(wanted);
  for (const key of [...elements.keys()]) if (!shown.has(elements.get(key))) elements.delete(key);
  $('older').hidden = oldest === null;
  if (keep) s.scrollTop = s.scrollHeight - fromBottom;
  else if (stick) {
    s.scrollTop = s.scrollHeight;
    unseenBelow = 0;
  }
  renderNewBelow();
}

function keyed(key, make) {
  if (!elements.has(key)) elements.set(key, make());
  return elements.get(key);
}

function renderNewBelow() {
  const b = $('newBelow');
  b.hidden = unseenBelow === 0;
  b.textContent = `${unseenBelow} new message${unseenBelow === 1 ? '' : 's'} ↓`;
}

// One message, rebuilt when what it shows changes (content, edit, delete, "seen by").
function messageElement(m, isMyLast) {
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

function seenBy(m) {
  const readers = [];
  for (const [uid, seq] of readBy.get(m.room_id) || []) if (uid !== me() && seq >= m.seq) readers.push(names.get(uid) || '…');
  return readers.length ? 'Seen by ' + readers.sort().join(', ') : '';
}

function pendingElement(o) {
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

function startEdit(m) {
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

async function deleteMessage(m) {
  const v = await ask('Delete this message?', [], 'Delete');
  if (!v) return;
  try {
    await conn.request('delete', { message_id: m.id });
  } catch (e) {
    notice('Delete failed: ' + e.message);
  }
}

// ---------------------------------------------------------------------------------------------
// Sending: an ordered outbox, paced under the rate limit, one send in flight at a time
// ---------------------------------------------------------------------------------------------
let tokens = SEND_BURST;
let tokensAt = Date.now();
let pumping = false;
let pumpTimer = null;

function saveOutbox() {
  sessionStorage.setItem(OUTBOX_KEY, JSON.stringify(outbox.map((o) => ({ ...o, owner: me() }))));
}

function compose(content) {
  outbox.push({ cmid: uuid(), room_id: open, content, state: 'queued', error: null });
  saveOutbox();
  renderTimeline({ bottom: true });
  pump();
}

function renderOutbox() {
  if (open) renderTimeline({});
}

// Sends the oldest queued message, waits for its reply, then the next: the order of composing is
// the order of storing. A `rate_limited` refusal waits the time the server names and sends the same
// message again (same client_msg_id); a lost connection puts it back in the queue for the next
// `ready`. A send with no reply at all is shown failed; its retry cannot store it twice.
async function pump() {
  if (pumping) return;
  pumping = true;
  try {
    for (;;) {
      const o = outbox.find((x) => x.state === 'queued');
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
        if (!outbox.includes(o)) continue;
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

function retry(cmid) {
  const o = outbox.find((x) => x.cmid === cmid);
  if (!o) return;
  o.state = 'queued';
  o.error = null;
  // Behind whatever is queued now; the same client_msg_id means a send the server already stored
  // comes back as that message, never as a second one.
  outbox = outbox.filter((x) => x !== o).concat(o);
  saveOutbox();
  renderOutbox();
  pump();
}

function discard(cmid) {
  removeFromOutbox(cmid);
  renderOutbox();
}

function removeFromOutbox(cmid) {
  outbox = outbox.filter((x) => x.cmid !== cmid);
  saveOutbox();
}

// ---------------------------------------------------------------------------------------------
// Server events
// ---------------------------------------------------------------------------------------------
function onReady(d) {
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
  if (open) loadMembers();
  renderOutbox();
}

async function sync(list) {
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

function onFrame(f) {
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
      if (d.room_id === open) { oldest = null; renderTimeline({}); announce('The history was cleared.'); }
      return;
    }
    case 'typing': return onTyping(d);
    case 'presence':
      online.set(d.user_id, d.online);
      if (open) renderMembers();
      return;
    case 'receipt': return onReceipt(d);
    case 'member_joined':
      if (d.user_id === me() && !rooms.has(d.room_id)) loadRooms();
      if (d.room_id === open) loadMembers();
      return;
    case 'member_left':
      if (d.user_id === me()) {
        const r = rooms.get(d.room_id);
        if (r && d.reason !== 'left') notice(`You were ${d.reason} from ${roomName(r)}.`);
        forgetRoom(d.room_id);
        renderRooms();
        loadPublic();
      } else if (d.room_id === open) loadMembers();
      return;
    case 'member_updated':
      if (d.room_id === open) loadMembers();
      return;
    case 'room_updated': {
      const r = rooms.get(d.id);
      if (r) { Object.assign(r, d); renderRooms(); if (d.id === open) renderHead(); }
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
function onMessage(m) {
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
  if (!fresh) { if (m.room_id === open) renderTimeline({}); return; }
  if (m.seq > r.last_seq) r.last_seq = m.seq;
  if (!r.last || r.last.seq < m.seq) r.last = m;
  if (m.sender_id === me() && m.client_msg_id) removeFromOutbox(m.client_msg_id);
  clearTyper(m.room_id, m.sender_id);
  nameOf(m.sender_id).then(() => {
    if (m.room_id === open) {
      const stick = nearBottom() || m.sender_id === me();
      if (!stick && m.sender_id !== me()) unseenBelow += 1;
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
function applyMessage(m, announceIt) {
  const held = store.get(m.room_id);
  if (m.client_msg_id && m.sender_id === me()) removeFromOutbox(m.client_msg_id);
  if (!held || !held.has(m.seq)) {
    if (held && m.seq > (lastSeen.get(m.room_id) || 0)) return onMessage(m);
    if (m.room_id === open) renderTimeline({});
    return;
  }
  held.set(m.seq, m);
  if (m.room_id === open) {
    renderTimeline({});
    if (announceIt) announce(m.deleted ? 'A message was deleted.' : 'A message was edited.');
  }
}

function onTyping(d) {
  if (d.user_id === me()) return;
  if (!typers.has(d.room_id)) typers.set(d.room_id, new Map());
  typers.get(d.room_id).set(d.user_id, { name: d.username, until: Date.now() + TYPING_SHOWN_MS });
  renderTyping();
  setTimeout(renderTyping, TYPING_SHOWN_MS + 50);
}

function clearTyper(roomId, userId) {
  const t = typers.get(roomId);
  if (t && t.delete(userId)) renderTyping();
}

function renderTyping() {
  const t = typers.get(open);
  const now = Date.now();
  const who = t ? [...t.entries()].filter(([, v]) => v.until > now).map(([, v]) => v.name) : [];
  const text = !who.length ? '' : who.length === 1 ? `${who[0]} is typing…` : `${who.join(', ')} are typing…`;
  if ($('typing').textContent !== text) $('typing').textContent = text;
}

function onReceipt(d) {
  if (d.user_id === me()) {
    const r = rooms.get(d.room_id);
    if (r && d.read_seq >= (r.last_seq || 0) && r.unread_count) { r.unread_count = 0; renderRooms(); }
    return;
  }
  if (!readBy.has(d.room_id)) readBy.set(d.room_id, new Map());
  const map = readBy.get(d.room_id);
  map.set(d.user_id, Math.max(map.get(d.user_id) || 0, d.read_seq));
  if (d.room_id === open) renderTimeline({});
}

// Tells the server (and so the room's "seen by") what this reader has seen: the open room, while
// the tab is visible and the newest message is on screen.
let readTimer = null;
const readSent = new Map();
function markRead() {
  clearTimeout(readTimer);
  readTimer = setTimeout(() => {
    if (!open || !conn.ready || document.hidden || !nearBottom()) return;
    const seq = lastSeen.get(open) || 0;
    if (seq <= (readSent.get(open) || 0)) return;
    readSent.set(open, seq);
    conn.emit('ack', { room_id: open, delivered_seq: seq, read_seq: seq });
  }, 300);
}

// ---------------------------------------------------------------------------------------------
// Wiring
// ---------------------------------------------------------------------------------------------
$('host').textContent = location.host;
$('authForm').addEventListener('submit', (e) => { e.preventDefault(); authSubmit(false); });
$('registerBtn').addEventListener('click', () => { if ($('authForm').reportValidity()) authSubmit(true); });
$('signOut').addEventListener('click', () => session.signOut(false));
$('signOutAll').addEventListener('click', async () => {
  if (await ask('Sign out on every device and tab?', [], 'Sign out everywhere')) session.signOut(true).catch((e) => notice(e.message));
});
$('createRoom').addEventListener('click', createRoom);
$('refreshPublic').addEventListener('click', loadPublic);
$('dmForm').addEventListener('submit', searchPeople);
$('older').addEventListener('click', loadOlder);
$('back').addEventListener('click', () => { const id = open; closeRoom(); const b = roomButtons.get(id); if (b) b.querySelector('button').focus(); });
$('membersBtn').addEventListener('click', () => {
  const panel = $('members');
  panel.hidden = !panel.hidden;
  $('membersBtn').setAttribute('aria-expanded', String(!panel.hidden));
  if (!panel.hidden) loadMembers();
});
$('settingsBtn').addEventListener('click', roomSettings);
$('addMember').addEventListener('submit', addMember);
$('newBelow').addEventListener('click', () => { renderTimeline({ bottom: true }); markRead(); $('text').focus(); });
$('scroll').addEventListener('scroll', () => {
  if (scroller().scrollTop < 80) loadOlder();
  if (nearBottom() && unseenBelow) { unseenBelow = 0; renderNewBelow(); markRead(); }
});
$('composer').addEventListener('submit', (e) => {
  e.preventDefault();
  const text = $('text').value.trim();
  if (!text || !open) return;
  compose(text);
  $('text').value = '';
  resizeComposer();
});
let lastTyping = 0;
$('text').addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    $('composer').requestSubmit();
  }
});
$('text').addEventListener('input', () => {
  resizeComposer();
  typing();
});
// At most one `typing` per 2.1 s (the server forwards one per 2 s per socket and room); input inside
// that window is told once the window ends, if the text is still there.
let typingTimer = null;
function typing() {
  if (!open || !conn.ready || !$('text').value.trim()) return;
  const wait = lastTyping + 2100 - Date.now();
  if (wait <= 0) {
    lastTyping = Date.now();
    conn.emit('typing', { room_id: open });
  } else if (!typingTimer) {
    typingTimer = setTimeout(() => { typingTimer = null; typing(); }, wait);
  }
}
function resizeComposer() {
  const t = $('text');
  t.style.height = 'auto';
  t.style.height = Math.min(160, t.scrollHeight + 2) + 'px';
}
document.addEventListener('visibilitychange', () => { if (!document.hidden) markRead(); });
setInterval(renderTyping, 1000);

if (session.signedIn) start();
else signedOut('');
