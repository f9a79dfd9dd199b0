//! Per-user cost limits that hold across the cluster: a user's budget is the same whichever node
//! (and however many sockets and REST calls) they spread their requests over. Each budget is a GCRA
//! bucket in Redis (one key, one script call, no background refill); the per-socket frame limit
//! and the per-address login limit stay per node (`ratelimit`), where a Redis round trip buys nothing.
//!
//! Redis trouble fails open: chat goes on in degraded mode without Redis, and a limit that refused
//! everything then would be an outage of its own. The argon2 concurrency cap (`auth::password`)
//! still bounds what password guessing can cost while Redis is away.

use std::time::Duration;

use deadpool_redis::redis;
use uuid::Uuid;

use crate::bus::Bus;
use crate::config::Settings;
use crate::error::ApiError;
use crate::metrics::Metrics;

/// One GCRA step: allows the request and moves the bucket's "theoretical arrival time", or returns
/// how many ms until a request would be allowed. Redis's clock is the one clock every node shares.
const GCRA_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local window = interval * tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local wait = new_tat - window - now
if wait > 0 then return wait end
redis.call('SET', KEYS[1], new_tat, 'PX', new_tat - now)
return 0
";

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

    /// Spends one unit of `budget` for `user` (and `room`, for per-room budgets), or answers
    /// `rate_limited` with the seconds until one is free.
    pub async fn take(&self, budget: Budget, user: Uuid, room: Option<Uuid>) -> Result<(), ApiError> {
        let rate = self.rate(budget);
        let key = match room {
            Some(room) => format!("{}{}:{user}:{room}", self.prefix, budget.name()),
            None => format!("{}{}:{user}", self.prefix, budget.name()),
        };
        let result: Result<i64, String> = async {
            let mut conn = self.bus.connection().await?;
            let mut call = self.script.key(&key);
            call.arg(rate.interval.as_millis().max(1) as u64).arg(rate.burst);
            call.invoke_async(&mut conn).await.map_err(|e| {
                self.bus.forget_connection_if_broken(&e);
                e.to_string()
            })
        }
        .await;
        match result {
            Ok(0) => Ok(()),
            Ok(wait_ms) => {
                self.metrics.limited_total.with_label_values(&[budget.name()]).inc();
                Err(ApiError::RateLimited((wait_ms as u64).div_ceil(1000).max(1)))
            }
            Err(error) => {
                tracing::warn!(%error, budget = budget.name(), "limit check failed; allowing the request");
                Ok(())
            }
        }
    }
}
