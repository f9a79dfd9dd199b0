//! Benchmark peer for Chorus, in Rust: a Socket.IO v5 server on `socketioxide`, nodes joined by
//! `socketioxide-redis`, storage through `tokio-postgres`. It does per message what the Node.js peer
//! (`../socketio/server.js`) does, and speaks the same events, so the load generator's `socketio`
//! protocol drives both unchanged:
//!   connect:    verify the HS256 JWT (CONNECT's `auth.token`, `?token=` or `Authorization: Bearer`)
//!   join_rooms: one SELECT for the caller's memberships among the listed rooms, join each
//!   send:       validate, one INSERT ... (CTE bumping rooms.last_seq) statement, broadcast the stored
//!               message to the room through the Redis adapter (one PUBLISH), ack the sender with it.
//! One process = one node; run several on the same Redis and prefix (`run`).

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use socketioxide::adapter::Adapter;
use socketioxide::extract::{AckSender, Data, SocketRef, State, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::{SocketIo, TransportType};
use socketioxide_redis::{RedisAdapter, RedisAdapterConfig, RedisAdapterCtr};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Statement};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------------
// Configuration (environment only, the Node peer's names)
// ---------------------------------------------------------------------------------------------------

struct Config {
    host: String,
    port: u16,
    node_id: String,
    database_url: String,
    redis_url: String,
    jwt_secret: String,
    prefix: String,
    path: String,
    db_pool_size: usize,
    max_message_bytes: usize,
    max_frame_bytes: u64,
    ping_interval: Duration,
    ping_timeout: Duration,
    /// Runtime threads: 1 (default) is one event loop per process, as a Node process has.
    workers: usize,
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_owned())
}

fn required(name: &str) -> Result<String, String> {
    std::env::var(name).ok().filter(|v| !v.is_empty()).ok_or_else(|| format!("{name} is not set"))
}

fn number<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
    match std::env::var(name).ok().filter(|v| !v.is_empty()) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| format!("{name} must be a non-negative integer")),
    }
}

impl Config {
    fn from_env() -> Result<Config, String> {
        let config = Config {
            host: env_or("PEER_HOST", "127.0.0.1"),
            port: number("PORT", 9091)?,
            node_id: env_or("PEER_NODE_ID", &format!("peer-{}", std::process::id())),
            database_url: required("DATABASE_URL")?,
            redis_url: env_or("REDIS_URL", "redis://127.0.0.1:6379/"),
            jwt_secret: required("JWT_SECRET")?,
            // Redis channel prefix of the adapter.
            prefix: env_or("PEER_PREFIX", "chorus-peer"),
            // The same URL path as Chorus's WebSocket and the Node peer.
            path: env_or("PEER_PATH", "/api/v1/ws"),
            db_pool_size: number("PEER_DB_POOL_SIZE", 16)?,
            max_message_bytes: number("PEER_MAX_MESSAGE_BYTES", 4096)?,
            max_frame_bytes: number("PEER_MAX_FRAME_BYTES", 64 * 1024)?,
            ping_interval: Duration::from_millis(number("PEER_PING_INTERVAL_MS", 15000)?),
            ping_timeout: Duration::from_millis(number("PEER_PING_TIMEOUT_MS", 15000)?),
            workers: number("PEER_WORKERS", 1)?,
        };
        if config.jwt_secret.len() < 16 {
            return Err("JWT_SECRET must be at least 16 bytes".into());
        }
        if config.db_pool_size == 0 || config.workers == 0 {
            return Err("PEER_DB_POOL_SIZE and PEER_WORKERS must be at least 1".into());
        }
        Ok(config)
    }
}

// ---------------------------------------------------------------------------------------------------
// PostgreSQL: Chorus's own schema, queried with the Node peer's (= Chorus's) statements
// ---------------------------------------------------------------------------------------------------

