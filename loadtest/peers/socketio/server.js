'use strict';
// Benchmark peer for Chorus: the Socket.IO v4 server a team would write today, doing per message
// the same work as a Chorus node (see README.md for the mapping):
//   connect:    verify the HS256 JWT (handshake `auth.token`, `?token=` or `Authorization: Bearer`)
//   join_rooms: one SELECT for the caller's memberships among the listed rooms, socket.join() each
//   send:       validate, one INSERT ... (CTE bumping rooms.last_seq) statement, broadcast the stored
//               message to the room through the Redis adapter (one PUBLISH), ack the sender with it.
// One process = one node. Run several behind nginx, all on the same Redis and key prefix.

const http = require('node:http');
const { Server } = require('socket.io');
const { createAdapter } = require('@socket.io/redis-adapter');
const Redis = require('ioredis');
const pg = require('pg');
const jwt = require('jsonwebtoken');
const { v7: uuidv7 } = require('uuid');

// ---------------------------------------------------------------------------------------------------
// Configuration (environment only)
// ---------------------------------------------------------------------------------------------------

const env = process.env;
const int = (name, dflt) => {
  const v = env[name] === undefined || env[name] === '' ? dflt : Number(env[name]);
  if (!Number.isInteger(v) || v < 0) fail(`${name} must be a non-negative integer`);
  return v;
};
function fail(msg) {
  console.error(`error: ${msg}`);
  process.exit(2);
}

const config = {
  host: env.PEER_HOST || '127.0.0.1',
  port: int('PORT', 9091),
  nodeId: env.PEER_NODE_ID || `peer-${process.pid}`,
  databaseUrl: env.DATABASE_URL || fail('DATABASE_URL is not set'),
  redisUrl: env.REDIS_URL || 'redis://127.0.0.1:6379/',
  jwtSecret: env.JWT_SECRET || fail('JWT_SECRET is not set'),
  // Redis channel prefix of the adapter: channels are `<prefix>#/#` and `<prefix>#/#<room>#`.
  prefix: env.PEER_PREFIX || 'chorus-peer',
  // Socket.IO's path. Default: the same URL path as Chorus, so deploy/nginx/chorus.conf.template's
  // `location /api/v1/ws` (the one that proxies upgrades) serves it unchanged.
  path: env.PEER_PATH || '/api/v1/ws',
  dbPoolSize: int('PEER_DB_POOL_SIZE', 16), // = CHORUS_DB_POOL_SIZE default
  maxMessageBytes: int('PEER_MAX_MESSAGE_BYTES', 4096), // = CHORUS_MAX_MESSAGE_BYTES default
  maxFrameBytes: int('PEER_MAX_FRAME_BYTES', 64 * 1024), // = CHORUS_MAX_FRAME_BYTES default
  pingIntervalMs: int('PEER_PING_INTERVAL_MS', 15000), // = CHORUS_WS_HEARTBEAT_S default
  pingTimeoutMs: int('PEER_PING_TIMEOUT_MS', 15000),
};
if (Buffer.byteLength(config.jwtSecret) < 16) fail('JWT_SECRET must be at least 16 bytes');

// ---------------------------------------------------------------------------------------------------
// PostgreSQL: Chorus's own schema (migrations/*/up.sql), queried with Chorus's own statements
// ---------------------------------------------------------------------------------------------------

// int8 (seq, last_seq) as a JS number instead of pg's default string; seq stays far below 2^53.
pg.types.setTypeParser(20, Number);
// timestamptz as an RFC 3339 string straight from PostgreSQL's text ("2026-11-23 10:00:00.123456+00",
// the session runs in UTC): no Date round trip, and microseconds kept, like Chorus's JSON.
pg.types.setTypeParser(1184, (s) => s.replace(' ', 'T').replace(/\+00$/, 'Z'));

const db = new pg.Pool({
  connectionString: config.databaseUrl,
  max: config.dbPoolSize,
  options: '-c TimeZone=UTC',
});
db.on('error', (e) => console.error(`[${config.nodeId}] pg pool error: ${e.message}`));

// Identical to Chorus's db::messages::insert_next: allocate the room's next seq and store the message
// in one statement (one round trip, autocommit). The UPDATE holds the room row's lock until commit,
// so senders of one room serialize and seq has no gaps; EXISTS re-checks membership at insert time.
// Named, so each pooled connection parses it once and then only binds/executes.
const INSERT_NEXT = `WITH next AS (
     UPDATE rooms SET last_seq = last_seq + 1
     WHERE id = $1 AND deleted_at IS NULL
       AND EXISTS (SELECT 1 FROM room_members WHERE room_id = $1 AND user_id = $2)
     RETURNING last_seq)
 INSERT INTO messages (id, room_id, seq, sender_id, content, client_msg_id)
 SELECT $3, $1, next.last_seq, $2, $4, $5 FROM next
 RETURNING id, room_id, seq, sender_id, content, client_msg_id, created_at, edited_at, deleted_at`;

