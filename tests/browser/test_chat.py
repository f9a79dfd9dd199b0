"""The chat page every node serves at `/`, in a real browser: Debian's Chromium driven by Playwright
for Python, against a two-node cluster behind the bundled nginx (script/test, phase `browser`).

Environment (set by script/test):
  CHORUS_BROWSER_LB        http://127.0.0.1:<nginx port>
  CHORUS_BROWSER_NODES     the nodes' own base URLs, comma-separated (node-1 first)
  CHORUS_BROWSER_CLUSTER   script/server's directory (its `pids` file names each node's pid)
  CHORUS_BROWSER_OUT       where failure screenshots go
  CHORUS_BROWSER_SHOT      where the README's screenshot of the page goes (docs/chat.png)
  CHORUS_BROWSER_ONLY      run only the tests whose name contains this

Each test gets fresh users and rooms (one cluster serves the run). A failing test saves a screenshot
of each of its pages in CHORUS_BROWSER_OUT. The node-kill test runs last: it leaves one node.
"""

import base64
import json
import os
import re
import signal
import sys
import time
import traceback
import urllib.error
import urllib.request
import uuid

from playwright.sync_api import expect, sync_playwright

LB = os.environ["CHORUS_BROWSER_LB"]
NODES = os.environ["CHORUS_BROWSER_NODES"].split(",")
CLUSTER = os.environ["CHORUS_BROWSER_CLUSTER"]
OUT = os.environ["CHORUS_BROWSER_OUT"]
SHOT = os.environ.get("CHORUS_BROWSER_SHOT", "")
ONLY = os.environ.get("CHORUS_BROWSER_ONLY", "")
CHROMIUM = os.environ.get("CHORUS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
PASSWORD = "correct horse battery"

expect.set_options(timeout=15_000)


# -------------------------------------------------------------------------------------------------
# REST, for set-up and for checking what the server stored
# -------------------------------------------------------------------------------------------------
def api(base, method, path, token=None, body=None):
    """One JSON call; waits out 429s (Retry-After) and returns the decoded answer (None for 204)."""
    for _ in range(30):
        req = urllib.request.Request(base + "/api/v1" + path, method=method,
                                     data=None if body is None else json.dumps(body).encode())
        if body is not None:
            req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", "Bearer " + token)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                text = r.read()
                return json.loads(text) if text else None
        except urllib.error.HTTPError as e:
            if e.code != 429:
                raise AssertionError(f"{method} {path}: {e.code} {e.read()[:300]!r}") from None
            time.sleep(float(e.headers.get("Retry-After", "1")))
    raise AssertionError(f"{method} {path}: still rate limited")


def unique(prefix):
    return f"{prefix}{uuid.uuid4().hex[:6]}"


def history(base, token, room_id):
    return api(base, "GET", f"/rooms/{room_id}/messages?limit=200", token)["items"]


# -------------------------------------------------------------------------------------------------
# Pages
# -------------------------------------------------------------------------------------------------
class Run:
    """One test's browser contexts and pages; screenshots of each page when the test fails."""

    def __init__(self, browser):
        self.browser = browser
        self.pages = []
        self.problems = []

    def page(self, base, viewport=None):
        context = self.browser.new_context(viewport=viewport or {"width": 1280, "height": 800})
        page = context.new_page()
        # A CSP violation or an uncaught exception is a failure, whatever the test checks.
        page.on("pageerror", lambda e: self.problems.append(f"uncaught: {e}"))
        page.on("console", lambda m: self.problems.append(f"console: {m.text}")
                if m.type == "error" and "Content Security Policy" in m.text else None)
        page.goto(base + "/")
        self.pages.append(page)
        return page

    def user(self, base, name, viewport=None):
        page = self.page(base, viewport)
        page.fill("#username", name)
        page.fill("#password", PASSWORD)
        page.click("#registerBtn")
        expect(page.locator("#conn")).to_have_attribute("data-state", "online")
        return page

    def close(self, failed, name):
        if failed:
            for i, page in enumerate(self.pages):
                try:
                    page.screenshot(path=os.path.join(OUT, f"{name}-{i + 1}.png"), full_page=True)
                except Exception as e:  # the page may be gone; the failure itself is what matters
                    print(f"  (no screenshot of page {i + 1}: {e})")
        for page in self.pages:
            page.context.close()


def token(page):
    """A fresh access token for the page's user, from a REST login: the phase's tokens live 20 s, so
    the page's own may be about to expire."""
    name = page.locator("#me").inner_text()
    return api(LB, "POST", "/auth/login", body={"username": name, "password": PASSWORD})["access_token"]


def page_token(page):
    return page.evaluate("JSON.parse(sessionStorage.getItem('chorus.session')).access")


def node_of(page):
    return page.locator("#conn").get_attribute("data-node")


def room_button(page, name):
    return page.locator("#rooms button.room-item", has=page.locator(".name", has_text=re.compile("^# " + name)))


def bodies(page, state="sent"):
    return page.locator(f"#messages li.msg[data-state={state}] .body")


def exact(page, text):
    """The body of each message whose text is exactly `text`."""
    return page.locator("#messages li.msg .body").filter(has_text=re.compile("^" + re.escape(text) + "$"))


def message(page, text):
    """Each message (its whole item, with its buttons) whose text is exactly `text`."""
    body = page.locator(".body").filter(has_text=re.compile("^" + re.escape(text) + "$"))
    return page.locator("#messages li.msg").filter(has=body)


def say(page, text):
    page.fill("#text", text)
    page.press("#text", "Enter")


def create_room(page, name, visibility="public"):
    page.click("#createRoom")
    page.fill("dialog [name=name]", name)
    page.select_option("dialog [name=visibility]", visibility)
    page.click("dialog button.primary")
    expect(page.locator("#roomTitle")).to_have_text("# " + name)


def join_room(page, name):
    page.click("#refreshPublic")
    page.click(f"#public button[aria-label='Join {name}']")
    expect(page.locator("#roomTitle")).to_have_text("# " + name)


def chatting_pair(run, a_base, b_base, a_name=None, b_name=None, room=None):
    a = run.user(a_base, a_name or unique("ann"))
    b = run.user(b_base, b_name or unique("ben"))
    room = room or unique("room")
    create_room(a, room)
    join_room(b, room)
    return a, b, room


def room_id(page, name):
    return room_button(page, name).get_attribute("data-room")


# -------------------------------------------------------------------------------------------------
# Tests
# -------------------------------------------------------------------------------------------------
def test_page_is_served_with_strict_headers(run):
    """`/` and its files: CSP without inline code, nosniff, no-referrer, ETag and 304, HEAD."""
    with urllib.request.urlopen(NODES[0] + "/", timeout=10) as r:
        page = r.read().decode()
        headers = r.headers
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "style-src 'self'" in csp and "unsafe-inline" not in csp, csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert "<style" not in page and not re.search(r"<script(?![^>]*\bsrc=)", page), "inline code in the page"
    req = urllib.request.Request(NODES[1] + "/", headers={"If-None-Match": headers["ETag"]})
    try:
        urllib.request.urlopen(req, timeout=10)
        raise AssertionError("the other node did not answer 304 to the same ETag")
    except urllib.error.HTTPError as e:
        assert e.code == 304, e.code
    with urllib.request.urlopen(urllib.request.Request(LB + "/", method="HEAD"), timeout=10) as r:
        assert r.status == 200 and r.read() == b"" and r.headers["Content-Type"].startswith("text/html")
    # The nodes serve this tree's client (a binary built from another checkout would not).
    web = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "src", "http", "web")
    for name in sorted(os.listdir(web)):
        with urllib.request.urlopen(NODES[0] + ("/" if name == "index.html" else "/web/" + name), timeout=10) as r:
            with open(os.path.join(web, name), "rb") as f:
                assert r.read() == f.read(), f"the node serves another {name} than src/http/web/{name}"
    # And the page runs under that policy with nothing refused (Run records violations).
    p = run.page(LB)
    expect(p.locator("#signin")).to_be_visible()


