// A node dies (SIGKILL) under a Socket.IO client: the client reconnects through nginx by itself,
// lands on the surviving node, resyncs with `sync` from its last seq, and ends up with every
// message exactly once, in order, while the other user kept sending on the surviving node.
// Then the surviving node is drained (SIGTERM): its clients get `closing` 1012 and a transport
// close, and keep trying to reconnect. It leaves no node running: run it last (script/test does).
// Environment: see lib.mjs.

import assert from "node:assert/strict";
import { test } from "node:test";

import {
  Client,
  TEST_TIMEOUT_MS,
  LB,
  alive,
  api,
  assertSeqs,
  closeAll,
  compact,
  connected,
  connectedAvoiding,
  newRoom,
  newUser,
  nodePid,
  randomUUID,
  sleep,
  until,
} from "./lib.mjs";

/**
 * One room as a client of PROTOCOL.md §10 keeps it: the highest seq received without a gap, a
 * `sync` from it on every `ready` that shows the room moved on, and one on a gap. `applied` is
 * what the user would see.
 */
class Follower {
  constructor(client, roomId) {
    this.c = client;
    this.roomId = roomId;
    this.last = null;
    this.applied = [];
    this.duplicates = 0;
    this.pending = new Map();
    this.syncs = []; // {after_seq, ack, ackAt: index of the ack in client.log}
    this.syncing = false;
    client.socket.on("ready", (r) => this.onReady(r));
    client.socket.on("message", (m) => this.onMessage(m));
  }

  onReady(ready) {
    const room = ready.rooms.find((r) => r.room_id === this.roomId);
    assert.ok(room, `room missing from ready: ${JSON.stringify(ready.rooms)}`);
    if (this.last === null) this.last = room.last_seq;
    else if (this.last < room.last_seq) this.sync(this.last);
  }

  onMessage(m) {
    if (m.room_id !== this.roomId) return;
    if (m.seq <= this.last) {
      this.duplicates++;
      return;
    }
    if (m.seq > this.last + 1) {
      this.pending.set(m.seq, m);
      if (!this.syncing) this.sync(this.last);
      return;
    }
    this.applied.push(m);
    this.last = m.seq;
    while (this.pending.has(this.last + 1)) {
      const next = this.pending.get(this.last + 1);
      this.pending.delete(this.last + 1);
      this.applied.push(next);
      this.last = next.seq;
    }
  }

  async sync(after) {
    this.syncing = true;
    try {
      for (let rooms = [{ room_id: this.roomId, after_seq: after }]; rooms.length > 0; ) {
        const entry = { after_seq: rooms[0].after_seq };
        this.syncs.push(entry);
        entry.ack = await this.c.call("sync", { rooms });
        entry.ackAt = this.c.log.findIndex((p) => p.type === "ack" && p.data === entry.ack);
        if (!entry.ack?.ok) return;
        rooms = entry.ack.result.rooms
          .filter((r) => r.has_more)
          .map((r) => ({ room_id: r.room_id, after_seq: r.last_seq }));
      }
    } catch (e) {
      this.syncs.push({ error: e.message });
    } finally {
      this.syncing = false;
    }
  }
}

