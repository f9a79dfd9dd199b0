'use strict';
// Senders on two nodes race in one room: acked seqs must be gap-free and unique, every receiver must get
// every message once. Reports (does not fail on) out-of-order arrival: the peer, like a typical
// Socket.IO app, publishes after commit with no reordering, so cross-node order is not guaranteed.
//   JWT_SECRET=... ROOM=... USER_A=... USER_B=... node test/race.js NODE1_URL NODE2_URL [N_PER_SENDER]
const { io } = require('socket.io-client');
const jwt = require('jsonwebtoken');
const assert = require('node:assert/strict');

const [node1, node2, nArg] = process.argv.slice(2);
const N = Number(nArg || 200);
const { JWT_SECRET, ROOM, USER_A, USER_B } = process.env;
const path = process.env.PEER_PATH || '/api/v1/ws';
const token = (sub) => jwt.sign({ sub, name: 'x', exp: Math.floor(Date.now() / 1000) + 300 }, JWT_SECRET);
const connect = (url, sub) => new Promise((resolve, reject) => {
  const s = io(url, { path, transports: ['websocket'], reconnection: false, auth: { token: token(sub) } });
  s.once('connect', () => resolve(s));
  s.once('connect_error', reject);
});

(async () => {
  const a = await connect(node1, USER_A);
  const b = await connect(node2, USER_B);
  const got = new Map([[a, []], [b, []]]);
  let base;
  for (const s of [a, b]) {
    s.on('message', (m) => got.get(s).push(m.seq));
    const r = await s.emitWithAck('join_rooms', [ROOM]);
    base = r.result.rooms[0].last_seq;
  }
  const t0 = Date.now();
  const sends = [];
  for (let i = 0; i < N; i++) {
    for (const s of [a, b]) sends.push(s.timeout(10000).emitWithAck('send', { room_id: ROOM, content: `race ${i}` }));
  }
  const acks = await Promise.all(sends);
  const ms = Date.now() - t0;
  assert.ok(acks.every((r) => r.ok));
  const seqs = acks.map((r) => r.result.seq).sort((x, y) => x - y);
  assert.deepEqual(seqs, Array.from({ length: 2 * N }, (_, i) => base + 1 + i), 'gap-free, unique seqs');
  await new Promise((r) => setTimeout(r, 500));
  for (const [s, list] of got) {
    assert.deepEqual([...list].sort((x, y) => x - y), seqs, 'every message delivered exactly once');
    let inversions = 0;
    for (let i = 1; i < list.length; i++) if (list[i] < list[i - 1]) inversions++;
    console.log(`${s === a ? 'A (node 1)' : 'B (node 2)'}: ${list.length} delivered, ${inversions} out-of-order arrivals`);
  }
  console.log(`${2 * N} racing sends acked in ${ms} ms; seqs ${seqs[0]}..${seqs[seqs.length - 1]} gap-free`);
  a.close();
  b.close();
  console.log('RACE OK');
})().catch((e) => { console.error('RACE FAILED:', e); process.exit(1); });