def test_two_users_on_two_nodes_chat(run):
    """Register, create and join, chat both ways, typing, presence, edit, delete, seen by."""
    ann, ben, room = chatting_pair(run, NODES[0], NODES[1], "ann", "ben", "lobby")
    assert (node_of(ann), node_of(ben)) == ("node-1", "node-2")
    say(ann, "Hi Ben! Welcome to Chorus.")
    expect(exact(ben, "Hi Ben! Welcome to Chorus.")).to_have_count(1)
    say(ben, "Hello Ann.\nTwo lines, one message.")
    expect(exact(ann, "Hello Ann.\nTwo lines, one message.")).to_have_count(1)
    # Typing, shown while it lasts.
    ben.type("#text", "typing...")
    expect(ann.locator("#typing")).to_have_text("ben is typing…")
    expect(ann.locator("#typing")).to_have_text("", timeout=10_000)
    ben.fill("#text", "")
    # Presence and roles, in words as well as colour.
    ann.click("#membersBtn")
    expect(ann.locator("#memberList li[data-user=ben] .presence")).to_have_text("online")
    expect(ann.locator("#memberList li[data-user=ann] .role")).to_have_text("owner")
    # Edit and delete, live on the other node.
    say(ben, "A typo here")
    expect(exact(ann, "A typo here")).to_have_count(1)
    msg = message(ben, "A typo here")
    msg.get_by_role("button", name=re.compile("^Edit")).click()
    ben.fill("#messages .edit-form textarea", "No typo here")
    ben.press("#messages .edit-form textarea", "Enter")
    expect(exact(ann, "No typo here")).to_have_count(1)
    expect(message(ann, "No typo here")).to_contain_text("(edited)")
    say(ben, "Delete me")
    expect(exact(ann, "Delete me")).to_have_count(1)
    message(ben, "Delete me").get_by_role("button", name=re.compile("^Delete")).click()
    ben.click("dialog button.primary")
    expect(exact(ann, "Delete me")).to_have_count(0)
    expect(ann.locator("#messages .body.gone")).to_have_count(1)
    # Seen by: Ben has the room open at the bottom, so he reads what Ann sends.
    say(ann, "Did you see this?")
    expect(ann.locator("#messages li.msg.mine .seen").last).to_have_text("Seen by ben")
    if SHOT:
        say(ben, "Yes! Edits, deletes and read receipts all work across nodes.")
        expect(exact(ann, "Yes! Edits, deletes and read receipts all work across nodes.")).to_have_count(1)
        ann.locator("#messages").click(position={"x": 5, "y": 5})
        ann.screenshot(path=SHOT)


