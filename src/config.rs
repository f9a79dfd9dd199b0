//! Settings, read once at start-up from the environment (and `.env`), validated before anything binds.
//!
//! `chorus --help` prints every setting with its variable name and default: clap's `env` support is
//! the single source of both the parser and the documentation.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Clone, Parser)]
#[command(name = "chorus", version, about = "Chorus chat server node", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Serve HTTP and WebSocket traffic (the default).
    Serve,
    /// Apply pending database migrations and exit (for a Kubernetes Job).
    Migrate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Environment {
    Dev,
    Production,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum JwtAlgorithm {
    #[value(name = "HS256")]
    Hs256,
    #[value(name = "RS256")]
    Rs256,
    #[value(name = "EdDSA")]
    EdDsa,
}

/// How `REDIS_URL` is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RedisMode {
    /// One Redis server.
    Single,
    /// The primary that Redis Sentinel names; `REDIS_URL` lists the Sentinels.
    Sentinel,
    /// Redis Cluster (7+), with sharded pub/sub; `REDIS_URL` lists seed nodes.
    Cluster,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// `dev` allows a built-in JWT secret; `production` requires a real one.
    #[arg(long, env = "CHORUS_ENV", value_enum, default_value = "production")]
    pub env: Environment,

    /// PostgreSQL connection URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/chorus",
        hide_default_value = false
    )]
    pub database_url: String,

    /// A PostgreSQL read replica for history pages going back (`before_seq`). A page is read there
    /// only if the replica already has the seq the client asks below and the caller's membership;
    /// otherwise, and for the newest page, from the primary.
    #[arg(long, env = "CHORUS_DATABASE_REPLICA_URL")]
    pub database_replica_url: Option<String>,

    /// Redis connection URL (pub/sub fan-out and presence). With CHORUS_REDIS_MODE=sentinel, the
    /// Sentinels' URLs, comma-separated; their credentials and database are the primary's too.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379/")]
    pub redis_url: String,

    /// How REDIS_URL is read: `single` (one server), `sentinel` (the primary that the Sentinels
    /// listed in REDIS_URL name CHORUS_REDIS_SENTINEL_MASTER, followed through failovers) or
    /// `cluster` (Redis Cluster 7+: REDIS_URL lists seed nodes; rooms go through sharded pub/sub).
    #[arg(long, env = "CHORUS_REDIS_MODE", value_enum, default_value = "single")]
    pub redis_mode: RedisMode,

    /// In cluster mode, how many partitions rooms, users and presence keys are spread over; each
    /// is a hash tag, so one slot. Every node of a cluster must use the same number.
    #[arg(long, env = "CHORUS_REDIS_PARTITIONS", default_value_t = 128)]
    pub redis_partitions: u16,

    /// The primary's name as the Sentinels monitor it (`sentinel monitor <name> …`); required with
    /// CHORUS_REDIS_MODE=sentinel.
    #[arg(long, env = "CHORUS_REDIS_SENTINEL_MASTER")]
    pub redis_sentinel_master: Option<String>,

    /// Prefix for every Redis key and channel, so several clusters (or test runs) can share one Redis.
    #[arg(long, env = "CHORUS_REDIS_PREFIX", default_value = "chorus:")]
    pub redis_prefix: String,

    /// Secret for HS256 access tokens (at least 32 bytes). Required unless CHORUS_ENV=dev.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Signing algorithm for access tokens.
    #[arg(long, env = "CHORUS_JWT_ALG", value_enum, default_value = "HS256")]
    pub jwt_alg: JwtAlgorithm,

    /// PEM private key for RS256/EdDSA signing.
    #[arg(long, env = "CHORUS_JWT_PRIVATE_KEY_FILE")]
    pub jwt_private_key_file: Option<PathBuf>,

    /// PEM public key for RS256/EdDSA verification.
    #[arg(long, env = "CHORUS_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,

    /// Lifetime of an access token, in seconds.
    #[arg(long, env = "CHORUS_ACCESS_TOKEN_TTL_S", default_value_t = 900)]
    pub access_token_ttl_s: u64,

    /// Lifetime of a refresh token, in seconds.
    #[arg(long, env = "CHORUS_REFRESH_TOKEN_TTL_S", default_value_t = 30 * 24 * 3600)]
    pub refresh_token_ttl_s: u64,

    /// Address to listen on.
    #[arg(long, env = "CHORUS_BIND", default_value = "0.0.0.0:8080")]
    pub bind: SocketAddr,

    /// This node's name in logs, metrics and `ready` events. Default: the host name.
    #[arg(long, env = "CHORUS_NODE_ID")]
    pub node_id: Option<String>,

    /// HTTP worker threads. Default: one per core.
    #[arg(long, env = "CHORUS_WORKERS")]
    pub workers: Option<usize>,

    /// Maximum PostgreSQL connections in this node's pool.
    #[arg(long, env = "CHORUS_DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: usize,

    /// Group commit: how many batches of sends may be written to PostgreSQL at once (each holds a
    /// pooled connection while it writes). Default: 4, or half of CHORUS_DB_POOL_SIZE if that is
    /// fewer (at least 1). Set, it must be below CHORUS_DB_POOL_SIZE.
    #[arg(long, env = "CHORUS_SEND_WRITERS")]
    pub send_writers: Option<usize>,

    /// Group commit: the most messages one batch (one statement, one transaction) may hold. 1 turns
    /// batching off (every message in a transaction of its own).
    #[arg(long, env = "CHORUS_SEND_BATCH_MAX", default_value_t = 128)]
    pub send_batch_max: usize,

    /// How long a request waits for a pooled PostgreSQL connection before answering 503, in ms; also
    /// how long a Redis connection or reply may take.
    #[arg(long, env = "CHORUS_DB_POOL_TIMEOUT_MS", default_value_t = 5000)]
    pub db_pool_timeout_ms: u64,

    /// Maximum Redis connections in this node's pool (readiness checks; the shared PUBLISH and
    /// presence connection is taken from it).
    #[arg(long, env = "CHORUS_REDIS_POOL_SIZE", default_value_t = 16)]
    pub redis_pool_size: usize,

    /// Largest message `content`, in bytes (UTF-8).
    #[arg(long, env = "CHORUS_MAX_MESSAGE_BYTES", default_value_t = 4096)]
    pub max_message_bytes: usize,

    /// Largest HTTP JSON body or WebSocket frame, in bytes.
    #[arg(long, env = "CHORUS_MAX_FRAME_BYTES", default_value_t = 64 * 1024)]
    pub max_frame_bytes: usize,

    /// Most messages per room returned by `GET /unreceived`.
    #[arg(long, env = "CHORUS_UNRECEIVED_LIMIT", default_value_t = 500)]
    pub unreceived_limit: i64,

    /// Seconds between server pings on a WebSocket; a client silent for 2.5x this is disconnected, and a
    /// connection whose socket takes no byte for 4x this is reset.
    #[arg(long, env = "CHORUS_WS_HEARTBEAT_S", default_value_t = 15)]
    pub ws_heartbeat_s: u64,

    /// Frames queued per WebSocket before the socket counts as a slow consumer and is closed (4008).
    #[arg(long, env = "CHORUS_WS_QUEUE", default_value_t = 1024)]
    pub ws_queue: usize,

    /// Client frames per second a WebSocket session may send (sustained).
    #[arg(long, env = "CHORUS_WS_RATE_PER_S", default_value_t = 20)]
    pub ws_rate_per_s: u32,

    /// Client frames a WebSocket session may send in a burst.
    #[arg(long, env = "CHORUS_WS_RATE_BURST", default_value_t = 60)]
    pub ws_rate_burst: u32,

    /// Most messages one `sync` replays per room (the reply says when more remain).
    #[arg(long, env = "CHORUS_WS_SYNC_LIMIT", default_value_t = 1000)]
    pub ws_sync_limit: i64,

    /// A session's `typing` is forwarded at most once per this many ms per room.
    #[arg(long, env = "CHORUS_TYPING_THROTTLE_MS", default_value_t = 2000)]
    pub typing_throttle_ms: u64,

    /// Seconds a session's presence lease lasts without renewal (a killed node's users go offline after it).
    #[arg(long, env = "CHORUS_PRESENCE_TTL_S", default_value_t = 30)]
    pub presence_ttl_s: u64,

    /// Presence transitions are pushed only to rooms with at most this many members (bigger rooms
    /// would get one frame per member per connect); clients of bigger rooms ask with `presence`.
    #[arg(long, env = "CHORUS_PRESENCE_MAX_ROOM", default_value_t = 100)]
    pub presence_max_room: i64,

    /// While Redis is down, how often (ms) each node polls PostgreSQL for new messages in its rooms.
    #[arg(long, env = "CHORUS_DEGRADED_POLL_MS", default_value_t = 1000)]
    pub degraded_poll_ms: u64,

    /// Login, register and refresh attempts per minute per client address, per node (429 beyond).
    #[arg(long, env = "CHORUS_AUTH_RATE_PER_MIN", default_value_t = 30)]
    pub auth_rate_per_min: u32,

    /// Peers whose `X-Forwarded-For` / `Forwarded` headers name the client (comma-separated CIDRs,
    /// e.g. `10.0.0.0/8,127.0.0.1/32`). Empty: no forwarded header is believed, the TCP peer is the client.
    #[arg(long, env = "CHORUS_TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: TrustedProxies,

    /// Most messages one `sync` frame replays across all its rooms (the reply says which rooms have more).
    #[arg(long, env = "CHORUS_SYNC_MAX_MESSAGES", default_value_t = 2000)]
    pub sync_max_messages: i64,

    /// Most bytes of `message` frames one `sync` frame replays across all its rooms (the message that
    /// reaches it is the last one sent).
    #[arg(long, env = "CHORUS_SYNC_MAX_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub sync_max_bytes: usize,

    /// Most messages `GET /unreceived` returns across all rooms (`has_more` marks the rooms cut short).
    #[arg(long, env = "CHORUS_UNRECEIVED_MAX_MESSAGES", default_value_t = 2000)]
    pub unreceived_max_messages: i64,

    /// Messages per second one user may send, over REST and WebSocket together, cluster-wide.
    #[arg(long, env = "CHORUS_SEND_RATE_PER_S", default_value_t = 10)]
    pub send_rate_per_s: u32,

    /// Messages one user may send in a burst (cluster-wide).
    #[arg(long, env = "CHORUS_SEND_BURST", default_value_t = 30)]
    pub send_burst: u32,

    /// Group rooms one user may create per hour (cluster-wide; the whole budget may be used at once).
    #[arg(long, env = "CHORUS_ROOMS_CREATED_PER_HOUR", default_value_t = 30)]
    pub rooms_created_per_hour: u32,

    /// Direct rooms one user may open per hour (cluster-wide; the whole budget may be used at once).
    #[arg(long, env = "CHORUS_DIRECT_ROOMS_PER_HOUR", default_value_t = 120)]
    pub direct_rooms_per_hour: u32,

    /// Room password attempts per user and room per 10 minutes (join, and create/update with a password).
    #[arg(long, env = "CHORUS_PASSWORD_ATTEMPTS", default_value_t = 5)]
    pub password_attempts: u32,

    /// Rooms one user may belong to; joining, creating or being added past it is refused (409 `limit.rooms`).
    #[arg(long, env = "CHORUS_MAX_ROOMS_PER_USER", default_value_t = 1000)]
    pub max_rooms_per_user: i64,

    /// Live WebSocket sessions one user may hold, cluster-wide; the newest past it is closed with 4429.
    #[arg(long, env = "CHORUS_MAX_SOCKETS_PER_USER", default_value_t = 16)]
    pub max_sockets_per_user: u32,

    /// Password hashes (argon2id) a node runs at once; requests that cannot start one within 2 s get 503.
    /// Default: one per core.
    #[arg(long, env = "CHORUS_ARGON2_CONCURRENCY")]
    pub argon2_concurrency: Option<usize>,

    /// argon2id memory cost in KiB (OWASP minimum: 19456).
    #[arg(long, env = "CHORUS_ARGON2_MEMORY_KIB", default_value_t = 19456)]
    pub argon2_memory_kib: u32,

    /// argon2id iterations.
    #[arg(long, env = "CHORUS_ARGON2_ITERATIONS", default_value_t = 2)]
    pub argon2_iterations: u32,

    /// Seconds a node keeps serving after SIGTERM before it exits.
    #[arg(long, env = "CHORUS_SHUTDOWN_GRACE_S", default_value_t = 20)]
    pub shutdown_grace_s: u64,

    /// Log format: `text` for people, `json` for log pipelines. Levels come from RUST_LOG.
    #[arg(long, env = "CHORUS_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// Dev-only secret, so `CHORUS_ENV=dev` works out of the box; never accepted in production.