test("f. SIGKILL of a node: its client reconnects through nginx to the other node, syncs, and has every message once, in order", { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const alice = await newUser("alice");
  const bob = await newUser("bob");
  const room = await newRoom(alice, [bob]);
  let a, b;
  try {
    b = new Client(LB, { token: bob.token });
    const follower = new Follower(b, room.id);
    await b.ready();
    await b.when(() => b.upgrades.includes("websocket"), "bob's upgrade to WebSocket");
    a = await connectedAvoiding(LB, [b.node], { token: alice.token, transports: ["websocket"] });
    const victim = b.node;
    const survivor = a.node;

    const sent = [];
    const send = async (i) => {
      sent.push(await a.ok("send", { room_id: room.id, content: `m${i}`, client_msg_id: randomUUID() }));
    };
    for (let i = 0; i < 10; i++) await send(i);
    await until(() => follower.applied.length === 10, "bob's first 10 messages");

    const pid = nodePid(victim);
    assert.ok(alive(pid), `${victim} (pid ${pid}) is not running`);
    process.kill(pid, "SIGKILL");
    // Alice keeps sending on the surviving node while bob is away and while he comes back.
    const sender = (async () => {
      for (let i = 10; i < 40; i++) {
        await send(i);
        await sleep(25);
      }
    })();

    await b.when(() => b.disconnects.length > 0, "bob's disconnect");
    assert.ok(
      ["transport close", "transport error", "ping timeout"].includes(b.disconnects[0].reason),
      `disconnect reason ${b.disconnects[0].reason}`,
    );
    assert.deepEqual(b.closings, [], "a killed node says nothing");
    assert.equal(b.socket.active, true, "the client reconnects by itself");
    await until(() => !alive(pid), `${victim} to exit`);

    const again = await b.ready(2);
    assert.equal(again.node_id, survivor, "reconnected through nginx to the surviving node");
    assert.equal(b.node, survivor);
    await sender;
    await until(() => follower.applied.length >= 40 && !follower.syncing, "bob's 40 messages");
    await sleep(300); // anything extra would come right behind

    sent.sort((x, y) => x.seq - y.seq);
    assertSeqs(follower.applied, 1, 40, "bob, after the failover");
    assert.deepEqual(
      follower.applied.map((m) => m.id),
      sent.map((m) => m.id),
    );
    assert.equal(follower.pending.size, 0);

    // The resync: from the last seq bob had before the kill, acknowledged once.
    assert.ok(follower.syncs.length >= 1, "bob synced after the reconnect");
    assert.equal(follower.syncs[0].after_seq, 10);
    for (const s of follower.syncs) assert.equal(s.ack?.ok, true, `sync: ${JSON.stringify(s)}`);
    // Live delivery never repeats what a replay sent (PROTOCOL.md §9.2).
    const s0 = follower.syncs.at(-1);
    const syncedUpTo = s0.ack.result.rooms.find((r) => r.room_id === room.id).last_seq;
    const liveAfter = b.log
      .slice(s0.ackAt + 1)
      .filter((p) => p.type === "event" && p.name === "message" && p.data.room_id === room.id)
      .map((p) => p.data.seq);
    assert.ok(
      liveAfter.every((s) => s > syncedUpTo),
      `after the sync up to ${syncedUpTo}, live seqs ${compact(liveAfter)}`,
    );
    t.diagnostic(
      `bob: ${follower.syncs.length} sync(s) from ${follower.syncs[0].after_seq}, ${follower.duplicates} duplicate(s) dropped, ` +
        `reconnected ${victim} -> ${survivor}, live after the sync: ${compact(liveAfter)}`,
    );

    // Alice's session, on the surviving node, never noticed.
    assert.deepEqual(a.disconnects, []);
    assert.equal(a.readies.length, 1);
    const history = await api("GET", `/rooms/${room.id}/messages?limit=100`, undefined, bob.token);
    assert.equal(history.items.length, 40);
    a.assertOneAckEach();
    b.assertOneAckEach();
  } finally {
    closeAll(a, b);
  }
});

test("1012: SIGTERM drains the last node: `closing` {1012, draining}, then a transport close, and the client retries", { timeout: TEST_TIMEOUT_MS }, async () => {
  const carol = await newUser("carol");
  const clients = [];
  try {
    for (const opts of [{}, { transports: ["websocket"] }, { transports: ["polling"], upgrade: false }]) {
      clients.push(await connected(LB, { token: carol.token, ...opts }));
    }
    const nodes = new Set(clients.map((c) => c.node));
    assert.equal(nodes.size, 1, `one node is left, yet sessions are on ${[...nodes]}`);
    const pid = nodePid([...nodes][0]);
    process.kill(pid, "SIGTERM");
    for (const c of clients) {
      await c.when(() => c.disconnects.length > 0, "the disconnect of the drain");
      const what = `${c.opened[0]}${c.upgrades.length ? "+upgrade" : ""}`;
      assert.deepEqual(c.closings, [{ code: 1012, reason: "draining" }], `${what}: closing${c.wireTail()}`);
      assert.equal(c.disconnects[0].reason, "transport close", `${what}: disconnect reason${c.wireTail()}`);
      assert.equal(c.socket.active, true, `${c.opened[0]}: the client reconnects by itself`);
    }
  } finally {
    closeAll(...clients);
  }
});