def test_unread_badges_count_and_clear(run):
    ann, ben, room = chatting_pair(run, NODES[0], NODES[1])
    other = unique("side")
    create_room(ben, other)  # Ben looks at another room
    for i in range(3):
        say(ann, f"unread {i}")
    badge = room_button(ben, room).locator(".badge")
    expect(badge).to_have_text("3")
    expect(ben).to_have_title("(3) Chorus")
    room_button(ben, room).click()
    expect(badge).to_have_count(0)
    expect(ben).to_have_title("Chorus")
    expect(bodies(ben)).to_have_text(["unread 0", "unread 1", "unread 2"])
    # The server's counts agree after a reload (the read cursor was sent).
    ben.reload()
    expect(ben.locator("#conn")).to_have_attribute("data-state", "online")
    expect(room_button(ben, room)).to_be_visible()
    expect(room_button(ben, room).locator(".badge")).to_have_count(0)


def test_a_retried_send_is_stored_once(run):
    """The reply to a send (and its live copy) are lost: the page shows it failed; Retry stores nothing new."""
    ann, ben, room = chatting_pair(run, NODES[0], NODES[1])
    lost = {"cmid": None}

    def route(ws):
        server = ws.connect_to_server()

        def to_server(message):
            frame = json.loads(message)
            if frame.get("event") == "send" and frame["data"]["content"] == "lost in transit" and lost["cmid"] is None:
                lost["cmid"] = frame["data"]["client_msg_id"]
                lost["ref"] = frame.get("ref")
            server.send(message)

        def to_page(message):
            frame = json.loads(message)
            data = frame.get("data") or {}
            if lost["cmid"] and not lost.get("done"):
                if frame.get("event") == "reply" and frame.get("ref") == lost["ref"]:
                    return
                if frame.get("event") == "message" and data.get("client_msg_id") == lost["cmid"]:
                    lost["done"] = True
                    return
            ws.send(message)

        ws.on_message(to_server)
        server.on_message(to_page)

    ann.route_web_socket(re.compile(r".*/api/v1/ws$"), route)
    # The route applies to new sockets: reconnect Ann through it.
    ann.reload()
    expect(ann.locator("#conn")).to_have_attribute("data-state", "online")
    room_button(ann, room).click()
    say(ann, "lost in transit")
    pending = ann.locator("#messages li.msg[data-state=failed]")
    expect(pending).to_contain_text("failed: no answer from the server")
    expect(exact(ben, "lost in transit")).to_have_count(1)  # it was stored: only the answer was lost
    pending.get_by_role("button", name="Retry").click()
    expect(ann.locator("#messages li.msg[data-state=failed]")).to_have_count(0)
    expect(exact(ann, "lost in transit")).to_have_count(1)
    say(ann, "after the retry")
    expect(exact(ben, "after the retry")).to_have_count(1)
    expect(exact(ben, "lost in transit")).to_have_count(1)
    stored = [m["content"] for m in history(NODES[0], token(ann), room_id(ann, room))]
    assert stored.count("lost in transit") == 1, stored