/// Identical to Chorus's db::messages::insert_next and the Node peer's INSERT_NEXT: allocate the
/// room's next seq and store the message in one statement (one round trip, autocommit).
const INSERT_NEXT: &str = "WITH next AS (
     UPDATE rooms SET last_seq = last_seq + 1
     WHERE id = $1 AND deleted_at IS NULL
       AND EXISTS (SELECT 1 FROM room_members WHERE room_id = $1 AND user_id = $2)
     RETURNING last_seq)
 INSERT INTO messages (id, room_id, seq, sender_id, content, client_msg_id)
 SELECT $3, $1, next.last_seq, $2, $4, $5 FROM next
 RETURNING id, room_id, seq, sender_id, content, client_msg_id, created_at, edited_at, deleted_at";

/// Only on the idempotent-retry path.
const BY_CLIENT_MSG_ID: &str =
    "SELECT id, room_id, seq, sender_id, content, client_msg_id, created_at, edited_at, deleted_at
 FROM messages WHERE sender_id = $1 AND client_msg_id = $2 LIMIT 1";

/// Membership check for join_rooms: one query for the whole list.
const MY_ROOMS: &str = "SELECT rm.room_id, r.last_seq FROM room_members rm
 JOIN rooms r ON r.id = rm.room_id AND r.deleted_at IS NULL
 WHERE rm.user_id = $1 AND rm.room_id = ANY($2::uuid[])";

/// One connection with its statements prepared once (the Node peer's named statements).
struct Conn {
    client: Client,
    insert_next: Statement,
    by_client_msg_id: Statement,
    my_rooms: Statement,
}

/// `PEER_DB_POOL_SIZE` connections (the Node peer's `pg.Pool` max), handed out in turn; a query on
/// a busy connection queues behind the one in flight, as a pool checkout would wait.
struct Db {
    conns: Vec<Conn>,
    next: AtomicUsize,
}

impl Db {
    async fn connect(config: &Config) -> Result<Db, String> {
        let mut conns = Vec::with_capacity(config.db_pool_size);
        for _ in 0..config.db_pool_size {
            let (client, connection) = tokio_postgres::connect(&config.database_url, NoTls)
                .await
                .map_err(|e| format!("connect to PostgreSQL: {e}"))?;
            let node = config.node_id.clone();
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    eprintln!("[{node}] PostgreSQL connection ended: {e}");
                }
            });
            client.batch_execute("SET TimeZone = 'UTC'").await.map_err(|e| e.to_string())?;
            let prepare = |sql| client.prepare(sql);
            let (insert_next, by_client_msg_id, my_rooms) = (
                prepare(INSERT_NEXT).await.map_err(|e| format!("prepare (is Chorus's schema there?): {e}"))?,
                prepare(BY_CLIENT_MSG_ID).await.map_err(|e| e.to_string())?,
                prepare(MY_ROOMS).await.map_err(|e| e.to_string())?,
            );
            conns.push(Conn { client, insert_next, by_client_msg_id, my_rooms });
        }
        Ok(Db { conns, next: AtomicUsize::new(0) })
    }

    fn conn(&self) -> &Conn {
        &self.conns[self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len()]
    }
}

/// Chorus's Message JSON: {id, room_id, seq, sender_id, content, client_msg_id, created_at,
/// edited_at, deleted}, times RFC 3339 UTC with microseconds.
#[derive(Serialize)]
struct Message {
    id: Uuid,
    room_id: Uuid,
    seq: i64,
    sender_id: Uuid,
    content: String,
    client_msg_id: Option<String>,
    created_at: String,
    edited_at: Option<String>,
    deleted: bool,
}

fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

impl Message {
    fn from_row(r: &tokio_postgres::Row) -> Result<Message, tokio_postgres::Error> {
        Ok(Message {
            id: r.try_get("id")?,
            room_id: r.try_get("room_id")?,
            seq: r.try_get("seq")?,
            sender_id: r.try_get("sender_id")?,
            content: r.try_get("content")?,
            client_msg_id: r.try_get("client_msg_id")?,
            created_at: rfc3339(r.try_get("created_at")?),
            edited_at: r.try_get::<_, Option<chrono::DateTime<chrono::Utc>>>("edited_at")?.map(rfc3339),
            deleted: r.try_get::<_, Option<chrono::DateTime<chrono::Utc>>>("deleted_at")?.is_some(),
        })
    }
}

