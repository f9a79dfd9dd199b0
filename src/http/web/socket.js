// The WebSocket connection: the token rides in Sec-WebSocket-Protocol (never in the URL), one
// reply per `ref` with a timeout, reconnects with full-jitter exponential backoff (paused while the
// tab is hidden, at once when the browser comes back online), and a dead connection noticed by an
// application ping that gets no answer in time.

const PING_EVERY_MS = 5000; // an application ping after this long without a frame...
const PONG_WITHIN_MS = 5000; // ...and nothing heard within this long after it: the connection is dead
const READY_WITHIN_MS = 10000; // a connection that has not said `ready` by then is given up
const STABLE_MS = 10000; // a session up this long resets the backoff

export class Connection {
  constructor(session, handlers) {
    this.session = session;
    this.on = handlers; // {frame(f), ready(data), state(state, detail), closed(code, reason)}
    this.ws = null;
    this.ready = false;
    this.stopped = true;
    this.attempt = 0;
    this.nextRef = 0;
    this.replies = new Map();
    this.retryTimer = null;
    this.pingTimer = null;
    this.deadTimer = null;
    this.readyAt = 0;
    window.addEventListener('offline', () => this.wentOffline());
    window.addEventListener('online', () => this.cameOnline());
    document.addEventListener('visibilitychange', () => {
      if (!document.hidden && this.waitingForVisible) {
        this.waitingForVisible = false;
        this.connect();
      }
    });
  }

  start() {
    this.stopped = false;
    this.attempt = 0;
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this.drop(1000, 'signed out');
    this.on.state('signed-out');
  }

  request(event, data, timeoutMs = 15000) {
    return new Promise((resolve, reject) => {
      if (!this.ready) return reject(Object.assign(new Error('not connected'), { transport: true }));
      const ref = 'r' + ++this.nextRef;
      const timer = setTimeout(() => {
        this.replies.delete(ref);
        reject(Object.assign(new Error('no answer from the server'), { timeout: true }));
      }, timeoutMs);
      this.replies.set(ref, { resolve, reject, timer });
      this.ws.send(JSON.stringify({ event, data, ref }));
    });
  }

  emit(event, data) {
    if (this.ready) this.ws.send(JSON.stringify({ event, data }));
  }

  async connect() {
    clearTimeout(this.retryTimer);
    if (this.stopped || this.ws || this.connecting) return;
    if (!navigator.onLine) return this.on.state('offline');
    this.connecting = true;
    try {
      // A token that is about to expire would be refused (or closed with 4001 right after ready).
      if (this.session.auth && this.session.auth.exp - Date.now() < 10000) await this.session.refresh();
    } catch (e) {
      this.connecting = false;
      return this.retry(0, 'could not refresh the session');
    }
    this.connecting = false;
    if (this.stopped || this.ws || !this.session.token) return;
    this.on.state('connecting');
    const scheme = location.protocol === 'https:' ? 'wss://' : 'ws://';
    const ws = new WebSocket(`${scheme}${location.host}/api/v1/ws`, ['chorus.v1', 'chorus.bearer.' + this.session.token]);
    this.ws = ws;
    // An upgrade that hangs (a black-holed address) or a socket that never says `ready`.
    this.deadTimer = setTimeout(() => { if (this.ws === ws) this.closed(4000, 'no answer', true); }, READY_WITHIN_MS);
    ws.onmessage = (e) => {
      if (this.ws !== ws) return;
      this.heard();
      let frame;
      try { frame = JSON.parse(e.data); } catch (_) { return; }
      this.handle(frame);
    };
    ws.onclose = (e) => {
      if (this.ws === ws) this.closed(e.code, e.reason, this.readyAt === 0);
    };
  }