def test_sends_are_paced_and_refused_ones_retried_in_order(run):
    """Another device of Ann's spent her send budget: the page's refused sends wait and go out in order."""
    ann, ben, room = chatting_pair(run, NODES[0], NODES[1])
    rid = room_id(ann, room)
    t = token(ann)
    # Burst the per-user budget (shared by REST and sockets on every node) from "another device".
    spent = False
    for i in range(60):
        req = urllib.request.Request(NODES[1] + f"/api/v1/rooms/{rid}/messages", method="POST",
                                     data=json.dumps({"content": f"elsewhere {i}"}).encode(),
                                     headers={"Content-Type": "application/json", "Authorization": "Bearer " + t})
        try:
            urllib.request.urlopen(req, timeout=30).read()
        except urllib.error.HTTPError as e:
            assert e.code == 429, e.code
            spent = True
            break
    assert spent, "the send budget was never spent: is CHORUS_SEND_BURST the phase's 30?"
    texts = [f"in order {i}" for i in range(8)]
    for text in texts:
        say(ann, text)
    expect(ben.locator("#messages li.msg .body").filter(has_text="in order")).to_have_text(texts, timeout=30_000)
    expect(ann.locator("#messages li.msg[data-state=sent] .body").filter(has_text="in order")).to_have_text(texts)
    stored = [m["content"] for m in history(NODES[0], token(ann), rid) if m["content"].startswith("in order")]
    assert stored == texts, stored


def test_offline_and_back_online(run):
    """The browser's offline event shows at once; coming back online reconnects at once and sends the queue."""
    ann, ben, room = chatting_pair(run, NODES[0], NODES[1])
    ann.context.set_offline(True)
    expect(ann.locator("#conn")).to_have_attribute("data-state", "offline")
    say(ann, "written offline")
    expect(ann.locator("#messages li.msg[data-state=queued]")).to_contain_text("queued")
    ann.context.set_offline(False)
    expect(ann.locator("#conn")).to_have_attribute("data-state", "online")
    expect(exact(ben, "written offline")).to_have_count(1)
    expect(exact(ann, "written offline")).to_have_count(1)


def test_a_silent_connection_is_noticed_and_replaced(run):
    """A half-open connection (frames stop in both directions, nothing closes) is dropped within the
    ping deadline (5 s quiet + 5 s for the pong), and the page connects again."""
    ann = run.user(NODES[0], unique("ann"))
    sockets = []  # per routed socket: whether it has gone silent

    def route(ws):
        server = ws.connect_to_server()
        silent = {"on": False}
        sockets.append(silent)
        ws.on_message(lambda m: None if silent["on"] else server.send(m))
        server.on_message(lambda m: None if silent["on"] else ws.send(m))

    ann.route_web_socket(re.compile(r".*/api/v1/ws$"), route)
    ann.reload()
    expect(ann.locator("#conn")).to_have_attribute("data-state", "online")
    for socket in sockets:  # today's sockets go silent; the next one will work
        socket["on"] = True
    silenced = len(sockets)
    started = time.monotonic()
    # The reconnect can be quicker than a poll of the state: the notice stays for 8 s.
    expect(ann.locator("#notice")).to_contain_text("stopped answering", timeout=20_000)
    took = time.monotonic() - started
    assert took < 11, f"a dead connection was shown connected for {took:.1f} s"
    expect(ann.locator("#conn")).to_have_attribute("data-state", "online")
    assert len(sockets) > silenced and not sockets[-1]["on"], "connected again, but not on a new socket"
    say_to_self = unique("still here ")
    create_room(ann, unique("alive"))
    say(ann, say_to_self)
    expect(ann.locator("#messages li.msg[data-state=sent] .body")).to_have_text([say_to_self])