// ---------------------------------------------------------------------------------------------------
// Replies: the ack payload mirrors Chorus's `reply` data, {ok, result} or {ok, error: {code, message}}
// ---------------------------------------------------------------------------------------------------

enum ApiError {
    Api(&'static str, String),
    Internal(String),
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(e: tokio_postgres::Error) -> Self {
        ApiError::Internal(e.to_string())
    }
}

fn validation(message: &str) -> ApiError {
    ApiError::Api("validation", message.to_owned())
}

fn not_found() -> ApiError {
    ApiError::Api("room.not_found", "No such room, or you are not a member.".into())
}

fn reply(node: &str, what: &str, result: Result<Value, ApiError>) -> Value {
    match result {
        Ok(result) => json!({"ok": true, "result": result}),
        Err(ApiError::Api(code, message)) => json!({"ok": false, "error": {"code": code, "message": message}}),
        Err(ApiError::Internal(e)) => {
            eprintln!("[{node}] {what}: {e}");
            json!({"ok": false, "error": {"code": "internal", "message": "Something went wrong on our side."}})
        }
    }
}

fn parse_uuid(v: &Value) -> Option<Uuid> {
    // The Node peer's UUID_RE: the hyphenated form only.
    let s = v.as_str().filter(|s| s.len() == 36)?;
    Uuid::parse_str(s).ok()
}

struct Send {
    room_id: Uuid,
    content: String,
    client_msg_id: Option<String>,
}

/// Chorus's validate::content and validate::client_msg_id (as the Node peer's validateSend).
fn validate_send(data: &Value, max_bytes: usize) -> Result<Send, ApiError> {
    let Value::Object(o) = data else { return Err(validation("send takes an object")) };
    let room_id = o.get("room_id").and_then(parse_uuid).ok_or_else(|| validation("room_id must be a UUID"))?;
    let Some(Value::String(content)) = o.get("content") else { return Err(validation("content must be a string")) };
    if content.len() > max_bytes {
        return Err(ApiError::Api("message.too_large", format!("A message may hold at most {max_bytes} bytes.")));
    }
    if content.trim().is_empty() {
        return Err(validation("content must not be empty"));
    }
    let client_msg_id = match o.get("client_msg_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id))
            if !id.is_empty() && id.encode_utf16().count() <= 64 && !id.chars().any(|c| c.is_control()) =>
        {
            Some(id.clone())
        }
        Some(_) => return Err(validation("client_msg_id must be 1-64 printable characters")),
    };
    Ok(Send { room_id, content: content.clone(), client_msg_id })
}

// ---------------------------------------------------------------------------------------------------
// Socket.IO handlers
// ---------------------------------------------------------------------------------------------------

struct App {
    config: Config,
    db: Db,
    jwt: jsonwebtoken::DecodingKey,
    validation: jsonwebtoken::Validation,
}

/// Who a socket is: set by the authentication middleware, read by every event.
#[derive(Clone)]
struct User {
    id: Uuid,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[allow(dead_code)] // required by the validation; read there
    exp: u64,
}

/// A refused CONNECT: the client gets CONNECT_ERROR with this code as the message.
#[derive(Debug)]
struct Refused(&'static str);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// The token: CONNECT's `auth.token`, else `?token=`, else `Authorization: Bearer`.
fn token_of<A: Adapter>(s: &SocketRef<A>, auth: Option<Value>) -> Option<String> {
    if let Some(t) = auth.as_ref().and_then(|a| a.get("token")).and_then(Value::as_str) {
        return Some(t.to_owned());
    }
    let parts = s.req_parts();
    if let Some(q) = parts.uri.query() {
        for pair in q.split('&') {
            if let Some(t) = pair.strip_prefix("token=") {
                return Some(t.to_owned());
            }
        }
    }
    parts
        .headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned)
}

/// Authentication, once per connection, before CONNECT is accepted.
async fn authenticate<A: Adapter>(
    s: SocketRef<A>,
    TryData(auth): TryData<Value>,
    State(app): State<Arc<App>>,
) -> Result<(), Refused> {
    let token = token_of(&s, auth.ok()).filter(|t| !t.is_empty()).ok_or(Refused("auth.unauthenticated"))?;
    let claims = jsonwebtoken::decode::<Claims>(&token, &app.jwt, &app.validation).map_err(|e| match e.kind() {
        jsonwebtoken::errors::ErrorKind::ExpiredSignature => Refused("auth.token_expired"),
        _ => Refused("auth.unauthenticated"),
    })?;
    let id = parse_uuid(&Value::String(claims.claims.sub)).ok_or(Refused("auth.unauthenticated"))?;
    s.extensions.insert(User { id });
    Ok(())
}

async fn on_connect<A: Adapter>(s: SocketRef<A>) {
    s.on("join_rooms", join_rooms::<A>);
    s.on("send", send::<A>);
}

/// join_rooms [room_id, ...] -> ack {ok, result: {rooms: [{room_id, last_seq}]}}. Membership is checked
/// here, once; the joined rooms are the per-socket cache `send` consults (as the Node peer).
async fn join_rooms<A: Adapter>(
    s: SocketRef<A>,
    Data(rooms): Data<Value>,
    ack: AckSender<A>,
    State(app): State<Arc<App>>,
) {
    let result = async {
        let user = s.extensions.get::<User>().ok_or_else(|| ApiError::Internal("no user".into()))?;
        let ids = match &rooms {
            Value::Array(list) if list.len() <= 1000 => list.iter().map(parse_uuid).collect::<Option<Vec<Uuid>>>(),
            _ => None,
        }
        .ok_or_else(|| validation("join_rooms takes an array of at most 1000 room ids"))?;
        let conn = app.db.conn();
        let rows = conn.client.query(&conn.my_rooms, &[&user.id, &ids]).await?;
        let mut joined = Vec::with_capacity(rows.len());
        let mut names = Vec::with_capacity(rows.len());
        for row in &rows {
            let (room_id, last_seq): (Uuid, i64) = (row.try_get(0)?, row.try_get(1)?);
            names.push(room_id.to_string());
            joined.push(json!({"room_id": room_id, "last_seq": last_seq}));
        }
        s.join(names);
        Ok(json!({"rooms": joined}))
    }
    .await;
    let _ = ack.send(&reply(&app.config.node_id, "join_rooms", result));
}

/// send {room_id, content, client_msg_id?} -> ack {ok, result: message}; the room gets `message`
/// <message> on every node (the sender's own socket included).
async fn send<A: Adapter>(s: SocketRef<A>, Data(data): Data<Value>, ack: AckSender<A>, State(app): State<Arc<App>>) {
    let result = async {
        let user = s.extensions.get::<User>().ok_or_else(|| ApiError::Internal("no user".into()))?;
        let m = validate_send(&data, app.config.max_message_bytes)?;
        let room = m.room_id.to_string();
        // Cached membership: a room this socket has not joined is refused without a database trip.
        if !s.rooms().iter().any(|r| *r == room) {
            return Err(not_found());
        }
        let conn = app.db.conn();
        let id = Uuid::now_v7();
        let params: [&(dyn ToSql + Sync); 5] = [&m.room_id, &user.id, &id, &m.content, &m.client_msg_id];
        let row = match conn.client.query_opt(&conn.insert_next, &params).await {
            Ok(row) => row,
            Err(e) => {
                // Idempotent retry: the same (sender, client_msg_id) answers the stored message,
                // stores and broadcasts nothing.
                let duplicate = e.as_db_error().is_some_and(|d| {
                    d.code() == &tokio_postgres::error::SqlState::UNIQUE_VIOLATION
                        && d.constraint() == Some("messages_idempotency_unique")
                });
                if !duplicate {
                    return Err(e.into());
                }
                let found = conn.client.query_opt(&conn.by_client_msg_id, &[&user.id, &m.client_msg_id]).await?;
                let stored = Message::from_row(&found.ok_or(ApiError::Internal(e.to_string()))?)?;
                if stored.room_id != m.room_id {
                    return Err(validation("client_msg_id was already used for a message in another room"));
                }
                return serde_json::to_value(stored).map_err(|e| ApiError::Internal(e.to_string()));
            }
        };
        // No row: the room is gone or the sender was removed since join_rooms.
        let message = Message::from_row(&row.ok_or_else(not_found)?)?;
        // Persist, then publish, then acknowledge (Chorus's and the Node peer's order).
        if let Err(e) = s.within(room).emit("message", &message).await {
            eprintln!("[{}] broadcast: {e}", app.config.node_id);
        }
        serde_json::to_value(message).map_err(|e| ApiError::Internal(e.to_string()))
    }
    .await;
    let _ = ack.send(&reply(&app.config.node_id, "send", result));
}

// ---------------------------------------------------------------------------------------------------
// Start and stop
// ---------------------------------------------------------------------------------------------------

/// Everything that is not Socket.IO's path: `/healthz` and `/readyz` for the run script, else 404.
async fn other(req: Request<hyper::body::Incoming>, node: Arc<str>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body) = match req.uri().path() {
        "/healthz" | "/readyz" => (StatusCode::OK, format!("{{\"status\":\"ok\",\"node_id\":\"{node}\"}}")),
        _ => (StatusCode::NOT_FOUND, "{\"code\":\"not_found\",\"message\":\"No such route.\"}".to_owned()),
    };
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = status;
    res.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    Ok(res)
}

