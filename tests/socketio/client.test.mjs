// Chorus's Socket.IO endpoint (/socket.io/, Engine.IO v4 / Socket.IO v5) driven by the real
// socket.io-client against a live two-node cluster behind the bundled nginx. The node-killing case
// is in failover.test.mjs, which runs last. Environment: see lib.mjs.
//
//   cd tests/socketio && npm ci && node --test client.test.mjs

import assert from "node:assert/strict";
import { test } from "node:test";

import {
  Client,
  TEST_TIMEOUT_MS,
  HEARTBEAT_S,
  LB,
  MAX_FRAME_BYTES,
  MAX_SOCKETS_PER_USER,
  NODES,
  api,
  assertSeqs,
  closeAll,
  connected,
  connectedAvoiding,
  login,
  mintToken,
  newRoom,
  newUser,
  randomUUID,
  sidNode,
  sleep,
  uniq,
} from "./lib.mjs";

const range = (n) => Array.from({ length: n }, (_, i) => i);

/** Sends `n` messages at once (pipelined), and checks every acknowledgement. */
async function sendMany(client, roomId, n, tag) {
  const bodies = range(n).map((i) => ({ room_id: roomId, content: `${tag} ${i}`, client_msg_id: randomUUID() }));
  const acks = await Promise.all(bodies.map((b) => client.call("send", b)));
  acks.forEach((a, i) => {
    assert.equal(a?.ok, true, `send #${i} refused: ${JSON.stringify(a)}`);
    assert.equal(a.result.content, bodies[i].content);
    assert.equal(a.result.client_msg_id, bodies[i].client_msg_id);
    assert.equal(a.result.room_id, roomId);
  });
  return acks.map((a) => a.result);
}

/** The messages `client` received are exactly `sent` (ids, seqs, contents), in order. */
function assertReceived(client, roomId, sent, what) {
  const got = client.messages(roomId);
  assertSeqs(got, sent[0].seq, sent.at(-1).seq, what);
  got.forEach((m, i) => {
    assert.equal(m.id, sent[i].id, `${what}: message #${i} id`);
    assert.equal(m.content, sent[i].content, `${what}: message #${i} content`);
  });
}

/** On the sending session, each send's acknowledgement precedes that message's own `message`. */
function assertAckBeforeOwnMessage(client, roomId) {
  const ackAt = new Map();
  const msgAt = new Map();
  client.log.forEach((p, i) => {
    if (p.type === "ack" && p.data?.ok && p.data.result?.room_id === roomId && p.data.result.seq !== undefined) {
      ackAt.set(p.data.result.seq, i);
    }
    if (p.type === "event" && p.name === "message" && p.data?.room_id === roomId) msgAt.set(p.data.seq, i);
  });
  const early = [];
  for (const [seq, i] of ackAt) {
    assert.ok(msgAt.has(seq), `the sender never got its own message seq ${seq}`);
    if (msgAt.get(seq) < i) early.push(seq);
  }
  if (early.length > 0) {
    const order = client.log
      .filter(
        (p) =>
          (p.type === "event" && p.name === "message" && p.data?.room_id === roomId) ||
          (p.type === "ack" && p.data?.result?.room_id === roomId && p.data.result.seq !== undefined),
      )
      .map((p) => (p.type === "ack" ? `A${p.data.result.seq}` : `M${p.data.seq}`));
    assert.fail(
      `on the sending session (${client.transport}), the message event of seq ${early.join(", ")} came before the ` +
        `send's acknowledgement; order (A = ack, M = message): ${order.join(" ")}`,
    );
  }
}

function assertReady(ready, user, client) {
  assert.equal(ready.user.id, user.id);
  assert.equal(ready.user.username, user.username);
  assert.equal(typeof ready.session_id, "string");
  assert.equal(ready.node_id, client.node, "ready.node_id is the node whose id starts the sid");
  assert.equal(ready.heartbeat_s, HEARTBEAT_S);
  assert.ok(Array.isArray(ready.rooms));
  for (const r of ready.rooms) {
    assert.deepEqual(Object.keys(r).sort(), ["delivered_seq", "last_seq", "read_seq", "room_id"]);
  }
}