def test_tokens_are_refreshed_before_they_expire(run):
    """The phase's access tokens live 20 s (CHORUS_ACCESS_TOKEN_TTL_S): the page refreshes at 80% and
    swaps the new token into its socket, which outlives the first token (else 4001 at expiry)."""
    ann = run.user(NODES[0], unique("ann"))
    sockets = []

    def route(ws):
        sockets.append(ws)
        ws.connect_to_server()

    ann.route_web_socket(re.compile(r".*/api/v1/ws$"), route)
    ann.reload()
    expect(ann.locator("#conn")).to_have_attribute("data-state", "online")
    first = page_token(ann)
    exp = json.loads(base64.urlsafe_b64decode(first.split(".")[1] + "==="))["exp"]
    assert exp - time.time() < 30, "tokens live longer than this test expects: CHORUS_ACCESS_TOKEN_TTL_S=20?"
    ann.wait_for_function("t => JSON.parse(sessionStorage.getItem('chorus.session')).access !== t", arg=first,
                          timeout=30_000)
    # The first token's expiry passes with the socket still up (the server closes at expiry otherwise).
    ann.wait_for_function("exp => Date.now() > exp", arg=exp * 1000 + 2000, timeout=30_000)
    expect(ann.locator("#conn")).to_have_attribute("data-state", "online")
    create_room(ann, unique("fresh"))
    say(ann, "still the same socket")
    expect(ann.locator("#messages li.msg[data-state=sent] .body")).to_have_text(["still the same socket"])
    assert len(sockets) == 1, f"{len(sockets)} sockets: the first was closed (4001?) instead of refreshed"


def test_sign_out_everywhere_ends_every_tab(run):
    """Two tabs of one user on two nodes: "sign out everywhere" in one signs the other out too, and says why."""
    name = unique("sam")
    first = run.user(NODES[0], name)
    second = run.page(NODES[1])
    second.fill("#username", name)
    second.fill("#password", PASSWORD)
    second.click("#signInBtn")
    expect(second.locator("#conn")).to_have_attribute("data-state", "online")
    first.click("#signOutAll")
    first.click("dialog button.primary")
    expect(first.locator("#signin")).to_be_visible()
    expect(first.locator("#authError")).to_have_text("")  # it knows why: nothing to explain
    expect(second.locator("#signin")).to_be_visible()
    expect(second.locator("#authError")).to_contain_text("signed out everywhere")
    assert second.evaluate("sessionStorage.getItem('chorus.session')") is None


def test_private_room_members_and_direct_messages(run):
    """A private room with a member added by name, roles, removal; a direct conversation found by search."""
    ann = run.user(NODES[0], unique("ann"))
    ben_name = unique("ben")
    ben = run.user(NODES[1], ben_name)
    room = unique("secret")
    create_room(ann, room, "private")
    ann.click("#membersBtn")
    ann.fill("#addMemberName", ben_name)
    ann.click("#addMember button")
    expect(ann.locator(f"#memberList li[data-user={ben_name}]")).to_be_visible()
    expect(room_button(ben, room)).to_be_visible()  # live, without a reload
    ann.locator(f"#memberList li[data-user={ben_name}]").get_by_role("button", name="Make admin").click()
    expect(ann.locator(f"#memberList li[data-user={ben_name}] .role")).to_have_text("admin")
    ann.locator(f"#memberList li[data-user={ben_name}]").get_by_role("button", name="Remove").click()
    expect(room_button(ben, room)).to_have_count(0)
    # A public room with a password: joining asks for it.
    locked = unique("locked")
    ann.click("#createRoom")
    ann.fill("dialog [name=name]", locked)
    ann.fill("dialog [name=password]", "open sesame")
    ann.click("dialog button.primary")
    expect(ann.locator("#roomTitle")).to_have_text("# " + locked)
    ben.click("#refreshPublic")
    ben.click(f"#public button[aria-label='Join {locked}']")
    ben.fill("dialog [name=password]", "wrong guess")
    ben.click("dialog button.primary")
    expect(ben.locator("#notice")).to_contain_text("Could not join")
    ben.click(f"#public button[aria-label='Join {locked}']")
    ben.fill("dialog [name=password]", "open sesame")
    ben.click("dialog button.primary")
    expect(ben.locator("#roomTitle")).to_have_text("# " + locked)
    # Direct conversation.
    ann_name = ann.locator("#me").inner_text()
    ben.fill("#dmQuery", ann_name)
    ben.click("#dmForm button[type=submit]")
    ben.locator("#dmResults button").first.click()
    # Until the conversation opens, the composer is off: nothing typed can go to the room on screen.
    say(ben, "a direct hello")
    expect(ben.locator("#roomTitle")).to_have_text("@ " + ann_name)
    direct = ann.locator("#rooms button.room-item", has=ann.locator(".name", has_text="@ " + ben_name))
    expect(direct.locator(".badge")).to_have_text("1")
    direct.click()
    expect(exact(ann, "a direct hello")).to_have_count(1)


