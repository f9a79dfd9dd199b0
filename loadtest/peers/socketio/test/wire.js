'use strict';
// Speaks Engine.IO v4 / Socket.IO v5-protocol (the Socket.IO v4 server's) framing by hand over a plain
// WebSocket, as a non-Node load generator would, and logs every raw frame (">>" sent, "<<" received).
//   JWT_SECRET=... ROOM=... USER_A=... USER_B=... node test/wire.js WS_BASE_1 WS_BASE_2
// WS_BASE is e.g. ws://127.0.0.1:9091 (the path /api/v1/ws/?EIO=4&transport=websocket is appended).
const WebSocket = require('ws');
const jwt = require('jsonwebtoken');
const assert = require('node:assert/strict');

const [base1, base2] = process.argv.slice(2);
const { JWT_SECRET, ROOM, USER_A, USER_B } = process.env;
const path = process.env.PEER_PATH || '/api/v1/ws';
const token = (sub, name) => jwt.sign({ sub, name, exp: Math.floor(Date.now() / 1000) + 300 }, JWT_SECRET);

// A raw client: every WebSocket text frame is exactly one Engine.IO packet.
function open(label, url) {
  const ws = new WebSocket(url);
  const inbox = [];
  let waiter = null;
  ws.on('message', (data, isBinary) => {
    const f = data.toString();
    console.log(`${label} << ${isBinary ? '(binary) ' : ''}${f}`);
    if (f === '2') { // Engine.IO ping from the server: answer pong at once
      console.log(`${label} >> 3`);
      ws.send('3');
    }
    inbox.push(f);
    if (waiter) waiter();
  });
  const send = (f) => { console.log(`${label} >> ${f}`); ws.send(f); };
  // Next received frame matching pred (frames before it that do not match stay in the inbox).
  const next = (pred, ms = 5000) => new Promise((resolve, reject) => {
    const t = setTimeout(() => { waiter = null; reject(new Error(`${label}: timed out`)); }, ms);
    const check = () => {
      const i = inbox.findIndex(pred);
      if (i >= 0) { clearTimeout(t); waiter = null; resolve(inbox.splice(i, 1)[0]); }
    };
    waiter = check;
    check();
  });
  return new Promise((resolve, reject) => {
    ws.once('open', () => resolve({ ws, send, next, inbox }));
    ws.once('error', reject);
  });
}
const json = (f, prefixLen) => JSON.parse(f.slice(prefixLen));

(async () => {
  const eio = `${path}/?EIO=4&transport=websocket`;
  // A: token in the Socket.IO CONNECT packet (handshake auth).
  console.log(`A connects to ${base1}${eio}`);
  const a = await open('A', `${base1}${eio}`);
  const openA = await a.next((f) => f[0] === '0');
  const hs = json(openA, 1);
  assert.deepEqual(Object.keys(hs).sort(), ['maxPayload', 'pingInterval', 'pingTimeout', 'sid', 'upgrades']);
  assert.deepEqual(hs.upgrades, []);
  a.send(`40${JSON.stringify({ token: token(USER_A, 'alice') })}`);
  const conA = await a.next((f) => f.startsWith('40') || f.startsWith('44'));
  assert.match(conA, /^40\{"sid":"[^"]+"\}$/);

  // B: token in the URL (?token=), so CONNECT carries no payload.
  const url2 = `${base2}${eio}&token=${token(USER_B, 'bob')}`;
  console.log(`B connects to ${base2}${eio}&token=<jwt>`);
  const b = await open('B', url2);
  await b.next((f) => f[0] === '0');
  b.send('40');
  assert.match(await b.next((f) => f.startsWith('40') || f.startsWith('44')), /^40\{"sid":"[^"]+"\}$/);

  // join_rooms with ack id 0 on both.
  for (const c of [a, b]) {
    c.send(`420${JSON.stringify(['join_rooms', [ROOM]])}`);
    const ack = await c.next((f) => f.startsWith('430'));
    const [res] = json(ack, 3);
    assert.equal(res.ok, true);
    assert.equal(res.result.rooms[0].room_id, ROOM);
  }

  // Three sends from A with ack ids 1..3 (ids are the client's choice; any non-negative integer).
  let lastSeq = null;
  for (let id = 1; id <= 3; id++) {
    a.send(`42${id}${JSON.stringify(['send', { room_id: ROOM, content: `raw ${id}`, client_msg_id: `wire-${process.pid}-${id}` }])}`);
    const ack = await a.next((f) => f.startsWith(`43${id}[`));
    const [res] = json(ack, 2 + String(id).length);
    assert.equal(res.ok, true);
    if (lastSeq !== null) assert.equal(res.result.seq, lastSeq + 1);
    lastSeq = res.result.seq;
    // B (other node) and A itself get the broadcast as an EVENT without ack id.
    for (const c of [b, a]) {
      const ev = await c.next((f) => f.startsWith('42["message",'));
      const [name, msg] = json(ev, 2);
      assert.equal(name, 'message');
      assert.deepEqual(msg, res.result);
    }
  }

  // An event without ack id gets no ACK frame (but is still processed).
  a.send(`42${JSON.stringify(['send', { room_id: ROOM, content: 'no ack wanted' }])}`);
  await b.next((f) => f.startsWith('42["message",'));

  // A refused CONNECT.
  const z = await open('Z', `${base1}${eio}`);
  await z.next((f) => f[0] === '0');
  z.send('40{"token":"not-a-jwt"}');
  assert.equal(await z.next((f) => f.startsWith('44')), '44{"message":"auth.unauthenticated","data":{"code":"auth.unauthenticated"}}');
  z.ws.close();

  // Heartbeat: the server pings ("2") every pingInterval; the client must answer "3" (done in open()).
  console.log(`waiting up to ${hs.pingInterval + 2000} ms for the server's ping...`);
  await a.next((f) => f === '2', hs.pingInterval + 2000);

  // Clean Socket.IO disconnect, then close the WebSocket.
  a.send('41');
  b.send('41');
  a.ws.close();
  b.ws.close();
  console.log('WIRE OK');
})().catch((e) => { console.error('WIRE FAILED:', e); process.exit(1); });
