// The open room's members panel (presence in words, roles) and what owners and admins can do.

import { $, h, ask } from './dom.js';
import { api, me, names, notice, online, rooms, view } from './state.js';
import { forgetRoom, loadPublic, renderHead, renderRooms, roomName, userIds } from './rooms.js';
import { renderTimeline } from './timeline.js';

export async function loadMembers() {
  const id = view.open;
  try {
    const page = await api('GET', `/rooms/${id}/members?limit=200`);
    if (view.open !== id) return;
    view.members = page.items;
    for (const m of view.members) {
      names.set(m.user_id, m.username);
      online.set(m.user_id, m.online);
    }
    renderMembers();
    renderTimeline({});
  } catch (_) { /* the panel stays as it was */ }
}

export function myRole() {
  const m = view.members.find((x) => x.user_id === me());
  return m ? m.role : 'member';
}

export function renderMembers() {
  const role = myRole();
  const r = rooms.get(view.open);
  const group = r && r.kind !== 'direct';
  const manage = group && (role === 'owner' || role === 'admin');
  $('memberList').replaceChildren(...view.members.map((m) => {
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

export async function act(what, fn) {
  try {
    await fn();
    loadMembers();
  } catch (e) {
    notice(`${what} failed: ${e.message}`);
  }
}
export const setRole = (m, role) => act('Changing the role', () => api('PATCH', `/rooms/${view.open}/members/${m.user_id}`, { role }));
export const transfer = async (m) => {
  const v = await ask(`Make ${m.username} the owner? You become an admin.`, [], 'Make owner');
  if (v) act('Transferring ownership', () => api('POST', `/rooms/${view.open}/owner`, { user_id: m.user_id }));
};
export const removeMember = (m) => act('Removing', () => api('DELETE', `/rooms/${view.open}/members/${m.user_id}`));
export const ban = async (m) => {
  const v = await ask(`Ban ${m.username}? They are removed and cannot rejoin.`, [{ name: 'reason', label: 'Reason (optional)' }], 'Ban');
  if (v) act('Banning', () => api('POST', `/rooms/${view.open}/bans`, v.reason ? { user_id: m.user_id, reason: v.reason } : { user_id: m.user_id }));
};

export async function addMember(e) {
  e.preventDefault();
  const name = $('addMemberName').value.trim();
  if (!name) return;
  await act('Adding', async () => {
    const ids = await userIds(name);
    await api('POST', `/rooms/${view.open}/members`, { user_ids: ids });
    $('addMemberName').value = '';
  });
}

export async function roomSettings() {
  const r = rooms.get(view.open);
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