test("handshake: each node's Engine.IO open packet, through nginx and directly", { timeout: TEST_TIMEOUT_MS }, async () => {
  const urls = [LB, ...NODES];
  const seenNodes = new Set();
  for (const url of urls) {
    const res = await fetch(`${url}/socket.io/?EIO=4&transport=polling`);
    const body = await res.text();
    assert.equal(res.status, 200, `${url}: ${res.status} ${body}`);
    assert.equal(body[0], "0", `${url}: not an open packet: ${body}`);
    const open = JSON.parse(body.slice(1));
    assert.deepEqual(Object.keys(open).sort(), ["maxPayload", "pingInterval", "pingTimeout", "sid", "upgrades"]);
    assert.deepEqual(open.upgrades, ["websocket"]);
    assert.equal(open.pingInterval, HEARTBEAT_S * 1000);
    assert.equal(open.pingTimeout, HEARTBEAT_S * 1000);
    assert.equal(open.maxPayload, MAX_FRAME_BYTES);
    const node = sidNode(open.sid);
    if (url !== LB) seenNodes.add(node);
  }
  // script/server names its nodes node-1, node-2, ... and each puts its own id in its sids.
  assert.deepEqual([...seenNodes].sort(), NODES.map((_, i) => `node-${i + 1}`));
});

test("a. default transports through nginx: polling, upgrade to WebSocket; 50 sends on one node arrive in order on the other", { timeout: TEST_TIMEOUT_MS }, async () => {
  const alice = await newUser("alice");
  const bob = await newUser("bob");
  const room = await newRoom(alice);
  let a, b;
  try {
    a = await connected(LB, { token: alice.token });
    assertReady(a.readies[0], alice, a);
    assert.deepEqual(
      a.readies[0].rooms.find((r) => r.room_id === room.id),
      { room_id: room.id, last_seq: 0, delivered_seq: 0, read_seq: 0 },
    );
    b = await connectedAvoiding(LB, [a.node], { token: bob.token });
    assertReady(b.readies[0], bob, b);
    assert.ok(!b.readies[0].rooms.some((r) => r.room_id === room.id), "bob is not in the room yet");

    for (const c of [a, b]) {
      assert.equal(c.opened[0], "polling", "the session starts with long-polling");
      await c.when(() => c.upgrades.includes("websocket"), "the upgrade to WebSocket");
      assert.equal(c.transport, "websocket");
    }

    const joined = await b.ok("join", { room_id: room.id });
    assert.equal(joined.id, room.id);
    assert.equal(joined.last_seq, 0);
    assert.equal(joined.my_role, "member");

    const sent = await sendMany(a, room.id, 50, "a");
    assert.deepEqual(
      sent.map((m) => m.seq),
      range(50).map((i) => i + 1),
      "acknowledged seqs follow the emit order",
    );
    await b.waitMessages(room.id, 50);
    await a.waitMessages(room.id, 50);
    await sleep(200); // a duplicate or a stray message would come right behind the last one
    assertReceived(b, room.id, sent, "bob (other node)");
    assertReceived(a, room.id, sent, "alice's own session");
    assertAckBeforeOwnMessage(a, room.id);
    assert.equal(a.transport, "websocket");
    assert.equal(b.transport, "websocket");
    a.assertOneAckEach();
    b.assertOneAckEach();
  } finally {
    closeAll(a, b);
  }
});

