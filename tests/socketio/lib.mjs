// Helpers for the Socket.IO tests: the cluster under test, accounts and rooms over REST, and
// socket.io-client sessions whose every event and acknowledgement is recorded.
//
// The cluster comes from the environment (script/test's socketio phase sets all of it; the
// defaults are `script/server`'s with CHORUS_NODES=2):
//   CHORUS_SIO_LB           nginx in front of the nodes   (http://127.0.0.1:8080)
//   CHORUS_SIO_NODES        the nodes, comma-separated    (http://127.0.0.1:8081,http://127.0.0.1:8082)
//   CHORUS_SIO_CLUSTER_DIR  script/server's directory: jwt_secret and the pids file (.local/cluster)
//   CHORUS_WS_HEARTBEAT_S, CHORUS_MAX_FRAME_BYTES, CHORUS_MAX_SOCKETS_PER_USER: what the nodes
//                           were started with (defaults: the nodes' own)
// The nodes must allow the tests' pace: script/test raises the per-user send budget, the frame
// rate and the login rate (socketio_check there has the whole list). `npm test` runs
// client.test.mjs, then failover.test.mjs, which kills one node and drains the other.

import assert from "node:assert/strict";
import { createHmac, randomBytes, randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { io } from "socket.io-client";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");

export const LB = process.env.CHORUS_SIO_LB ?? "http://127.0.0.1:8080";
export const NODES = (process.env.CHORUS_SIO_NODES ?? "http://127.0.0.1:8081,http://127.0.0.1:8082")
  .split(",")
  .map((s) => s.trim())
  .filter(Boolean);
export const CLUSTER_DIR = process.env.CHORUS_SIO_CLUSTER_DIR ?? join(ROOT, ".local", "cluster");
export const HEARTBEAT_S = Number(process.env.CHORUS_WS_HEARTBEAT_S ?? 15);
export const MAX_FRAME_BYTES = Number(process.env.CHORUS_MAX_FRAME_BYTES ?? 65536);
export const MAX_SOCKETS_PER_USER = Number(process.env.CHORUS_MAX_SOCKETS_PER_USER ?? 16);

/** How long any one awaited thing may take before the test fails (generous: CI machines are slow). */
export const TIMEOUT_MS = 15_000;
/** A whole test's budget (`node --test` runs each test under it). */
export const TEST_TIMEOUT_MS = 90_000;
const WIRE_KEEP = 50;

// ---- small things ---------------------------------------------------------------------------------

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** `promise`, or a rejection naming `what` after `ms`. */
export function within(promise, what, ms = TIMEOUT_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Polls `check` (sync or async) until it returns something truthy. */
export async function until(check, what, ms = TIMEOUT_MS) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(20);
  }
}

export const uniq = (prefix) => `${prefix}-${randomBytes(5).toString("hex")}`;

// ---- REST -----------------------------------------------------------------------------------------

