"""Chorus's Socket.IO endpoint with python-socketio's client (tests/socketio/requirements.txt).

Two users, each with a python-socketio client connected through nginx with their access token, on
different nodes: both get `ready`, both upgrade to WebSocket, each sends with an acknowledgement
(`call`) and the other receives the messages, in seq order. Exit status 0 on success, 1 on failure.

Environment (script/test's socketio phase sets it; defaults: script/server with CHORUS_NODES=2):
  CHORUS_SIO_LB  nginx in front of the nodes (http://127.0.0.1:8080)
"""

import json
import os
import secrets
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

import socketio

LB = os.environ.get("CHORUS_SIO_LB", "http://127.0.0.1:8080")
TIMEOUT_S = 15
PASSWORD = "socket.io test password"


def api(method, path, body=None, token=None):
    req = urllib.request.Request(
        f"{LB}/api/v1{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={
            **({"content-type": "application/json"} if body is not None else {}),
            **({"authorization": f"Bearer {token}"} if token else {}),
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as res:
            text = res.read().decode()
    except urllib.error.HTTPError as e:
        raise AssertionError(f"{method} {path}: {e.code} {e.read().decode()}") from None
    return json.loads(text) if text else None


def new_user(prefix):
    username = f"{prefix}-{secrets.token_hex(5)}"
    user = api("POST", "/auth/register", {"username": username, "password": PASSWORD})
    pair = api("POST", "/auth/login", {"username": username, "password": PASSWORD})
    return {"id": user["id"], "username": username, "token": pair["access_token"]}


class Session:
    """A python-socketio client that keeps `ready` and every `message`."""

    def __init__(self, user):
        self.user = user
        self.ready = None
        self.messages = []
        self.errors = []
        self.changed = threading.Condition()
        self.sio = socketio.Client(reconnection=False)
        self.sio.on("ready", self._on_ready)
        self.sio.on("message", self._on_message)
        self.sio.on("error", lambda data: self.errors.append(data))
        self.sio.connect(LB, auth={"token": user["token"]}, wait_timeout=TIMEOUT_S)
        self.wait(lambda: self.ready is not None, "ready")

    def _on_ready(self, data):
        with self.changed:
            self.ready = data
            self.changed.notify_all()

    def _on_message(self, data):
        with self.changed:
            self.messages.append(data)
            self.changed.notify_all()

    def wait(self, check, what):
        with self.changed:
            if not self.changed.wait_for(check, timeout=TIMEOUT_S):
                raise AssertionError(f"timed out after {TIMEOUT_S} s waiting for {what} ({self.user['username']})")

    @property
    def node(self):
        node, _, rest = self.sio.eio.sid.partition(".")
        assert len(rest) == 32, f"sid {self.sio.eio.sid!r} is not <node>.<32 hex>"
        return node

    def send(self, room_id, content):
        body = {"room_id": room_id, "content": content, "client_msg_id": str(uuid.uuid4())}
        ack = self.sio.call("send", body, timeout=TIMEOUT_S)
        assert isinstance(ack, dict) and ack.get("ok") is True, f"send refused: {ack!r}"
        assert ack["result"]["content"] == content and ack["result"]["room_id"] == room_id, ack
        return ack["result"]

    def close(self):
        self.sio.disconnect()


def received(session, room_id, sent, who):
    session.wait(lambda: len([m for m in session.messages if m["room_id"] == room_id]) >= len(sent), f"{len(sent)} messages")
    got = [m for m in session.messages if m["room_id"] == room_id]
    assert [m["seq"] for m in got] == [m["seq"] for m in sent], f"{who}: seqs {[m['seq'] for m in got]}"
    assert [m["id"] for m in got] == [m["id"] for m in sent], f"{who}: ids differ"


def main():
    started = time.monotonic()
    alice = new_user("py-alice")
    bob = new_user("py-bob")
    room = api("POST", "/rooms", {"name": f"py-{secrets.token_hex(5)}", "visibility": "public", "member_ids": [bob["id"]]}, alice["token"])
    a = b = None
    held = []
    try:
        a = Session(alice)
        # The second session on the other node: nginx balances handshakes per worker, so hold a
        # session that lands on the same node open while trying again.
        for _ in range(8):
            b = Session(bob)
            if b.node != a.node:
                break
            held.append(b)
            b = None
        for s in held:
            s.close()
        assert b is not None, f"every session of bob landed on {a.node}"
        for s in (a, b):
            assert s.ready["user"]["id"] == s.user["id"], s.ready
            assert s.ready["node_id"] == s.node, (s.ready["node_id"], s.sio.eio.sid)
            assert any(r["room_id"] == room["id"] for r in s.ready["rooms"]), s.ready["rooms"]
            assert s.sio.transport() == "websocket", f"python-socketio did not upgrade: {s.sio.transport()}"

        from_a = [a.send(room["id"], f"from python {a.node} #{i}") for i in range(5)]
        received(b, room["id"], from_a, "bob")
        from_b = [b.send(room["id"], f"from python {b.node} #{i}") for i in range(5)]
        received(a, room["id"], from_a + from_b, "alice")
        received(b, room["id"], from_a + from_b, "bob")
        assert [m["seq"] for m in from_a + from_b] == list(range(1, 11))
        assert not a.errors and not b.errors, (a.errors, b.errors)
        print(
            f"python-socketio smoke: ok ({a.node} <-> {b.node}, 10 messages both ways, "
            f"{time.monotonic() - started:.1f} s)"
        )
    finally:
        for s in (a, b, *held):
            if s is not None:
                s.close()


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001: any failure is the smoke test failing
        print(f"python-socketio smoke: FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