test("b. WebSocket only: sends both ways between the two nodes", { timeout: TEST_TIMEOUT_MS }, async () => {
  const alice = await newUser("alice");
  const bob = await newUser("bob");
  const room = await newRoom(alice, [bob]);
  const opts = { transports: ["websocket"] };
  let a, b;
  try {
    a = await connected(LB, { token: alice.token, ...opts });
    b = await connectedAvoiding(LB, [a.node], { token: bob.token, ...opts });
    for (const c of [a, b]) {
      assert.deepEqual(c.opened, ["websocket"]);
      assert.equal(c.transport, "websocket");
    }
    // A member from the room's creation: the room is in bob's ready.
    assert.deepEqual(
      b.readies[0].rooms.find((r) => r.room_id === room.id),
      { room_id: room.id, last_seq: 0, delivered_seq: 0, read_seq: 0 },
    );

    const fromA = [];
    for (const i of range(20)) {
      fromA.push(await a.ok("send", { room_id: room.id, content: `ws a ${i}`, client_msg_id: randomUUID() }));
    }
    await b.waitMessages(room.id, 20);
    const fromB = await sendMany(b, room.id, 10, "ws b");
    await a.waitMessages(room.id, 30);
    await b.waitMessages(room.id, 30);
    await sleep(200);
    assertReceived(b, room.id, [...fromA, ...fromB], "bob");
    assertReceived(a, room.id, [...fromA, ...fromB], "alice");
    assertAckBeforeOwnMessage(a, room.id);
    assertAckBeforeOwnMessage(b, room.id);
    a.assertOneAckEach();
    b.assertOneAckEach();
  } finally {
    closeAll(a, b);
  }
});

test("c. long-polling only: batched POSTs (\\x1e) and polls carry sends and messages between the nodes", { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const alice = await newUser("alice");
  const bob = await newUser("bob");
  const room = await newRoom(alice, [bob]);
  const opts = { transports: ["polling"], upgrade: false };
  let a, b;
  try {
    a = await connected(LB, { token: alice.token, ...opts });
    b = await connectedAvoiding(LB, [a.node], { token: bob.token, ...opts });

    // What goes over the wire: each POST body alice's client writes, each poll answer bob's reads.
    const posts = [];
    const polls = [];
    const at = a.socket.io.engine.transport;
    const doWrite = at.doWrite.bind(at);
    at.doWrite = (data, fn) => {
      posts.push(data);
      return doWrite(data, fn);
    };
    const bt = b.socket.io.engine.transport;
    const onData = bt.onData.bind(bt);
    bt.onData = (data) => {
      polls.push(data);
      return onData(data);
    };

    const sent = await sendMany(a, room.id, 30, "poll a");
    assert.ok(
      posts.some((p) => p.includes("\x1e")),
      `socket.io-client batched none of its 30 emits into one POST (bodies: ${JSON.stringify(posts.slice(0, 3))}...)`,
    );
    await b.waitMessages(room.id, 30);
    const back = await b.ok("send", { room_id: room.id, content: "poll b", client_msg_id: randomUUID() });
    await a.waitMessages(room.id, 31);
    await b.waitMessages(room.id, 31);
    await sleep(200);
    assertReceived(b, room.id, [...sent, back], "bob");
    assertReceived(a, room.id, [...sent, back], "alice");
    assertAckBeforeOwnMessage(a, room.id);
    for (const c of [a, b]) {
      assert.deepEqual(c.opened, ["polling"]);
      assert.deepEqual(c.upgrades, []);
      assert.equal(c.transport, "polling");
    }
    const batched = polls.filter((p) => typeof p === "string" && p.includes("\x1e")).length;
    t.diagnostic(`polling: ${posts.length} POSTs by alice, ${polls.length} poll answers to bob (${batched} batched)`);
    a.assertOneAckEach();
    b.assertOneAckEach();
  } finally {
    closeAll(a, b);
  }
});