def test_narrow_screen(run):
    """390×844: the list fits, a long room opens at its newest message with the composer on screen."""
    ann = run.user(NODES[0], unique("ann"))
    room = unique("busy")
    create_room(ann, room)
    rid = room_id(ann, room)
    t = token(ann)
    for i in range(40):
        api(NODES[0], "POST", f"/rooms/{rid}/messages", t, {"content": f"line {i}\nsecond line of {i}"})
    phone = run.user(LB, unique("pho"), viewport={"width": 390, "height": 844})
    join_room(phone, room)
    expect(phone.locator("#messages li.msg").last).to_contain_text("line 39")
    expect(phone.locator("#messages li.msg").last).to_be_in_viewport()
    expect(phone.locator("#text")).to_be_in_viewport()
    box = phone.locator("#composer").bounding_box()
    assert box["y"] + box["height"] <= 844 + 1, box
    assert phone.evaluate("document.documentElement.scrollHeight") <= 844, "the page itself scrolls"
    # Scrolling up loads older messages, keeping the reader's place.
    phone.locator("#scroll").evaluate("s => { s.scrollTop = 0; }")
    expect(phone.locator("#messages li.msg").first).to_contain_text("line 0", timeout=15_000)
    # Scrolled up, a new message is a prompt, not a jump; the prompt goes to it.
    api(NODES[1], "POST", f"/rooms/{rid}/messages", token(ann), {"content": "while you were reading"})
    expect(phone.locator("#newBelow")).to_have_text("1 new message ↓")
    expect(phone.locator("#messages li.msg").last).not_to_be_in_viewport()
    phone.click("#newBelow")
    expect(phone.locator("#messages li.msg").last).to_be_in_viewport()
    expect(phone.locator("#newBelow")).to_be_hidden()
    # Back to the list: it is the whole screen, and usable.
    phone.click("#back")
    expect(phone.locator("#rooms")).to_be_in_viewport()
    box = room_button(phone, room).bounding_box()
    assert box["width"] > 300, box


def test_keyboard_and_labels(run):
    """Every control has a name; rooms open, and messages edit, from the keyboard alone."""
    ann = run.user(NODES[0], unique("ann"))
    room = unique("keys")
    create_room(ann, room)
    say(ann, "edit me by keyboard")
    expect(exact(ann, "edit me by keyboard")).to_have_count(1)
    unlabelled = ann.evaluate("""() => [...document.querySelectorAll('input, textarea, select, button')]
        .filter(e => !e.closest('[hidden]') && !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                     && !e.textContent.trim())
        .map(e => e.outerHTML)""")
    assert not unlabelled, unlabelled
    assert ann.locator("#messages").get_attribute("role") == "log"
    other = unique("keys")
    create_room(ann, other)
    # Tab from the top of the page to the first room's button, Enter opens it.
    ann.locator("#signOutAll").focus()
    for _ in range(10):
        ann.keyboard.press("Tab")
        if ann.evaluate("document.activeElement.dataset.room") == room_id(ann, room):
            break
    else:
        raise AssertionError("Tab never reached the room's button")
    ann.keyboard.press("Enter")
    expect(ann.locator("#roomTitle")).to_have_text("# " + room)
    expect(ann.locator("#text")).to_be_focused()
    expect(exact(ann, "edit me by keyboard")).to_have_count(1)
    # Shift+Tab back into the timeline's own buttons: Edit, by keyboard.
    edit = message(ann, "edit me by keyboard").get_by_role("button", name=re.compile("^Edit"))
    for _ in range(10):
        ann.keyboard.press("Shift+Tab")
        if ann.evaluate("document.activeElement.textContent") == "Edit":
            break
    else:
        raise AssertionError("Shift+Tab never reached an Edit button")
    expect(edit).to_be_focused()
    ann.keyboard.press("Enter")
    ann.keyboard.press("Control+A")
    ann.keyboard.type("edited by keyboard")
    ann.keyboard.press("Enter")
    expect(exact(ann, "edited by keyboard")).to_have_count(1)