  handle(frame) {
    if (frame.event === 'ready') {
      this.ready = true;
      this.readyAt = Date.now();
      this.heard();
      this.on.state('online', frame.data.node_id);
      this.on.ready(frame.data);
      return;
    }
    if (frame.event === 'reply') {
      const pending = this.replies.get(frame.ref);
      if (!pending) return;
      this.replies.delete(frame.ref);
      clearTimeout(pending.timer);
      const d = frame.data || {};
      if (d.ok) pending.resolve(d.result);
      else pending.reject(Object.assign(new Error((d.error && d.error.message) || 'failed'), { code: d.error && d.error.code }));
      return;
    }
    if (frame.event !== 'pong') this.on.frame(frame);
  }

  // Something arrived: the connection lives. Ping again after a quiet spell; no answer within
  // PONG_WITHIN_MS means a half-open connection, which only a timeout can tell.
  heard() {
    clearTimeout(this.pingTimer);
    clearTimeout(this.deadTimer);
    this.pingTimer = setTimeout(() => {
      if (!this.ready) return;
      this.ws.send('{"event":"ping"}');
      this.deadTimer = setTimeout(() => this.closed(4000, 'no answer to ping', false), PONG_WITHIN_MS);
    }, PING_EVERY_MS);
  }

  // Forget the socket (its late events are ignored) and fail what waits on it.
  drop(code, reason) {
    clearTimeout(this.pingTimer);
    clearTimeout(this.deadTimer);
    const ws = this.ws;
    this.ws = null;
    this.ready = false;
    this.readyAt = 0;
    if (ws) {
      ws.onmessage = ws.onclose = null;
      try { ws.close(code >= 3000 || code === 1000 ? code : 1000, reason); } catch (_) { /* already closing */ }
    }
    for (const p of this.replies.values()) {
      clearTimeout(p.timer);
      p.reject(Object.assign(new Error('connection lost'), { transport: true }));
    }
    this.replies.clear();
  }

  closed(code, reason, beforeReady) {
    const upFor = this.readyAt ? Date.now() - this.readyAt : 0;
    this.drop(code === 4000 ? 4000 : 1000, 'gone');
    if (upFor > STABLE_MS) this.attempt = 0;
    if (this.stopped) return;
    this.on.closed(code, reason);
    if (code === 4001 && reason === 'token_revoked') return; // signed out everywhere: the app ends the session
    if (code === 4001) {
      this.session.refresh().then(() => this.retry(code, 'token expired', 1), () => this.retry(code));
      return;
    }
    if (beforeReady && this.session.auth) {
      // The upgrade failed: the node may be down, or the token refused. A REST call tells, and
      // refreshes the token on a 401.
      const again = () => this.retry(code);
      this.session.call('GET', '/users/me').then(again, again);
      return;
    }
    if (code === 4429) return this.retry(code, 'too many open sessions', 30000);
    this.retry(code);
  }

  retry(code, why, fixed) {
    if (this.stopped) return;
    clearTimeout(this.retryTimer);
    // 1012 (a node draining): another node is ready now; elsewhere full jitter, 0.5 s doubling to 30 s.
    const delay = fixed || (code === 1012 ? Math.random() * 1000 : Math.random() * Math.min(30000, 500 * 2 ** this.attempt++));
    if (!navigator.onLine) return this.on.state('offline');
    this.on.state('waiting', { code, why, at: Date.now() + delay });
    this.retryTimer = setTimeout(() => {
      if (document.hidden) {
        this.waitingForVisible = true; // no reconnect storm from background tabs
        this.on.state('paused');
        return;
      }
      this.connect();
    }, delay);
  }

  wentOffline() {
    if (this.stopped) return;
    clearTimeout(this.retryTimer);
    if (this.ws) this.drop(1000, 'offline');
    this.on.state('offline');
  }

  cameOnline() {
    if (this.stopped) return;
    this.attempt = 0;
    this.connect();
  }

  reconnectNow() {
    if (this.stopped) return;
    this.attempt = 0;
    if (!this.ws) this.connect();
  }
}