test("d. refused connections: connect_error with err.data.code, no retry; another namespace is refused", { timeout: TEST_TIMEOUT_MS }, async () => {
  const carol = await newUser("carol");
  const cases = [
    ["no auth at all", undefined, "auth.unauthenticated"],
    ["auth without a token", {}, "auth.unauthenticated"],
    ["a token that is not a string", { token: 42 }, "auth.unauthenticated"],
    ["a garbage token", { token: "garbage" }, "auth.unauthenticated"],
    ["a token with a bad signature", { token: carol.token.slice(0, -4) + "AAAA" }, "auth.unauthenticated"],
    ["an expired token", { token: mintToken(carol, -60) }, "auth.token_expired"],
  ];
  for (const transports of [undefined, ["websocket"]]) {
    for (const [what, auth, code] of cases) {
      const c = new Client(LB, { auth, ...(transports ? { transports } : {}) });
      try {
        const err = await c.when(() => c.connectErrors[0], `connect_error for ${what}`);
        assert.equal(err.data?.code, code, `${what} (${transports ?? "default"}): ${err.message} ${JSON.stringify(err.data)}`);
        assert.equal(typeof err.message, "string");
        assert.ok(err.message.length > 0);
        assert.equal(c.socket.active, false, `${what}: the client must not retry a refusal`);
        assert.equal(c.readies.length, 0);
        assert.equal(c.socket.connected, false);
      } finally {
        c.close();
      }
    }
  }

  // Only the main namespace exists.
  for (const ns of ["/admin", "/chat"]) {
    const c = new Client(`${LB}${ns}`, { token: carol.token });
    try {
      const err = await c.when(() => c.connectErrors[0], `connect_error for namespace ${ns}`);
      assert.equal(err.message, "Invalid namespace");
      assert.equal(c.socket.active, false);
      assert.equal(c.readies.length, 0);
    } finally {
      c.close();
    }
  }

  // And the same token is fine on `/`.
  const ok = await connected(LB, { token: carol.token });
  assertReady(ok.readies[0], carol, ok);
  ok.close();
});

test("e. idempotent send: the same client_msg_id again, on the same node and on the other, is the same message, delivered once", { timeout: TEST_TIMEOUT_MS }, async () => {
  const alice = await newUser("alice");
  const bob = await newUser("bob");
  const room = await newRoom(alice, [bob]);
  const opts = { transports: ["websocket"] };
  let a, a2, b;
  try {
    a = await connected(LB, { token: alice.token, ...opts });
    b = await connectedAvoiding(LB, [a.node], { token: bob.token, ...opts });
    a2 = await connectedAvoiding(LB, [a.node], { token: alice.token, ...opts });

    const body = { room_id: room.id, content: "only once", client_msg_id: uniq("retry") };
    const first = await a.ok("send", body);
    const again = await a.ok("send", body);
    const elsewhere = await a2.ok("send", body);
    assert.equal(first.seq, 1);
    for (const r of [again, elsewhere]) {
      assert.equal(r.id, first.id);
      assert.equal(r.seq, first.seq);
      assert.equal(r.content, first.content);
      assert.equal(r.client_msg_id, body.client_msg_id);
      assert.equal(r.created_at, first.created_at);
    }
    // A later message fences the stream: anything fanned out for the retries would come before it.
    const fence = await a.ok("send", { room_id: room.id, content: "fence", client_msg_id: randomUUID() });
    assert.equal(fence.seq, 2);
    for (const c of [b, a, a2]) await c.waitMessages(room.id, 2);
    await sleep(200);
    for (const [c, who] of [[b, "bob"], [a, "alice"], [a2, "alice's second session"]]) {
      assertReceived(c, room.id, [first, fence], who);
    }
    const history = await api("GET", `/rooms/${room.id}/messages?limit=50`, undefined, bob.token);
    assert.deepEqual(
      history.items.map((m) => m.id),
      [first.id, fence.id],
      "stored once",
    );
    for (const c of [a, a2, b]) c.assertOneAckEach();
  } finally {
    closeAll(a, a2, b);
  }
});

