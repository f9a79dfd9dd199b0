// The Chorus chat client's entry point: signing in and out, the connection's state on screen, and
// the page's controls wired to the other modules (state.js holds what they share). Protocol rules
// the client follows are in docs/PROTOCOL.md (§10: reconnect and resync).

import { $, ask } from './dom.js';
import { conn, elements, handlers, lastSeen, me, names, notice, online, readBy, rooms, session, store, typers, view } from './state.js';
import { closeRoom, createRoom, loadPublic, loadRooms, openRoom, roomButtons, searchPeople } from './rooms.js';
import { addMember, loadMembers, roomSettings } from './members.js';
import { loadOlder, markRead, nearBottom, renderNewBelow, renderTimeline, renderTyping, scroller } from './timeline.js';
import { OUTBOX_KEY, compose, renderOutbox } from './outbox.js';
import { onFrame, onReady } from './events.js';

Object.assign(handlers, { frame: onFrame, ready: onReady, state: showConnection, closed: onClosed });
session.onTokens = (token) => { conn.request('auth', { token }).catch(() => {}); };
session.onEnded = (message) => signedOut(message);

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
  view.outbox = [];
  view.open = null;
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
  view.outbox = JSON.parse(sessionStorage.getItem(OUTBOX_KEY) || '[]').filter((o) => o.owner === me());
  view.outbox.forEach((o) => { if (o.state === 'sending') o.state = 'queued'; });
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

$('host').textContent = location.host;
$('authForm').addEventListener('submit', (e) => { e.preventDefault(); authSubmit(false); });
$('registerBtn').addEventListener('click', () => { if ($('authForm').reportValidity()) authSubmit(true); });
$('signOut').addEventListener('click', () => session.signOut(false));
$('signOutAll').addEventListener('click', async () => {
  if (!(await ask('Sign out on every device and tab?', [], 'Sign out everywhere'))) return;
  // This tab's socket is closed by the server too (4001): stop it first, so this tab is not told
  // it was signed out from elsewhere.
  conn.stop();
  session.signOut(true).catch((e) => notice(e.message));
});
$('createRoom').addEventListener('click', createRoom);
$('refreshPublic').addEventListener('click', loadPublic);
$('dmForm').addEventListener('submit', searchPeople);
$('older').addEventListener('click', loadOlder);
$('back').addEventListener('click', () => { const id = view.open; closeRoom(); const b = roomButtons.get(id); if (b) b.querySelector('button').focus(); });
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
  if (nearBottom() && view.unseenBelow) { view.unseenBelow = 0; renderNewBelow(); markRead(); }
});
$('composer').addEventListener('submit', (e) => {
  e.preventDefault();
  const text = $('text').value.trim();
  if (!text || !view.open) return;
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
  if (!view.open || !conn.ready || !$('text').value.trim()) return;
  const wait = lastTyping + 2100 - Date.now();
  if (wait <= 0) {
    lastTyping = Date.now();
    conn.emit('typing', { room_id: view.open });
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