def test_node_killed_page_reconnects_and_shows_everything_once(run):
    """Ben's node is killed: his page reconnects (through nginx) to the other node, catches up, and
    shows every message once and in order, including one he wrote while disconnected. Last: one node
    is left."""
    ben = run.user(LB, unique("ben"))
    doomed = node_of(ben)
    survivor = NODES[0] if doomed == "node-2" else NODES[1]
    ann = run.user(survivor, unique("ann"))
    room = unique("failover")
    create_room(ann, room)
    join_room(ben, room)
    say(ann, "before 1")
    expect(exact(ben, "before 1")).to_have_count(1)  # else Ben's could be stored first
    say(ben, "before 2")
    expect(bodies(ben)).to_have_text(["before 1", "before 2"])
    pid = None
    with open(os.path.join(CLUSTER, "pids")) as f:
        for line in f:
            name, p, *_ = line.split()
            if name == doomed:
                pid = int(p)
    assert pid, f"no pid for {doomed}"
    os.kill(pid, signal.SIGKILL)
    expect(ben.locator("#conn")).not_to_have_attribute("data-state", "online")
    say(ben, "written while down")
    for i in range(3):
        say(ann, f"during {i}")
    expect(ben.locator("#conn")).to_have_attribute("data-state", "online", timeout=30_000)
    assert node_of(ben) != doomed
    want = ["before 1", "before 2", "written while down", "during 0", "during 1", "during 2"]
    # Ben's own message may land anywhere among Ann's: compare as sets first, then each once and in seq order.
    expect(bodies(ben)).to_have_count(len(want))
    expect(bodies(ann)).to_have_count(len(want))
    got = bodies(ben).all_inner_texts()
    assert sorted(got) == sorted(want), got
    assert got == bodies(ann).all_inner_texts(), (got, bodies(ann).all_inner_texts())
    seqs = [int(s) for s in ben.locator("#messages li.msg[data-state=sent]").evaluate_all("l => l.map(e => e.dataset.seq)")]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs


TESTS = [
    test_page_is_served_with_strict_headers,
    test_two_users_on_two_nodes_chat,
    test_unread_badges_count_and_clear,
    test_a_retried_send_is_stored_once,
    test_sends_are_paced_and_refused_ones_retried_in_order,
    test_offline_and_back_online,
    test_a_silent_connection_is_noticed_and_replaced,
    test_tokens_are_refreshed_before_they_expire,
    test_sign_out_everywhere_ends_every_tab,
    test_private_room_members_and_direct_messages,
    test_narrow_screen,
    test_keyboard_and_labels,
    test_node_killed_page_reconnects_and_shows_everything_once,  # last: it kills a node
]


def main():
    os.makedirs(OUT, exist_ok=True)
    passed, failed = 0, []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for test in TESTS:
            if ONLY and ONLY not in test.__name__:
                continue
            run = Run(browser)
            started = time.monotonic()
            ok = True
            try:
                test(run)
                if run.problems:
                    raise AssertionError("the page reported problems: " + "; ".join(run.problems))
            except Exception:
                ok = False
                traceback.print_exc()
            run.close(not ok, test.__name__)
            took = time.monotonic() - started
            print(f"{'ok' if ok else 'FAILED'} {test.__name__} ({took:.1f}s)", flush=True)
            if ok:
                passed += 1
            else:
                failed.append(test.__name__)
        browser.close()
    print(f"browser: {passed} passed, {len(failed)} failed" + (f" ({', '.join(failed)}; screenshots in {OUT})" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