test("g. sessions ended by the server: logout-all (4001 token_revoked), expiry (4001 token_expired), too many sessions (4429)", { timeout: TEST_TIMEOUT_MS }, async (t) => {
  await t.test("logout-all closes the user's sessions on both nodes; the old token is refused", async () => {
    const alice = await newUser("alice");
    let a1, a2, a3;
    try {
      a1 = await connected(LB, { token: alice.token });
      a2 = await connectedAvoiding(LB, [a1.node], { token: alice.token, transports: ["websocket"] });
      a3 = await connected(LB, { token: alice.token, transports: ["polling"], upgrade: false });
      await api("POST", "/auth/logout-all", undefined, alice.token);
      for (const c of [a1, a2, a3]) {
        await c.when(() => c.disconnects.length > 0 || c.connectErrors.length > 0, "the disconnect after logout-all");
        assert.deepEqual(c.closings, [{ code: 4001, reason: "token_revoked" }], c.wireTail());
        assert.equal(c.disconnects[0].reason, "io server disconnect", c.wireTail());
        assert.equal(c.socket.active, false, "no reconnect after a server disconnect");
      }
      const again = new Client(LB, { token: alice.token });
      try {
        const err = await again.when(() => again.connectErrors[0], "connect_error with a revoked token");
        assert.equal(err.data?.code, "auth.token_revoked", `${err.message} ${JSON.stringify(err.data)}`);
        assert.equal(again.socket.active, false);
      } finally {
        again.close();
      }
      // A new login works again.
      const fresh = await login(alice.username);
      const c = await connected(LB, { token: fresh.access_token });
      c.close();
    } finally {
      closeAll(a1, a2, a3);
    }
  });

  await t.test("a token that expires mid-session ends it; `auth` with a fresh token keeps another one open", async () => {
    const bob = await newUser("bob");
    let lapsing, renewed;
    try {
      // Both tokens expire in 3 s (whole seconds: 2-3 s from now).
      [lapsing, renewed] = await Promise.all([
        connected(LB, { token: mintToken(bob, 3) }),
        connected(LB, { token: mintToken(bob, 3), transports: ["websocket"] }),
      ]);
      const fresh = await login(bob.username);
      const auth = await renewed.ok("auth", { token: fresh.access_token });
      assert.equal(typeof auth.expires_at, "string");
      assert.equal(Date.parse(auth.expires_at) / 1000, fresh.claims.exp, "expires_at is the new token's exp");

      await lapsing.when(() => lapsing.disconnects.length > 0, "the disconnect at expiry");
      assert.deepEqual(lapsing.closings, [{ code: 4001, reason: "token_expired" }], lapsing.wireTail());
      assert.equal(lapsing.disconnects[0].reason, "io server disconnect", lapsing.wireTail());
      assert.equal(lapsing.socket.active, false);

      // The renewed session outlives the old expiry by a margin, and still answers.
      await sleep(1500);
      assert.deepEqual(renewed.closings, []);
      assert.deepEqual(renewed.disconnects, []);
      assert.deepEqual(await renewed.ok("ping", {}), {});
      lapsing.assertOneAckEach();
      renewed.assertOneAckEach();
    } finally {
      closeAll(lapsing, renewed);
    }
  });

  await t.test(`the session past CHORUS_MAX_SOCKETS_PER_USER (${MAX_SOCKETS_PER_USER}) is ended with 4429`, async () => {
    const carol = await newUser("carol");
    const opts = { token: carol.token, transports: ["websocket"] };
    const held = [];
    let extra;
    try {
      for (let i = 0; i < MAX_SOCKETS_PER_USER; i++) held.push(await connected(LB, opts));
      extra = new Client(LB, opts);
      await extra.when(() => extra.disconnects.length > 0 || extra.connectErrors.length > 0, "the end of the session too many");
      assert.deepEqual(extra.connectErrors, [], "ended after its connect, not refused");
      assert.deepEqual(extra.closings, [{ code: 4429, reason: "too_many_sessions" }], extra.wireTail());
      assert.equal(extra.disconnects[0].reason, "io server disconnect", extra.wireTail());
      assert.equal(extra.readies.length, 0, "refused before ready");
      assert.equal(extra.socket.active, false);
      for (const c of held) assert.deepEqual(c.closings, []);
      assert.deepEqual(await held[0].ok("ping", {}), {});
    } finally {
      closeAll(extra, ...held);
    }
  });
});