// Chorus's db::messages::by_client_msg_id: only on the idempotent-retry path.
const BY_CLIENT_MSG_ID = `SELECT id, room_id, seq, sender_id, content, client_msg_id, created_at, edited_at, deleted_at
 FROM messages WHERE sender_id = $1 AND client_msg_id = $2 LIMIT 1`;

// Membership check for join_rooms: one query for the whole list.
const MY_ROOMS = `SELECT rm.room_id, r.last_seq FROM room_members rm
 JOIN rooms r ON r.id = rm.room_id AND r.deleted_at IS NULL
 WHERE rm.user_id = $1 AND rm.room_id = ANY($2::uuid[])`;

// Row -> Chorus's Message JSON: {id, room_id, seq, sender_id, content, client_msg_id, created_at,
// edited_at, deleted}.
const toMessage = (r) => ({
  id: r.id,
  room_id: r.room_id,
  seq: r.seq,
  sender_id: r.sender_id,
  content: r.content,
  client_msg_id: r.client_msg_id,
  created_at: r.created_at,
  edited_at: r.edited_at,
  deleted: r.deleted_at !== null,
});

// ---------------------------------------------------------------------------------------------------
// Replies: the ack payload mirrors Chorus's `reply` data, {ok, result} or {ok, error: {code, message}}
// ---------------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}
const ok = (result) => ({ ok: true, result });
const err = (e) =>
  e instanceof ApiError
    ? { ok: false, error: { code: e.code, message: e.message } }
    : { ok: false, error: { code: 'internal', message: 'Something went wrong on our side.' } };

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
// eslint-disable-next-line no-control-regex
const CONTROL_RE = /[\u0000-\u001f\u007f-\u009f]/;

// Chorus's validate::content and validate::client_msg_id.
function validateSend(data) {
  if (data === null || typeof data !== 'object') throw new ApiError('validation', 'send takes an object');
  const { room_id: roomId, content, client_msg_id: clientMsgId } = data;
  if (typeof roomId !== 'string' || !UUID_RE.test(roomId)) throw new ApiError('validation', 'room_id must be a UUID');
  if (typeof content !== 'string') throw new ApiError('validation', 'content must be a string');
  if (Buffer.byteLength(content) > config.maxMessageBytes) {
    throw new ApiError('message.too_large', `A message may hold at most ${config.maxMessageBytes} bytes.`);
  }
  if (content.trim() === '') throw new ApiError('validation', 'content must not be empty');
  if (clientMsgId !== undefined && clientMsgId !== null) {
    if (typeof clientMsgId !== 'string' || clientMsgId.length === 0 || clientMsgId.length > 64 || CONTROL_RE.test(clientMsgId)) {
      throw new ApiError('validation', 'client_msg_id must be 1-64 printable characters');
    }
  }
  return { roomId: roomId.toLowerCase(), content, clientMsgId: clientMsgId ?? null };
}

// ---------------------------------------------------------------------------------------------------
// HTTP + Socket.IO + Redis adapter
// ---------------------------------------------------------------------------------------------------

let ready = false;
// Socket.IO handles its own path; everything else lands here (/healthz for the run script).
const httpServer = http.createServer((req, res) => {
  if (req.url === '/healthz' || req.url === '/readyz') {
    res.writeHead(ready ? 200 : 503, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ status: ready ? 'ok' : 'starting', node_id: config.nodeId }));
    return;
  }
  res.writeHead(404, { 'content-type': 'application/json' });
  res.end('{"code":"not_found","message":"No such route."}');
});

const io = new Server(httpServer, {
  path: config.path,
  // WebSocket only: no HTTP long-polling, hence no need for sticky sessions, so nginx's least_conn
  // (as in chorus.conf.template) can spread connections. Clients must use transports: ['websocket'].
  transports: ['websocket'],
  serveClient: false,
  pingInterval: config.pingIntervalMs,
  pingTimeout: config.pingTimeoutMs,
  maxHttpBufferSize: config.maxFrameBytes,
  perMessageDeflate: false, // Socket.IO's default, stated: no compression, like Chorus
});

// Redis adapter: a publisher and a subscriber connection. Every io.to(room).emit() is one PUBLISH
// on `<prefix>#/#<room>#`; every node PSUBSCRIBEs `<prefix>#/#*` and drops what has no local room.
const pub = new Redis(config.redisUrl, { lazyConnect: true });
const sub = pub.duplicate();
for (const [name, c] of [['pub', pub], ['sub', sub]]) {
  c.on('error', (e) => console.error(`[${config.nodeId}] redis ${name} error: ${e.message}`));
}

