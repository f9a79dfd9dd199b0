//! Per-user cost limits that hold across the cluster: a user's budget is the same whichever node
//! (and however many sockets and REST calls) they spread their requests over. Each budget is a GCRA
//! bucket in Redis (one key, one script call, no background refill); the per-socket frame limit
//! and the per-address login limit stay per node (`ratelimit`), where a Redis round trip buys nothing.
//!
//! Sends are the one budget on the hot path. A Redis round trip per message was measured at about
//! a sixth more CPU per delivery in rooms of 50 (most of it Redis's and the node's socket calls), so
//! a node takes a user's send tokens from Redis a few at a time (a *lease*, up to a sixth of the
//! burst, kept at most [`LEASE_TTL`]) and spends them locally. The user's budget stays cluster-wide;
//! each node can run ahead of it by at most one unspent lease.
//!
//! Redis trouble fails open: chat goes on in degraded mode without Redis, and a limit that refused
//! everything then would be an outage of its own. The argon2 concurrency cap (`auth::password`)
//! still bounds what password guessing can cost while Redis is away.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use deadpool_redis::redis;
use uuid::Uuid;

use crate::bus::Bus;
use crate::config::Settings;
use crate::error::ApiError;
use crate::metrics::Metrics;

/// One GCRA step for up to ARGV[3] tokens: grants as many as the bucket holds (at least one) and
/// moves its "theoretical arrival time"; returns the count granted, or minus the ms until one would
/// be. Redis's clock is the one clock every node shares.
const GCRA_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local window = interval * tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local free = math.floor((now + window - tat) / interval)
if free < 1 then return -(tat + interval - window - now) end
local take = math.min(free, tonumber(ARGV[3]))
local new_tat = tat + interval * take
redis.call('SET', KEYS[1], new_tat, 'PX', new_tat - now)
return take
";

/// How long a node keeps send tokens it took from Redis and has not spent.
pub const LEASE_TTL: Duration = Duration::from_secs(10);

/// Beyond this many users with a lease, expired leases are forgotten.
const MAX_LEASES: usize = 100_000;

/// What one request asks Redis for.
#[derive(Debug, Clone, Copy)]
struct Fetch {
    tokens: u32,
    /// This send takes a lease for the node (others meanwhile take single tokens).
    leads: bool,
}

/// Send tokens a node took from a user's bucket in Redis and has not spent yet.
struct Lease {
    tokens: u32,
    until: Instant,
    /// Since when a send of this user has been taking a lease from Redis: meanwhile concurrent sends
    /// take one token each instead of a lease each, so a burst never drains the bucket into idle
    /// leases. A fetch whose request was dropped midway stops counting after [`FETCH_TIMEOUT`].
    fetching: Option<Instant>,
}

impl Lease {
    fn is_fetching(&self, now: Instant) -> bool {
        self.fetching.is_some_and(|since| now.duration_since(since) < FETCH_TIMEOUT)
    }
}

/// How long a lease fetch may take before another send may start one.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// What a request spends.
#[derive(Debug, Clone, Copy)]
pub enum Budget {
    /// A message sent, over REST or WebSocket (key: the sender).
    Send,
    /// A group room created (key: the creator).
    RoomCreated,
    /// A direct room opened for the first time (key: the opener).
    DirectRoomOpened,
    /// A room password checked or set (key: the user and the room).
    PasswordAttempt,
}

impl Budget {
    fn name(self) -> &'static str {
        match self {
            Budget::Send => "send",
            Budget::RoomCreated => "room_create",
            Budget::DirectRoomOpened => "direct_open",
            Budget::PasswordAttempt => "room_password",
        }
    }
}

/// A bucket's shape: one token every `interval`, at most `burst` saved up.
#[derive(Debug, Clone, Copy)]
struct Rate {
    interval: Duration,
    burst: u32,
}

impl Rate {
    /// `count` per `period`, all of which may be spent at once.
    fn per(count: u32, period: Duration) -> Rate {
        Rate { interval: period / count.max(1), burst: count.max(1) }
    }
}

pub struct Limits {
    bus: Bus,
    prefix: String,
    script: redis::Script,
    metrics: std::sync::Arc<Metrics>,
    send: Rate,
    rooms: Rate,
    directs: Rate,
    passwords: Rate,
    /// Tokens taken from Redis per send lease: a sixth of the burst (1 for small bursts, so a small
    /// budget stays exact across nodes).
    send_lease: u32,
    leases: Mutex<HashMap<Uuid, Lease>>,
}