async fn serve(config: Config) -> Result<(), String> {
    let db = Db::connect(&config).await?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    // Chorus's TokenKeys: HS256 only, 5 s leeway, exp and sub required.
    validation.leeway = 5;
    validation.set_required_spec_claims(&["exp", "sub"]);
    let app = Arc::new(App {
        jwt: jsonwebtoken::DecodingKey::from_secret(config.jwt_secret.as_bytes()),
        validation,
        db,
        config,
    });
    let config = &app.config;

    // The adapter speaks RESP3 (Redis 7+): a publisher connection and a subscriber connection.
    let separator = if config.redis_url.contains('?') { '&' } else { '?' };
    let redis =
        redis::Client::open(format!("{}{separator}protocol=resp3", config.redis_url)).map_err(|e| e.to_string())?;
    let adapter =
        RedisAdapterCtr::new_with_redis_config(&redis, RedisAdapterConfig::new().with_prefix(config.prefix.clone()))
            .await
            .map_err(|e| format!("connect to Redis: {e}"))?;
    let node: Arc<str> = config.node_id.clone().into();
    let inner = {
        let node = node.clone();
        service_fn(move |req| other(req, node.clone()))
    };
    let (svc, io) = SocketIo::builder()
        .req_path(config.path.clone())
        // WebSocket only, as the Node peer: no long-polling, no sticky sessions needed.
        .transports([TransportType::Websocket])
        .ping_interval(config.ping_interval)
        .ping_timeout(config.ping_timeout)
        .max_payload(config.max_frame_bytes)
        .ws_max_message_size(config.max_frame_bytes as usize)
        .with_state(app.clone())
        .with_adapter::<RedisAdapter<_>>(adapter)
        .build_with_inner_svc(inner);
    io.ns("/", on_connect.with(authenticate)).await.map_err(|e| format!("Redis adapter: {e}"))?;

    let listener = tokio::net::TcpListener::bind((config.host.as_str(), config.port))
        .await
        .map_err(|e| format!("bind {}:{}: {e}", config.host, config.port))?;
    eprintln!(
        "[{}] listening on {}:{} path {}/ (redis prefix {}, {} worker(s), {} PostgreSQL connections)",
        config.node_id, config.host, config.port, config.path, config.prefix, config.workers, config.db_pool_size
    );
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(|e| e.to_string())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let svc = svc.clone();
                tokio::spawn(async move {
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).with_upgrades().await;
                });
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    eprintln!("[{}] closing", config.node_id);
    let _ = tokio::time::timeout(Duration::from_secs(5), io.close()).await;
    Ok(())
}

fn main() {
    let result = Config::from_env().and_then(|config| {
        let runtime = if config.workers == 1 {
            tokio::runtime::Builder::new_current_thread().enable_all().build()
        } else {
            tokio::runtime::Builder::new_multi_thread().worker_threads(config.workers).enable_all().build()
        }
        .map_err(|e| e.to_string())?;
        runtime.block_on(serve(config))
    });
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