const DEV_JWT_SECRET: &str = "chorus-dev-secret-do-not-use-in-production!!";
const MIN_SECRET_BYTES: usize = 32;

/// Secrets that are, or were, written in this repository (Compose, the Kubernetes dev overlay, the
/// test settings, the docs). Anyone who read the repository can mint tokens with them, so a node in
/// production mode refuses them. `tests/api/security.rs` checks that every `JWT_SECRET` value in the
/// deployment files is on this list or refused as a placeholder.
const PUBLISHED_SECRETS: &[&str] = &[
    DEV_JWT_SECRET,
    "change-me-please-32-bytes-minimum-secret",
    "dev-cluster-only-jwt-secret-0123456789abcdef",
    TEST_JWT_SECRET,
];
const TEST_JWT_SECRET: &str = "test-secret-that-is-long-enough-0123456789";

/// Words that mark a secret as a placeholder someone forgot to replace.
const PLACEHOLDER_WORDS: &[&str] =
    &["change-me", "changeme", "change_me", "placeholder", "example", "your-secret", "do-not-use", "insecure"];

/// Why `secret` must not sign tokens in production, if it must not.
pub fn unfit_production_secret(secret: &str) -> Option<&'static str> {
    let lower = secret.to_ascii_lowercase();
    if PUBLISHED_SECRETS.iter().any(|p| p.eq_ignore_ascii_case(secret)) {
        return Some("is published in the Chorus repository");
    }
    if PLACEHOLDER_WORDS.iter().any(|w| lower.contains(w)) {
        return Some("looks like a placeholder");
    }
    // `aaaa…`, `abababab…`: too few distinct bytes to be random.
    let distinct = secret.bytes().collect::<std::collections::HashSet<u8>>().len();
    if distinct < 8 {
        return Some("has fewer than 8 distinct characters, so it is not random");
    }
    None
}

