'use strict';
// Smoke test of a running peer cluster with the official Socket.IO client (WebSocket transport only).
//   JWT_SECRET=... node test/smoke.js NODE1_URL NODE2_URL [LB_URL]
// Env ROOM, USER_A, USER_B (members) and USER_C (not a member) name rows that already exist.
// Client A on node 1 sends 3 messages; client B on node 2 (and C through the LB, if given) must get
// each broadcast; acks must carry consecutive seqs; a retry with the same client_msg_id must return
// the stored message and broadcast nothing; bad/expired tokens and non-members are refused.
const { io } = require('socket.io-client');
const jwt = require('jsonwebtoken');
const assert = require('node:assert/strict');

const [node1, node2, lb] = process.argv.slice(2);
const { JWT_SECRET, ROOM, USER_A, USER_B, USER_C } = process.env;
const path = process.env.PEER_PATH || '/api/v1/ws';
const token = (sub, name, ttl = 300) => jwt.sign({ sub, name, exp: Math.floor(Date.now() / 1000) + ttl }, JWT_SECRET);

function connect(url, tok, how = 'auth') {
  const opts = { path, transports: ['websocket'], reconnection: false, timeout: 5000 };
  if (how === 'auth') opts.auth = { token: tok };
  else opts.query = { token: tok };
  const s = io(url, opts);
  return new Promise((resolve, reject) => {
    s.once('connect', () => resolve(s));
    s.once('connect_error', (e) => { s.close(); reject(e); });
  });
}
const call = (s, ev, arg) => s.timeout(5000).emitWithAck(ev, arg);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

(async () => {
  const a = await connect(node1, token(USER_A, 'alice'), 'auth');
  const b = await connect(node2, token(USER_B, 'bob'), 'query');
  const c = lb ? await connect(lb, token(USER_B, 'bob')) : null;
  const got = { a: [], b: [], c: [] };
  a.on('message', (m) => got.a.push(m));
  b.on('message', (m) => got.b.push(m));
  if (c) c.on('message', (m) => got.c.push(m));

  const ja = await call(a, 'join_rooms', [ROOM]);
  const jb = await call(b, 'join_rooms', [ROOM]);
  if (c) await call(c, 'join_rooms', [ROOM]);
  console.log('join_rooms ack (A):', JSON.stringify(ja));
  assert.equal(ja.ok, true);
  assert.equal(jb.result.rooms.length, 1);
  const base = ja.result.rooms[0].last_seq;

  const acks = [];
  for (let i = 1; i <= 3; i++) {
    const r = await call(a, 'send', { room_id: ROOM, content: `hello ${i}`, client_msg_id: `smoke-${process.pid}-${i}` });
    assert.equal(r.ok, true, JSON.stringify(r));
    acks.push(r.result);
    console.log(`ack ${i}: seq=${r.result.seq}`, JSON.stringify(r));
  }
  assert.deepEqual(acks.map((m) => m.seq), [base + 1, base + 2, base + 3]);

  // Idempotent retry: same client_msg_id -> same stored message, no new broadcast.
  const retry = await call(a, 'send', { room_id: ROOM, content: 'hello 2 again', client_msg_id: `smoke-${process.pid}-2` });
  assert.equal(retry.result.id, acks[1].id);
  assert.equal(retry.result.seq, acks[1].seq);
  console.log('retry ack:', JSON.stringify(retry));

  await sleep(300);
  for (const [who, list] of Object.entries(got)) {
    if (who === 'c' && !c) continue;
    assert.deepEqual(list.map((m) => m.seq), acks.map((m) => m.seq), `${who} broadcasts`);
    assert.deepEqual(list, acks, `${who} gets exactly the stored messages`);
  }
  console.log(`B on node 2 received seqs ${got.b.map((m) => m.seq).join(',')}; A (sender) ${got.a.map((m) => m.seq).join(',')}${c ? `; C via nginx ${got.c.map((m) => m.seq).join(',')}` : ''}`);

  // Refusals.
  const nonMember = await connect(node1, token(USER_C, 'carol'));
  const jc = await call(nonMember, 'join_rooms', [ROOM]);
  assert.deepEqual(jc.result.rooms, []);
  const sc = await call(nonMember, 'send', { room_id: ROOM, content: 'let me in' });
  assert.equal(sc.error.code, 'room.not_found');
  const bad = await call(a, 'send', { room_id: ROOM, content: '   ' });
  assert.equal(bad.error.code, 'validation');
  const big = await call(a, 'send', { room_id: ROOM, content: 'x'.repeat(5000) });
  assert.equal(big.error.code, 'message.too_large');
  for (const [tok, code] of [['garbage', 'auth.unauthenticated'], [token(USER_A, 'alice', -60), 'auth.token_expired'],
    [jwt.sign({ sub: USER_A, name: 'alice', exp: Math.floor(Date.now() / 1000) + 60 }, 'another-secret-0123456789'), 'auth.unauthenticated']]) {
    await assert.rejects(connect(node1, tok), (e) => e.message === code && e.data.code === code);
  }
  console.log('refusals: non-member join -> [], send -> room.not_found; blank -> validation; 5000 B -> message.too_large; bad/expired/wrong-key token -> connect_error');
  for (const s of [a, b, c, nonMember]) if (s) s.close();
  console.log('SMOKE OK');
})().catch((e) => { console.error('SMOKE FAILED:', e); process.exit(1); });