export async function api(method, path, body, token, base = LB) {
  const res = await fetch(`${base}/api/v1${path}`, {
    method,
    headers: {
      ...(body !== undefined ? { "content-type": "application/json" } : {}),
      ...(token ? { authorization: `Bearer ${token}` } : {}),
    },
    body: body !== undefined ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = text;
  }
  if (!res.ok) {
    throw Object.assign(new Error(`${method} ${path}: ${res.status} ${text}`), { status: res.status, body: json });
  }
  return json;
}

const PASSWORD = "socket.io test password";

/** A fresh account, logged in: `{id, username, token, refresh, claims}`. */
export async function newUser(prefix = "sio") {
  const username = uniq(prefix).slice(0, 32);
  const user = await api("POST", "/auth/register", { username, password: PASSWORD });
  const pair = await login(username);
  assert.equal(pair.user.id, user.id);
  return { id: user.id, username, token: pair.access_token, refresh: pair.refresh_token, claims: pair.claims };
}

export async function login(username) {
  const pair = await api("POST", "/auth/login", { username, password: PASSWORD });
  return { ...pair, claims: decodeJwt(pair.access_token) };
}

/** A public room owned by `owner`, with `members` in it from the start. */
export async function newRoom(owner, members = []) {
  return api("POST", "/rooms", { name: uniq("room"), visibility: "public", member_ids: members.map((m) => m.id) }, owner.token);
}

// ---- tokens ---------------------------------------------------------------------------------------

const b64url = (buf) => Buffer.from(buf).toString("base64url");

export function decodeJwt(token) {
  return JSON.parse(Buffer.from(token.split(".")[1], "base64url").toString("utf8"));
}

/**
 * An HS256 access token for `user` signed with the cluster's own secret (script/server keeps it in
 * <cluster dir>/jwt_secret): the user's real claims (generation included) with `exp` moved to
 * now + `expInS` seconds (negative: already expired).
 */
export function mintToken(user, expInS) {
  const secret = readFileSync(join(CLUSTER_DIR, "jwt_secret"), "utf8").trim();
  const now = Math.floor(Date.now() / 1000);
  const claims = { ...user.claims, iat: Math.min(now, now + expInS - 1), exp: now + expInS };
  const head = b64url(JSON.stringify({ typ: "JWT", alg: "HS256" }));
  const body = b64url(JSON.stringify(claims));
  const sig = createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

// ---- the cluster's processes ----------------------------------------------------------------------

/** The pid script/server recorded for node `nodeId` (`node-1`, ...), from <cluster dir>/pids. */
export function nodePid(nodeId) {
  const lines = readFileSync(join(CLUSTER_DIR, "pids"), "utf8").split("\n");
  for (const line of lines) {
    const [name, pid] = line.trim().split(/\s+/);
    if (name === nodeId) return Number(pid);
  }
  throw new Error(`no pid for ${nodeId} in ${join(CLUSTER_DIR, "pids")}`);
}

/** PID runs and is not a zombie (a killed node stays one where PID 1 does not reap; see lib.sh). */
export function alive(pid) {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z";
  } catch {
    return true; // no /proc: trust kill -0
  }
}

// ---- Socket.IO sessions ---------------------------------------------------------------------------

/** The node that issued an Engine.IO session id `<node>.<32 hex>`. */
export function sidNode(sid) {
  const m = /^([A-Za-z0-9-]+)\.([0-9a-f]{32})$/.exec(sid ?? "");
  assert.ok(m, `sid ${JSON.stringify(sid)} is not <node>.<32 hex>`);
  return m[1];
}

/**
 * A recording socket.io-client session. Everything the server emits lands in `events` (in order,
 * as [name, data]); every ACK packet's id is counted, so that `assertOneAckEach()` can tell a
 * second acknowledgement for the same emit (socket.io-client would silently drop it).
 */
export class Client {
  constructor(url, { token, auth, ...opts } = {}) {
    this.url = url;
    this.events = [];
    this.readies = [];
    this.closings = [];
    this.disconnects = [];
    this.connectErrors = [];
    this.acks = new Map(); // ack packet id -> how many times it came
    this.log = []; // every Socket.IO packet in arrival order: {type, id?, name?, data}
    this.opened = []; // the transport each Engine.IO session opened with
    this.upgrades = []; // the transports it upgraded to
    this.wire = []; // the last WIRE_KEEP Engine.IO payloads received, as they came (after the handshake)
    this.emitsWithAck = 0;
    this.waiters = [];
    this.socket = io(url, {
      forceNew: true,
      auth: auth !== undefined ? auth : token !== undefined ? { token } : undefined,
      reconnectionDelay: 300,
      reconnectionDelayMax: 2000,
      timeout: TIMEOUT_MS,
      ...opts,
    });
    const s = this.socket;
    // On the decoder, not the manager's "packet" event: by then socket.io-client has already
    // altered an acknowledgement's arguments (a null error first, for a timeout).
    s.io.decoder.on("decoded", (p) => {
      if (p.type === 3 || p.type === 6) this.acks.set(p.id, (this.acks.get(p.id) ?? 0) + 1);
      this.log.push(
        p.type === 2 || p.type === 5
          ? { type: "event", name: p.data?.[0], data: p.data?.[1] }
          : p.type === 3 || p.type === 6
            ? { type: "ack", id: p.id, data: p.data?.[0] }
            : { type: p.type, data: p.data },
      );
    });
    s.io.on("open", () => {
      const engine = s.io.engine;
      this.opened.push(engine.transport.name);
      this.lastSid = engine.id;
      this.tap(engine.transport);
      engine.on("close", (reason, err) => {
        // A transport error carries the failed request: its status and body.
        const why = [err?.message, err?.description?.message ?? err?.description, err?.context?.responseText]
          .filter((x) => x !== undefined && x !== null && typeof x !== "object")
          .join(" ")
          .trim();
        this.wire.push(`engine closed: ${reason}${why ? ` (${why})` : ""}`);
      });
      engine.on("upgrade", (t) => {
        this.upgrades.push(t.name);
        this.tap(t);
        this.wake();
      });
    });
    s.onAny((event, ...args) => {
      // The server's events carry exactly one argument, their data.
      this.events.push([event, args[0], args.length]);
      if (event === "ready") this.readies.push(args[0]);
      if (event === "closing") this.closings.push(args[0]);
      this.wake();
    });
    s.on("connect_error", (err) => {
      this.connectErrors.push(err);
      this.wake();
    });
    s.on("disconnect", (reason, details) => {
      this.disconnects.push({ reason, details });
      this.wake();
    });
    s.on("connect", () => this.wake());
  }

  /** Keeps what `transport` receives (a long-poll's whole answer, or one WebSocket message). */
  tap(transport) {
    const onData = transport.onData.bind(transport);
    transport.onData = (data) => {
      this.wire.push(`${transport.name} <- ${typeof data === "string" ? JSON.stringify(data) : `<${data.byteLength ?? data.length} bytes>`}`);
      if (this.wire.length > WIRE_KEEP) this.wire.shift();
      return onData(data);
    };
  }

  /** The last `n` payloads received, for failure messages. */
  wireTail(n = 6) {
    return `\n  last payloads received by ${this.describe()}, then how its transport ended:\n    ${this.wire.slice(-n).join("\n    ")}`;
  }

  wake() {
    const still = [];
    for (const w of this.waiters) {
      let v;
      try {
        v = w.check();
      } catch (e) {
        w.reject(e);
        continue;
      }
      if (v) w.resolve(v);
      else still.push(w);
    }
    this.waiters = still;
  }

  /** Resolves with `check()`'s first truthy value, re-evaluated on every event. */
  when(check, what, ms = TIMEOUT_MS) {
    const v = check();
    if (v) return Promise.resolve(v);
    return within(
      new Promise((resolve, reject) => this.waiters.push({ check, resolve, reject })),
      `${what} (on ${this.describe()})`,
      ms,
    );
  }

  describe() {
    return `client ${this.socket.io.engine?.id ?? this.lastSid ?? "(no sid)"} via ${this.url}`;
  }

  /** The n-th `ready` (1-based). */
  ready(n = 1) {
    return this.when(() => this.readies[n - 1], `ready #${n}`);
  }

  /** The events named `name` so far. */
  named(name) {
    return this.events.filter(([e]) => e === name).map(([, d]) => d);
  }

  messages(roomId) {
    return this.named("message").filter((m) => m.room_id === roomId);
  }

  /** Waits until `count` `message` events of the room have come. */
  waitMessages(roomId, count, ms = TIMEOUT_MS) {
    return this.when(() => this.messages(roomId).length >= count && this.messages(roomId), `${count} messages in ${roomId}`, ms);
  }

  /** The Engine.IO session id (the last one, once it is closed). */
  get sid() {
    return this.socket.io.engine?.id ?? this.lastSid;
  }

  get node() {
    return sidNode(this.sid);
  }

  get transport() {
    return this.socket.io.engine?.transport?.name;
  }

  /** An emit with an acknowledgement; resolves with the acknowledgement's one argument. */
  async call(event, data, ms = TIMEOUT_MS) {
    this.emitsWithAck++;
    const args = await this.socket.timeout(ms).emitWithAck(event, data);
    return args;
  }

  /** An emit with no data at all (`["ping"]`) and an acknowledgement. */
  callWithoutData(event, ms = TIMEOUT_MS) {
    this.emitsWithAck++;
    return new Promise((resolve, reject) =>
      this.socket.timeout(ms).emit(event, (err, arg) => (err ? reject(err) : resolve(arg))),
    );
  }

  /** `call`, asserting `{ok: true}`; resolves with `result`. */
  async ok(event, data, ms) {
    const res = await this.call(event, data, ms);
    assert.equal(res?.ok, true, `${event} ${JSON.stringify(data)} was refused: ${JSON.stringify(res)}`);
    return res.result;
  }

  /** Every ACK packet came once, and one came for every emit that asked for one. */
  assertOneAckEach() {
    const twice = [...this.acks].filter(([, n]) => n !== 1);
    assert.deepEqual(twice, [], `acknowledgements that came more than once (id, count): ${JSON.stringify(twice)}`);
    assert.equal(this.acks.size, this.emitsWithAck, "one acknowledgement per emit with an acknowledgement");
  }

  close() {
    this.socket.disconnect();
    this.socket.io.engine?.close();
  }
}

/** A client that has its `ready`. */
export async function connected(url, opts) {
  const c = new Client(url, opts);
  await c.ready();
  return c;
}

/**
 * A ready client through `url` (the balancer) whose session lives on a node other than the ones
 * in `avoid` (node ids). nginx balances handshakes by least connections, but each nginx worker
 * counts only its own connections, so a worker can keep choosing the same node: a session that
 * lands on the wrong node is held open while the next one is tried (which evens that worker's
 * counts), at most `hold` at a time. After `tries` the client connects to such a node directly
 * (script/server's node i is `node-i`, the i-th of CHORUS_SIO_NODES) and says so.
 */
export async function connectedAvoiding(url, avoid, opts, { tries = 8, hold = 2 } = {}) {
  const held = [];
  try {
    for (let i = 0; i < tries; i++) {
      const c = await connected(url, opts);
      if (!avoid.includes(c.node)) return c;
      held.push(c);
      if (held.length > hold) held.shift().close();
    }
  } finally {
    closeAll(...held);
  }
  const i = NODES.findIndex((_, i) => !avoid.includes(`node-${i + 1}`));
  if (i < 0) throw new Error(`no node outside ${avoid.join(", ")} in CHORUS_SIO_NODES`);
  console.log(`# ${tries} sessions through ${url} landed on ${avoid.join(", ")}: connecting to node-${i + 1} directly`);
  const c = await connected(NODES[i], opts);
  assert.equal(c.node, `node-${i + 1}`);
  return c;
}

/** Closes every client given; used in `finally` blocks. */
export function closeAll(...clients) {
  for (const c of clients) {
    try {
      c?.close();
    } catch {
      // already closed
    }
  }
}

/** Asserts that `msgs` are exactly the seqs `from..to` of one room, in order, each once. */
export function assertSeqs(msgs, from, to, what) {
  const seqs = msgs.map((m) => m.seq);
  const want = [];
  for (let s = from; s <= to; s++) want.push(s);
  assert.deepEqual(seqs, want, `${what}: seqs ${compact(seqs)} instead of ${from}..${to}`);
}

/** [1,2,3,5,5,6] -> "1-3,5,5-6": readable seq lists in assertion messages. */
export function compact(seqs) {
  const out = [];
  for (let i = 0; i < seqs.length; ) {
    let j = i;
    while (j + 1 < seqs.length && seqs[j + 1] === seqs[j] + 1) j++;
    out.push(j > i ? `${seqs[i]}-${seqs[j]}` : `${seqs[i]}`);
    i = j + 1;
  }
  return `[${out.join(",")}]`;
}

export { randomUUID };