// Authentication, once per connection, before the Socket.IO CONNECT is accepted. A refusal reaches
// the client as a CONNECT_ERROR packet: 44{"message":"<code>","data":{"code":"<code>"}}.
io.use((socket, next) => {
  const hs = socket.handshake;
  let token = (hs.auth && hs.auth.token) || hs.query.token;
  const authz = hs.headers.authorization;
  if (!token && typeof authz === 'string' && authz.startsWith('Bearer ')) token = authz.slice(7);
  const refuse = (code) => {
    const e = new Error(code);
    e.data = { code };
    next(e);
  };
  if (typeof token !== 'string' || token === '') return refuse('auth.unauthenticated');
  try {
    // Same rules as Chorus's TokenKeys: HS256 only, 5 s leeway, exp and sub required.
    const claims = jwt.verify(token, config.jwtSecret, { algorithms: ['HS256'], clockTolerance: 5 });
    if (typeof claims.sub !== 'string' || !UUID_RE.test(claims.sub) || typeof claims.exp !== 'number') {
      return refuse('auth.unauthenticated');
    }
    socket.data.user = { id: claims.sub.toLowerCase(), name: claims.name };
    next();
  } catch (e) {
    refuse(e instanceof jwt.TokenExpiredError ? 'auth.token_expired' : 'auth.unauthenticated');
  }
});

io.on('connection', (socket) => {
  const me = socket.data.user.id;

  // join_rooms [room_id, ...] -> ack {ok, result: {rooms: [{room_id, last_seq}]}}.
  // Membership is checked here, once, with one SELECT; the joined Socket.IO rooms are the per-socket
  // cache that `send` consults (Chorus attaches a session to all its rooms on connect instead).
  socket.on('join_rooms', async (rooms, ack) => {
    if (typeof ack !== 'function') ack = () => {};
    try {
      if (!Array.isArray(rooms) || rooms.length > 1000 || !rooms.every((r) => typeof r === 'string' && UUID_RE.test(r))) {
        throw new ApiError('validation', 'join_rooms takes an array of at most 1000 room ids');
      }
      const { rows } = await db.query({ name: 'my_rooms', text: MY_ROOMS, values: [me, rooms] });
      socket.join(rows.map((r) => r.room_id));
      ack(ok({ rooms: rows }));
    } catch (e) {
      if (!(e instanceof ApiError)) console.error(`[${config.nodeId}] join_rooms: ${e.stack || e}`);
      ack(err(e));
    }
  });

  // send {room_id, content, client_msg_id?} -> ack {ok, result: message}; the room gets
  // 'message' <message> on every node (the sender's own sockets included, as with Chorus).
  socket.on('send', async (data, ack) => {
    if (typeof ack !== 'function') ack = () => {};
    try {
      const m = validateSend(data);
      // Cached membership: a room this socket has not joined is refused without a database trip.
      if (!socket.rooms.has(m.roomId)) throw new ApiError('room.not_found', 'No such room, or you are not a member.');
      let row;
      try {
        const res = await db.query({
          name: 'insert_next',
          text: INSERT_NEXT,
          values: [m.roomId, me, uuidv7(), m.content, m.clientMsgId],
        });
        row = res.rows[0];
      } catch (e) {
        // Idempotent retry: the same (sender, client_msg_id) answers the stored message, stores and
        // broadcasts nothing (Chorus's messages::send does the same).
        if (e.code === '23505' && e.constraint === 'messages_idempotency_unique') {
          const found = await db.query({ name: 'by_client_msg_id', text: BY_CLIENT_MSG_ID, values: [me, m.clientMsgId] });
          const stored = found.rows[0];
          if (!stored) throw e;
          if (stored.room_id !== m.roomId) {
            throw new ApiError('validation', 'client_msg_id was already used for a message in another room');
          }
          return ack(ok(toMessage(stored)));
        }
        throw e;
      }
      // No row: the room is gone or the sender was removed since join_rooms.
      if (!row) throw new ApiError('room.not_found', 'No such room, or you are not a member.');
      const msg = toMessage(row);
      // Persist, then publish, then acknowledge (Chorus's order).
      io.to(m.roomId).emit('message', msg);
      ack(ok(msg));
    } catch (e) {
      if (!(e instanceof ApiError)) console.error(`[${config.nodeId}] send: ${e.stack || e}`);
      ack(err(e));
    }
  });
});

// ---------------------------------------------------------------------------------------------------
// Start and stop
// ---------------------------------------------------------------------------------------------------

async function main() {
  await Promise.all([pub.connect(), sub.connect()]);
  io.adapter(createAdapter(pub, sub, { key: config.prefix }));
  await db.query('SELECT 1 FROM rooms LIMIT 1'); // fail fast without Chorus's schema
  await new Promise((resolve, reject) => {
    httpServer.once('error', reject);
    httpServer.listen(config.port, config.host, resolve);
  });
  ready = true;
  console.error(
    `[${config.nodeId}] listening on ${config.host}:${config.port} path ${config.path}/ (redis prefix ${config.prefix})`,
  );
}

let stopping = false;
async function shutdown(signal) {
  if (stopping) return;
  stopping = true;
  ready = false;
  console.error(`[${config.nodeId}] ${signal}: closing`);
  const force = setTimeout(() => process.exit(1), 5000);
  force.unref();
  try {
    await new Promise((resolve) => io.close(() => resolve())); // closes every socket and the HTTP server
    await Promise.allSettled([db.end(), pub.quit(), sub.quit()]);
  } finally {
    process.exit(0);
  }
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));

main().catch((e) => {
  console.error(`[${config.nodeId}] start-up failed: ${e.stack || e}`);
  process.exit(1);
});