/// The load balancers whose forwarded headers are believed: comma-separated CIDRs, empty for none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(pub Vec<Cidr>);

impl TrustedProxies {
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }
}

impl std::str::FromStr for TrustedProxies {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        s.split(',').filter(|c| !c.trim().is_empty()).map(str::parse).collect::<Result<_, _>>().map(TrustedProxies)
    }
}

/// An address range in CIDR notation (`10.0.0.0/8`, `::1/128`; a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: std::net::IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        // An IPv4 peer may show up as an IPv4-mapped IPv6 address on a dual-stack socket.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, prefix) = s.split_once('/').map_or((s, None), |(a, p)| (a, Some(p)));
        let network: std::net::IpAddr =
            addr.parse().map_err(|_| format!("`{s}` is not an IP address or CIDR range"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| format!("`{s}`: bad prefix length"))?,
        };
        Ok(Cidr { network, prefix })
    }
}

/// A start-up configuration mistake: one sentence that says what to fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Settings {
    /// Checks what clap cannot: cross-field rules and secrets. Fails with a sentence an operator can act on.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        if self.jwt_alg == JwtAlgorithm::Hs256 {
            match (&self.jwt_secret, self.env) {
                (None, Environment::Dev) => self.jwt_secret = Some(DEV_JWT_SECRET.to_owned()),
                (None, Environment::Production) => {
                    return Err(ConfigError(
                        "JWT_SECRET is not set: set it to a random string of at least 32 bytes (or CHORUS_ENV=dev for local use)".into(),
                    ))
                }
                (Some(s), _) if s.len() < MIN_SECRET_BYTES => {
                    return Err(ConfigError(format!(
                        "JWT_SECRET is {} bytes long: use at least {MIN_SECRET_BYTES} random bytes",
                        s.len()
                    )))
                }
                (Some(s), Environment::Production) if unfit_production_secret(s).is_some() => {
                    let why = unfit_production_secret(s).unwrap_or_default();
                    return Err(ConfigError(format!(
                        "JWT_SECRET {why}: set a random secret of your own (e.g. `openssl rand -hex 32`)"
                    )));
                }
                _ => {}
            }
        } else if self.jwt_private_key_file.is_none() || self.jwt_public_key_file.is_none() {
            return Err(ConfigError(
                "CHORUS_JWT_ALG is RS256/EdDSA: set CHORUS_JWT_PRIVATE_KEY_FILE and CHORUS_JWT_PUBLIC_KEY_FILE to PEM files".into(),
            ));
        }
        let postgres = |url: &str| url.starts_with("postgres://") || url.starts_with("postgresql://");
        if self.database_replica_url.as_deref().is_some_and(|url| !postgres(url)) {
            return Err(ConfigError("CHORUS_DATABASE_REPLICA_URL must start with postgres://".into()));
        }
        if !self.database_url.starts_with("postgres://") && !self.database_url.starts_with("postgresql://") {
            return Err(ConfigError("DATABASE_URL must start with postgres://".into()));
        }
        if self.redis_urls().any(|url| !url.starts_with("redis://") && !url.starts_with("rediss://")) {
            return Err(ConfigError(
                "REDIS_URL must start with redis:// (each URL, in sentinel and cluster mode)".into(),
            ));
        }
        match self.redis_mode {
            RedisMode::Single if self.redis_urls().count() != 1 => {
                return Err(ConfigError(
                    "REDIS_URL lists several servers: set CHORUS_REDIS_MODE=sentinel (and CHORUS_REDIS_SENTINEL_MASTER) \
                     if they are Sentinels, CHORUS_REDIS_MODE=cluster if they are Redis Cluster nodes, or give one URL"
                        .into(),
                ));
            }
            RedisMode::Cluster if self.redis_prefix.contains(['{', '}']) => {
                return Err(ConfigError(
                    "CHORUS_REDIS_PREFIX may not contain { or } in cluster mode: Chorus puts its own hash tags in keys"
                        .into(),
                ));
            }
            RedisMode::Cluster if self.redis_partitions == 0 || self.redis_partitions > 16384 => {
                return Err(ConfigError("CHORUS_REDIS_PARTITIONS must be between 1 and 16384".into()));
            }
            RedisMode::Sentinel if self.redis_sentinel_master.as_deref().is_none_or(str::is_empty) => {
                return Err(ConfigError(
                    "CHORUS_REDIS_MODE=sentinel needs CHORUS_REDIS_SENTINEL_MASTER: the name the Sentinels monitor"
                        .into(),
                ));
            }
            _ => {}
        }
        if self.db_pool_size == 0 || self.redis_pool_size == 0 {
            return Err(ConfigError("CHORUS_DB_POOL_SIZE and CHORUS_REDIS_POOL_SIZE must be at least 1".into()));
        }
        if self.send_writers.is_some_and(|n| n == 0 || n >= self.db_pool_size) {
            return Err(ConfigError(
                "CHORUS_SEND_WRITERS must be at least 1 and below CHORUS_DB_POOL_SIZE (the writers hold pooled connections)"
                    .into(),
            ));
        }
        if self.send_batch_max == 0 || self.send_batch_max > 10_000 {
            return Err(ConfigError("CHORUS_SEND_BATCH_MAX must be between 1 and 10000".into()));
        }
        if self.access_token_ttl_s < 10 {
            return Err(ConfigError("CHORUS_ACCESS_TOKEN_TTL_S must be at least 10 seconds".into()));
        }
        if self.max_message_bytes == 0 || self.max_message_bytes >= self.max_frame_bytes {
            return Err(ConfigError(
                "CHORUS_MAX_MESSAGE_BYTES must be positive and smaller than CHORUS_MAX_FRAME_BYTES".into(),
            ));
        }
        if self.auth_rate_per_min == 0 || self.presence_max_room < 0 {
            return Err(ConfigError(
                "CHORUS_AUTH_RATE_PER_MIN must be at least 1 and CHORUS_PRESENCE_MAX_ROOM at least 0 (0 turns presence pushes off)".into(),
            ));
        }
        if self.degraded_poll_ms < 50 {
            return Err(ConfigError("CHORUS_DEGRADED_POLL_MS must be at least 50".into()));
        }
        if self.ws_heartbeat_s == 0 || self.presence_ttl_s == 0 || self.ws_queue < 8 || self.ws_rate_per_s == 0 {
            return Err(ConfigError(
                "CHORUS_WS_HEARTBEAT_S, CHORUS_PRESENCE_TTL_S and CHORUS_WS_RATE_PER_S must be positive, CHORUS_WS_QUEUE at least 8".into(),
            ));
        }
        if self.ws_rate_burst == 0 || self.ws_sync_limit < 1 {
            return Err(ConfigError(
                "CHORUS_WS_RATE_BURST and CHORUS_WS_SYNC_LIMIT must be at least 1 (0 would refuse every frame, or replay nothing forever)".into(),
            ));
        }
        if self.sync_max_messages < 1
            || self.sync_max_bytes < self.max_message_bytes
            || self.unreceived_max_messages < 1
        {
            return Err(ConfigError(
                "CHORUS_SYNC_MAX_MESSAGES and CHORUS_UNRECEIVED_MAX_MESSAGES must be at least 1, CHORUS_SYNC_MAX_BYTES at least CHORUS_MAX_MESSAGE_BYTES".into(),
            ));
        }
        if self.send_rate_per_s == 0
            || self.send_burst == 0
            || self.rooms_created_per_hour == 0
            || self.direct_rooms_per_hour == 0
            || self.password_attempts == 0
            || self.max_rooms_per_user < 1
            || self.max_sockets_per_user == 0
            || self.argon2_concurrency == Some(0)
        {
            return Err(ConfigError(
                "the per-user limits (CHORUS_SEND_*, CHORUS_*_PER_HOUR, CHORUS_PASSWORD_ATTEMPTS, CHORUS_MAX_*_PER_USER, CHORUS_ARGON2_CONCURRENCY) must be at least 1".into(),
            ));
        }
        if self.node_id.is_none() {
            self.node_id = Some(host_name());
        }
        Ok(())
    }

    /// The URLs in REDIS_URL (one, unless it lists Sentinels).
    pub fn redis_urls(&self) -> impl Iterator<Item = &str> {
        self.redis_url.split(',').map(str::trim).filter(|url| !url.is_empty())
    }

    pub fn node_id(&self) -> &str {
        self.node_id.as_deref().unwrap_or("chorus")
    }

    /// The group commit's writers (see `send_writers`): a small pool keeps connections for the rest.
    pub fn send_writers(&self) -> usize {
        self.send_writers.unwrap_or((self.db_pool_size / 2).clamp(1, 4))
    }

    pub fn db_pool_timeout(&self) -> Duration {
        Duration::from_millis(self.db_pool_timeout_ms)
    }

    /// Settings for tests and embedders: every default, dev mode, the given stores.
    pub fn for_tests(database_url: &str, redis_url: &str, redis_prefix: &str) -> Self {
        let cli = Cli::parse_from(["chorus"]);
        let mut s = cli.settings;
        s.env = Environment::Dev;
        s.database_url = database_url.to_owned();
        s.redis_url = redis_url.to_owned();
        s.redis_prefix = redis_prefix.to_owned();
        s.bind = SocketAddr::from(([127, 0, 0, 1], 0));
        s.jwt_secret = Some(TEST_JWT_SECRET.into());
        // Tests register many users; the cheapest argon2id parameters keep them fast.
        s.argon2_memory_kib = 1024;
        s.argon2_iterations = 1;
        s.auth_rate_per_min = 1_000_000;
        // Tests create rooms and send in bursts far beyond a person's pace; the limits have tests of their own.
        s.send_rate_per_s = 100_000;
        s.send_burst = 100_000;
        s.rooms_created_per_hour = 100_000;
        s.direct_rooms_per_hour = 100_000;
        s.shutdown_grace_s = 5;
        s
    }
}

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_owned()))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "chorus".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(args: &[&str]) -> Settings {
        let mut all = vec!["chorus"];
        all.extend_from_slice(args);
        let mut settings = Cli::parse_from(all).settings;
        settings.env = Environment::Dev;
        settings
    }

    #[test]
    fn group_commit_writers_default_to_four_or_half_a_small_pool() {
        assert_eq!(settings(&[]).send_writers(), 4);
        assert_eq!(settings(&["--db-pool-size", "6"]).send_writers(), 3);
        assert_eq!(settings(&["--db-pool-size", "1"]).send_writers(), 1);
        assert_eq!(settings(&["--db-pool-size", "4", "--send-writers", "3"]).send_writers(), 3);
        // A pool of one still starts with the default; an explicit count must leave room.
        assert!(settings(&["--db-pool-size", "1"]).validate().is_ok());
        assert!(settings(&["--db-pool-size", "4", "--send-writers", "4"]).validate().is_err());
        assert!(settings(&["--send-writers", "0"]).validate().is_err());
    }
}