test("h. every emit with an acknowledgement gets exactly one; failures without one get an `error` event; binary is refused", { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const alice = await newUser("alice");
  const bob = await newUser("bob");
  const room = await newRoom(alice, [bob]);
  const other = await newRoom(bob);
  for (const transports of [["websocket"], ["polling"]]) {
    await t.test(`over ${transports[0]}`, async () => {
      const c = await connected(LB, { token: alice.token, transports, upgrade: false });
      try {
        const res = {};
        res.ping = await c.call("ping", {});
        res.pingNoData = await c.callWithoutData("ping");
        const sent = (res.send = await c.call("send", { room_id: room.id, content: "to edit", client_msg_id: randomUUID() }));
        res.edit = await c.call("edit", { message_id: sent.result?.id, content: "edited" });
        res.typing = await c.call("typing", { room_id: room.id });
        res.ack = await c.call("ack", { room_id: room.id, delivered_seq: sent.result?.seq, read_seq: sent.result?.seq });
        res.history = await c.call("history", { room_id: room.id, limit: 10 });
        res.join = await c.call("join", { room_id: other.id });
        res.leave = await c.call("leave", { room_id: other.id });
        res.presence = await c.call("presence", { user_ids: [bob.id, alice.id] });
        res.auth = await c.call("auth", { token: (await login(alice.username)).access_token });
        const syncAt = c.log.length;
        res.sync = await c.call("sync", { rooms: [{ room_id: room.id, after_seq: 0 }] });
        res.delete = await c.call("delete", { message_id: sent.result?.id });
        for (const [name, r] of Object.entries(res)) {
          assert.equal(r?.ok, true, `${name}: ${JSON.stringify(r)}`);
          assert.ok("result" in r, `${name}: no result`);
        }
        assert.deepEqual(res.ping.result, {});
        assert.equal(res.send.result.content, "to edit");
        assert.equal(res.edit.result.content, "edited");
        assert.notEqual(res.edit.result.edited_at, null);
        assert.equal(typeof res.typing.result.forwarded, "boolean");
        assert.ok(res.history.result.items.some((m) => m.id === sent.result.id));
        assert.equal(res.join.result.id, other.id);
        assert.deepEqual(res.leave.result, {});
        assert.deepEqual(res.presence.result.map((p) => p.user_id).sort(), [alice.id, bob.id].sort());
        assert.equal(typeof res.auth.result.expires_at, "string");
        const synced = res.sync.result.rooms.find((r) => r.room_id === room.id);
        assert.equal(synced.has_more, false);
        assert.ok(synced.last_seq >= sent.result.seq);

        // `pong` precedes ping's acknowledgement; a sync's replay precedes its acknowledgement.
        const pongAt = c.log.findIndex((p) => p.type === "event" && p.name === "pong");
        const pingAckAt = c.log.findIndex((p) => p.type === "ack" && p.data === res.ping);
        assert.ok(pongAt >= 0 && pongAt < pingAckAt, "pong before the ping's acknowledgement");
        const syncAckAt = c.log.findIndex((p) => p.type === "ack" && p.data === res.sync);
        const replayed = c.log.slice(syncAt, syncAckAt).filter((p) => p.name === "message" && p.data.room_id === room.id);
        assert.deepEqual(
          replayed.map((p) => p.data.seq),
          res.history.result.items.map((m) => m.seq),
          "the sync replays the room (as history has it) before its acknowledgement",
        );

        // Failures, acknowledged.
        const fails = {
          unknownEvent: [await c.call("teleport", { to: "mars" }), "validation", "event"],
          missingContent: [await c.call("send", { room_id: room.id }), "validation", "content"],
          blankContent: [await c.call("send", { room_id: room.id, content: "  " }), "validation", "content"],
          wrongType: [await c.call("send", { room_id: 7, content: "x" }), "validation", undefined],
          notAnObject: [await c.call("sync", "nope"), "validation", undefined],
          tooLarge: [await c.call("send", { room_id: room.id, content: "x".repeat(5000) }), "message.too_large", undefined],
          unknownRoom: [await c.call("send", { room_id: randomUUID(), content: "x" }), "room.not_found", undefined],
          notMember: [await c.call("history", { room_id: other.id }), "room.forbidden", undefined],
          badLimit: [await c.call("history", { room_id: room.id, limit: 0 }), "validation", "limit"],
          otherUsersToken: [await c.call("auth", { token: bob.token }), "validation", "token"],
          badToken: [await c.call("auth", { token: "garbage" }), "auth.unauthenticated", undefined],
        };
        for (const [name, [r, code, field]] of Object.entries(fails)) {
          assert.equal(r?.ok, false, `${name}: ${JSON.stringify(r)}`);
          assert.equal(r.error?.code, code, `${name}: ${JSON.stringify(r)}`);
          assert.equal(typeof r.error.message, "string");
          assert.ok(!("result" in r), `${name}: a refusal with a result`);
          if (code === "validation") {
            assert.ok(Array.isArray(r.error.details) && r.error.details.length > 0, `${name}: no details`);
            if (field) assert.ok(r.error.details.some((d) => d.field === field), `${name}: ${JSON.stringify(r.error.details)}`);
          }
        }

        // Without an acknowledgement: a success says nothing, a failure says `error`, in order.
        const errorsBefore = c.named("error").length;
        c.socket.emit("typing", { room_id: room.id });
        c.socket.emit("teleport", { to: "mars" });
        c.socket.emit("send", { room_id: room.id });
        const fence = await c.call("ping", {});
        const fenceAt = c.log.findIndex((p) => p.type === "ack" && p.data === fence);
        const errors = c.log.slice(0, fenceAt).filter((p) => p.name === "error").slice(errorsBefore);
        assert.deepEqual(
          errors.map((e) => [e.data.code, e.data.details?.[0]?.field]),
          [
            ["validation", "event"],
            ["validation", "content"],
          ],
          `error events before the next acknowledgement: ${JSON.stringify(errors)}`,
        );

        // Binary arguments are refused (validation on `frame`): as `error` events without an
        // acknowledgement, in the acknowledgement with one; the session carries on, and the
        // packets' attachments are not read as packets of their own.
        c.socket.emit("send", { room_id: room.id, content: Buffer.from("binary"), client_msg_id: randomUUID() });
        c.socket.emit("typing", Buffer.from([1, 2, 3]));
        const binAck = await c.call("send", { room_id: room.id, content: Buffer.from("binary"), client_msg_id: randomUUID() });
        const after = await c.call("ping", {});
        assert.equal(after?.ok, true);
        const afterAt = c.log.findIndex((p) => p.type === "ack" && p.data === after);
        const binErrors = c.log.slice(fenceAt, afterAt).filter((p) => p.name === "error");
        assert.deepEqual(
          binErrors.map((e) => [e.data.code, e.data.details?.[0]?.field]),
          [
            ["validation", "frame"],
            ["validation", "frame"],
          ],
          `binary emits without an acknowledgement: ${JSON.stringify(binErrors)}`,
        );
        assert.equal(binAck?.ok, false, `binary emit with an acknowledgement: ${JSON.stringify(binAck)}`);
        assert.equal(binAck.error?.code, "validation");
        assert.equal(binAck.error.details?.[0]?.field, "frame");
        const still = await c.ok("send", { room_id: room.id, content: "after binary", client_msg_id: randomUUID() });
        assert.equal(still.content, "after binary");
        assert.equal(c.transport, transports[0]);
        assert.deepEqual(c.disconnects, []);
        c.assertOneAckEach();
      } finally {
        c.close();
      }
    });
  }
});
