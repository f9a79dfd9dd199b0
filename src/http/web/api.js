// REST and the signed-in session: tokens kept per tab (sessionStorage, so two tabs can be two
// users), refreshed at 80% of their lifetime, and a 401 answered by one refresh and one retry.

const API = '/api/v1';
const KEY = 'chorus.session';

export class ApiError extends Error {
  constructor(status, body) {
    let message = (body && body.message) || `HTTP ${status}`;
    if (body && Array.isArray(body.details)) message += ': ' + body.details.map((d) => `${d.field} ${d.message}`).join('; ');
    super(message);
    this.status = status;
    this.code = body && body.code;
  }
}

export class Session {
  constructor() {
    this.auth = JSON.parse(sessionStorage.getItem(KEY) || 'null'); // {access, refresh, exp, life, user}
    this.refreshing = null;
    this.timer = null;
    this.onTokens = () => {}; // a new access token (the socket swaps it in with `auth`)
    this.onEnded = () => {}; // the session is over (refresh refused): sign in again
  }

  get user() { return this.auth && this.auth.user; }
  get token() { return this.auth && this.auth.access; }
  get signedIn() { return !!(this.auth && this.auth.refresh); }

  save(pair) {
    const life = pair.expires_in * 1000;
    this.auth = { access: pair.access_token, refresh: pair.refresh_token, exp: Date.now() + life, life,
      user: pair.user || (this.auth && this.auth.user) };
    sessionStorage.setItem(KEY, JSON.stringify(this.auth));
    this.schedule();
  }

  setUser(user) {
    if (!this.auth) return;
    this.auth.user = user;
    sessionStorage.setItem(KEY, JSON.stringify(this.auth));
  }

  schedule() {
    clearTimeout(this.timer);
    if (!this.auth) return;
    const left = this.auth.exp - Date.now();
    const at = Math.max(1000, left - this.auth.life * 0.2);
    this.timer = setTimeout(() => this.refresh().catch(() => {
      if (this.auth) this.timer = setTimeout(() => this.schedule(), 5000);
    }), at);
  }

  // One refresh at a time; every caller waits for the same one.
  refresh() {
    if (this.refreshing) return this.refreshing;
    if (!this.auth) return Promise.reject(new Error('signed out'));
    this.refreshing = (async () => {
      const r = await fetch(API + '/auth/refresh', { method: 'POST', headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ refresh_token: this.auth.refresh }) });
      const body = await r.json().catch(() => ({}));
      if (r.status === 429) {
        const wait = Number(r.headers.get('Retry-After') || 5);
        await new Promise((ok) => setTimeout(ok, wait * 1000));
        throw new ApiError(r.status, body);
      }
      if (!r.ok) {
        if (r.status === 401 || r.status === 400) this.end(`Your session ended (${body.code || r.status}): please sign in again.`);
        throw new ApiError(r.status, body);
      }
      this.save(body);
      this.onTokens(this.auth.access);
    })().finally(() => { this.refreshing = null; });
    return this.refreshing;
  }

  async call(method, path, body, retried = false) {
    const own = !path.startsWith('/auth/') || path === '/auth/logout-all';
    if (own && this.auth && this.auth.exp - Date.now() < 5000) await this.refresh().catch(() => {});
    const headers = {};
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (own && this.auth) headers.Authorization = 'Bearer ' + this.auth.access;
    const r = await fetch(API + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    if (r.status === 204) return null;
    const data = await r.json().catch(() => ({}));
    if (r.status === 401 && own && this.auth && !retried && data.code !== 'auth.token_revoked') {
      await this.refresh();
      return this.call(method, path, body, true);
    }
    if (!r.ok) throw new ApiError(r.status, data);
    return data;
  }

  async signIn(username, password, register) {
    if (register) await this.call('POST', '/auth/register', { username, password });
    this.save(await this.call('POST', '/auth/login', { username, password }));
  }

  // Sign out here (this refresh family) or everywhere (every session of the user, every node).
  async signOut(everywhere) {
    const auth = this.auth;
    if (!auth) return;
    try {
      if (everywhere) await this.call('POST', '/auth/logout-all');
      else {
        await fetch(API + '/auth/logout', { method: 'POST',
          headers: { 'Content-Type': 'application/json', Authorization: 'Bearer ' + auth.access },
          body: JSON.stringify({ refresh_token: auth.refresh }) });
      }
    } finally {
      this.end('');
    }
  }

  end(message) {
    clearTimeout(this.timer);
    const was = !!this.auth;
    this.auth = null;
    sessionStorage.removeItem(KEY);
    if (was) this.onEnded(message);
  }
}
