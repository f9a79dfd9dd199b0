// Rooms: the joined list with unread badges and last messages, public rooms to join, new rooms,
// direct conversations, and opening or closing a room.

import { $, h, reconcile, ask } from './dom.js';
import { api, elements, lastSeen, me, names, notice, online, rooms, store, view } from './state.js';
import { loadMembers } from './members.js';
import { markRead, nameOf, namesFor, renderTimeline, roomStore } from './timeline.js';

export async function loadRooms() {
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
    if (r.id === view.open) r.unread_count = 0;
    rooms.set(r.id, Object.assign(old || {}, r));
    if (!lastSeen.has(r.id)) lastSeen.set(r.id, r.last_seq);
    if (!old) loadLast(r.id);
  }
  for (const id of [...rooms.keys()]) if (!seen.has(id)) forgetRoom(id);
  renderRooms();
  renderPublic();
}

// The newest message, for the room list's preview.
export async function loadLast(id) {
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

export function forgetRoom(id) {
  rooms.delete(id);
  lastSeen.delete(id);
  store.delete(id);
  if (view.open === id) closeRoom();
}

export async function loadPublic() {
  try {
    view.publicRooms = (await api('GET', '/rooms?scope=public&limit=100')).items;
    renderPublic();
  } catch (e) {
    notice('Could not load public rooms: ' + e.message);
  }
}

export function roomName(r) {
  if (r.kind === 'direct') return r.peer ? '@ ' + r.peer : '@ …';
  return '# ' + r.name;
}

export async function peerName(r) {
  if (r.peer) return;
  try {
    const page = await api('GET', `/rooms/${r.id}/members?limit=10`);
    const other = page.items.find((m) => m.user_id !== me()) || page.items[0];
    if (other) {
      r.peer = other.username;
      r.peerId = other.user_id;
      online.set(other.user_id, other.online);
      renderRooms();
      if (r.id === view.open) renderHead();
    }
  } catch (_) { /* shown as "@ …" */ }
}

export const roomButtons = new Map();
export function renderRooms() {
  const list = [...rooms.values()].sort((a, b) => ((b.last && b.last.created_at) || b.created_at).localeCompare((a.last && a.last.created_at) || a.created_at));
  const items = list.map((r) => {
    const unread = r.id === view.open ? 0 : r.unread_count || 0;
    const last = r.last ? (r.last.deleted ? 'message deleted' : `${names.get(r.last.sender_id) || '…'}: ${r.last.content}`) : 'No messages yet';
    const label = `${roomName(r)}${r.visibility === 'private' && r.kind !== 'direct' ? ' (private)' : ''}${r.protected ? ' (password)' : ''}`;
    let li = roomButtons.get(r.id);
    const button = h('button', { type: 'button', class: 'room-item', 'aria-current': r.id === view.open ? 'true' : 'false',
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

export function renderTitle() {
  let unread = 0;
  for (const r of rooms.values()) if (r.id !== view.open) unread += r.unread_count || 0;
  document.title = unread > 0 ? `(${unread}) Chorus` : 'Chorus';
}

export function renderPublic() {
  const list = view.publicRooms.filter((r) => !rooms.has(r.id));
  const items = list.map((r) => h('li', { class: 'pub-item' },
    h('span', { class: 'name' }, '# ' + r.name, r.protected ? ' (password)' : ''),
    h('span', { class: 'muted small', 'aria-label': `${r.member_count} members` }, `${r.member_count}`),
    h('button', { type: 'button', 'aria-label': `Join ${r.name}`, onclick: () => joinRoom(r) }, 'Join')));
  if (!items.length) items.push(h('li', { class: 'muted small' }, 'Nothing new to join.'));
  $('public').replaceChildren(...items);
}

export async function joinRoom(r) {
  const body = {};
  if (r.protected) {
    const v = await ask(`Password for # ${r.name}`, [{ name: 'password', label: 'Password', type: 'password', required: true }], 'Join');
    if (!v) return;
    body.password = v.password;
  }
  holdComposer();
  try {
    const room = await api('POST', `/rooms/${r.id}/join`, body);
    addRoom(room);
    openRoom(room.id, true);
  } catch (e) {
    releaseComposer();
    notice(`Could not join # ${r.name}: ${e.message}`);
  }
}

export function addRoom(room) {
  rooms.set(room.id, Object.assign(rooms.get(room.id) || {}, room));
  if (!lastSeen.has(room.id)) lastSeen.set(room.id, room.last_seq);
  renderRooms();
  renderPublic();
}

export async function createRoom() {
  const v = await ask('New room', [
    { name: 'name', label: 'Name', required: true },
    { name: 'visibility', label: 'Who can find it', value: 'public',
      options: [['public', 'Public: anyone can find and join'], ['private', 'Private: members you add']] },
    { name: 'password', label: 'Password to join (optional, public rooms)', type: 'password' },
    { name: 'members', label: 'Add people (usernames, comma-separated)' },
  ], 'Create');
  if (!v) return;
  holdComposer();
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
    releaseComposer();
    notice('Could not create the room: ' + e.message);
  }
}

// Usernames (comma-separated) to user ids; an unknown name is an error.
export async function userIds(text) {
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

export async function searchPeople(e) {
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

// Another room is about to open: what is typed meanwhile must not go to the room still on screen.
function holdComposer() {
  $('text').disabled = $('sendBtn').disabled = true;
}

function releaseComposer() {
  if (view.open) $('text').disabled = $('sendBtn').disabled = false;
}

export async function direct(u) {
  holdComposer();
  try {
    const room = await api('POST', '/direct', { user_id: u.id });
    room.peer = u.username;
    room.peerId = u.id;
    addRoom(room);
    $('dmResults').replaceChildren();
    $('dmQuery').value = '';
    openRoom(room.id, true);
  } catch (e) {
    releaseComposer();
    notice('Could not open the conversation: ' + e.message);
  }
}

// ---------------------------------------------------------------------------------------------
// The open room
// ---------------------------------------------------------------------------------------------
export function closeRoom() {
  view.open = null;
  view.members = [];
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

export async function openRoom(id, focus) {
  const r = rooms.get(id);
  if (!r) return;
  closeRoom();
  view.open = id;
  sessionStorage.setItem('chorus.open', id);
  r.unread_count = 0;
  view.unseenBelow = 0;
  $('panes').dataset.view = 'room';
  $('text').disabled = $('sendBtn').disabled = $('membersBtn').disabled = $('settingsBtn').disabled = false;
  renderHead();
  renderRooms();
  if (focus) $('text').focus();
  loadMembers();
  try {
    const page = await api('GET', `/rooms/${id}/messages?limit=50`);
    if (view.open !== id) return;
    const held = roomStore(id);
    for (const m of page.items) held.set(m.seq, m);
    const newest = page.items.length ? page.items[page.items.length - 1].seq : 0;
    if (newest > (lastSeen.get(id) || 0)) lastSeen.set(id, newest);
    view.oldest = page.has_more && page.items.length ? page.items[0].seq : null;
    if (page.items.length && page.items[0].seq <= 1) view.oldest = null;
    await namesFor(page.items);
    renderTimeline({ bottom: true });
    markRead();
  } catch (e) {
    notice('Could not load the history: ' + e.message);
  }
}

export function renderHead() {
  const r = rooms.get(view.open);
  if (!r) return;
  $('roomTitle').textContent = roomName(r);
}