impl Limits {
    pub fn new(settings: &Settings, bus: Bus, metrics: std::sync::Arc<Metrics>) -> Self {
        let hour = Duration::from_secs(3600);
        Limits {
            bus,
            prefix: format!("{}limit:", settings.redis_prefix),
            script: redis::Script::new(GCRA_SCRIPT),
            metrics,
            send: Rate {
                interval: Duration::from_secs(1) / settings.send_rate_per_s.max(1),
                burst: settings.send_burst,
            },
            rooms: Rate::per(settings.rooms_created_per_hour, hour),
            directs: Rate::per(settings.direct_rooms_per_hour, hour),
            passwords: Rate::per(settings.password_attempts, Duration::from_secs(600)),
            send_lease: (settings.send_burst / 6).max(1),
            leases: Mutex::default(),
        }
    }

    fn rate(&self, budget: Budget) -> Rate {
        match budget {
            Budget::Send => self.send,
            Budget::RoomCreated => self.rooms,
            Budget::DirectRoomOpened => self.directs,
            Budget::PasswordAttempt => self.passwords,
        }
    }

    /// A send of `user`: spends a token of this node's lease (`None`), or says what to ask Redis for:
    /// a lease (the send leads), if no other send of the user is fetching one; else just one token.
    fn claim_send(&self, user: Uuid) -> Option<Fetch> {
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if leases.len() > MAX_LEASES {
            leases.retain(|_, lease| lease.is_fetching(now) || (lease.until > now && lease.tokens > 0));
        }
        let lease = leases.entry(user).or_insert(Lease { tokens: 0, until: now, fetching: None });
        if lease.until <= now {
            lease.tokens = 0;
        }
        if lease.tokens > 0 {
            lease.tokens -= 1;
            None
        } else if lease.is_fetching(now) {
            Some(Fetch { tokens: 1, leads: false })
        } else {
            lease.fetching = Some(now);
            Some(Fetch { tokens: self.send_lease, leads: true })
        }
    }

    /// Records what Redis granted a send of `user`: the tokens beyond the one it spends join this
    /// node's lease.
    fn settle_send(&self, user: Uuid, fetch: Fetch, granted: u32) {
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let lease = leases.entry(user).or_insert(Lease { tokens: 0, until: now, fetching: None });
        if fetch.leads {
            lease.fetching = None;
        }
        if granted > 1 {
            if lease.until <= now {
                lease.tokens = 0;
            }
            lease.tokens += granted - 1;
            lease.until = now + LEASE_TTL;
        }
    }

    /// Spends a leased send token of `user`, if this node holds one.
    fn spend_leased(&self, user: Uuid) -> bool {
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        match leases.get_mut(&user) {
            Some(lease) if lease.tokens > 0 && lease.until > Instant::now() => {
                lease.tokens -= 1;
                true
            }
            _ => false,
        }
    }

    /// Spends one unit of `budget` for `user` (and `room`, for per-room budgets), or answers
    /// `rate_limited` with the seconds until one is free.
    pub async fn take(&self, budget: Budget, user: Uuid, room: Option<Uuid>) -> Result<(), ApiError> {
        let fetch = match budget {
            Budget::Send => match self.claim_send(user) {
                None => return Ok(()),
                Some(fetch) => fetch,
            },
            _ => Fetch { tokens: 1, leads: false },
        };
        let rate = self.rate(budget);
        let key = match room {
            Some(room) => format!("{}{}:{user}:{room}", self.prefix, budget.name()),
            None => format!("{}{}:{user}", self.prefix, budget.name()),
        };
        let result: Result<i64, String> = async {
            let mut conn = self.bus.connection().await?;
            let mut call = self.script.key(&key);
            call.arg(rate.interval.as_millis().max(1) as u64).arg(rate.burst).arg(fetch.tokens);
            call.invoke_async(&mut conn).await.map_err(|e| {
                self.bus.forget_connection_if_broken(&e);
                e.to_string()
            })
        }
        .await;
        if matches!(budget, Budget::Send) {
            let granted = result.as_ref().map_or(0, |g| (*g).max(0) as u32);
            self.settle_send(user, fetch, granted);
        }
        match result {
            Ok(granted) if granted > 0 => Ok(()),
            // Concurrent sends of this user may have leased the tokens this one found gone.
            Ok(_) if matches!(budget, Budget::Send) && self.spend_leased(user) => Ok(()),
            Ok(minus_wait_ms) => {
                self.metrics.limited_total.with_label_values(&[budget.name()]).inc();
                Err(ApiError::RateLimited(minus_wait_ms.unsigned_abs().div_ceil(1000).max(1)))
            }
            Err(error) => {
                tracing::warn!(%error, budget = budget.name(), "limit check failed; allowing the request");
                Ok(())
            }
        }
    }
}
