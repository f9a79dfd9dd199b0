//! Rooms and membership, with the permission matrix:
//!
//! | action                         | who                                   |
//! |--------------------------------|---------------------------------------|
//! | view room                      | member; anyone for a public room      |
//! | update name/visibility/password| owner, admin                          |
//! | close room, transfer ownership | owner                                 |
//! | add members                    | owner, admin (group rooms)            |
//! | remove a member                | a role above the target's             |
//! | promote/demote admin           | owner                                 |
//! | list members, leave            | member                                |
//!
//! Outsiders of a private room get 404 for everything, so the room's existence is not leaked.

use std::collections::HashSet;

use diesel_async::AsyncConnection;
use uuid::Uuid;

use crate::db::models::{MemberRow, NewRoom, RoomRow};
use crate::db::rooms::{self as q, RoomChanges};
use crate::db::{bans, is_unique_violation, users, DbConn};
use crate::error::{ApiError, ApiResult, Missing};
use crate::limits::Budget;
use crate::presence;
use crate::protocol::{Ban, BanRequest, CreateRoomRequest, Member, Page, Role, Room, UpdateRoomRequest};
use crate::state::AppState;
use crate::validate::{self, Checks};

const MAX_MEMBERS_PER_CALL: usize = 100;
const PUBLIC_NAME_INDEX: &str = "rooms_public_name_unique";
const NAME_TAKEN: &str = "a public room with that name exists";

/// The caller's standing in a live room.
pub struct Access {
    pub room: RoomRow,
    pub member: Option<MemberRow>,
}

impl Access {
    /// Loads a live room and the caller's membership. Missing rooms, and private rooms the caller is
    /// not in, are both `room.not_found`.
    pub async fn load(conn: &mut DbConn, room_id: Uuid, caller: Uuid, lock: bool) -> ApiResult<Access> {
        let room = if lock { q::lock_live(conn, room_id).await? } else { q::find_live(conn, room_id).await? };
        let room = room.ok_or(ApiError::NotFound(Missing::Room))?;
        let member = q::membership(conn, room_id, caller).await?;
        if member.is_none() && !room.is_public() {
            return Err(ApiError::NotFound(Missing::Room));
        }
        Ok(Access { room, member })
    }

    pub fn member(&self) -> ApiResult<&MemberRow> {
        self.member.as_ref().ok_or(ApiError::Forbidden("you are not a member of this room"))
    }

    /// The caller's role, if it is at least `min`.
    pub fn require(&self, min: Role) -> ApiResult<Role> {
        let role = self.member()?.role();
        if role < min {
            return Err(ApiError::Forbidden(match min {
                Role::Owner => "only the room owner may do this",
                _ => "only the room owner or an admin may do this",
            }));
        }
        Ok(role)
    }

    fn group_only(&self) -> ApiResult<()> {
        if self.room.is_direct() {
            return Err(ApiError::Forbidden("direct rooms cannot be changed this way"));
        }
        Ok(())
    }
}

pub async fn view(conn: &mut DbConn, room_id: Uuid, caller: Uuid) -> ApiResult<Room> {
    q::view(conn, room_id, caller).await?.map(Room::from).ok_or(ApiError::NotFound(Missing::Room))
}

fn check_password(field: &str, password: Option<&str>) -> Result<(), crate::error::FieldError> {
    password.map_or(Ok(()), |p| validate::password(field, p))
}

pub async fn create(state: &AppState, caller: Uuid, req: CreateRoomRequest) -> ApiResult<Room> {
    let mut checks = Checks::new();
    let name = checks.keep(validate::room_name(&req.name));
    checks
        .add(check_password("password", req.password.as_deref()))
        .check(req.member_ids.len() <= MAX_MEMBERS_PER_CALL, "member_ids", "at most 100 at a time")
        .finish()?;
    let name = name.unwrap_or_default(); // finish() refused a bad name
    state.limits.take(Budget::RoomCreated, caller, None).await?;
    let password_hash = match req.password {
        Some(p) => Some(state.passwords.hash(p).await?),
        None => None,
    };
    let mut others: Vec<Uuid> = req.member_ids.iter().copied().filter(|id| *id != caller).collect();
    others.sort();
    others.dedup();
    let room_id = Uuid::now_v7();
    let mut conn = state.db_conn().await?;
    let result = conn
        .transaction::<_, ApiError, _>(async |conn| {
            if !users::missing_ids(conn, &others).await?.is_empty() {
                return Err(ApiError::NotFound(Missing::User));
            }
            let mut everyone = others.clone();
            everyone.push(caller);
            check_room_limit(state, conn, &everyone).await?;
            let new = NewRoom {
                id: room_id,
                kind: "group",
                name: Some(&name),
                visibility: req.visibility.as_str(),
                password_hash: password_hash.as_deref(),
                direct_key: None,
            };
            q::insert_room(conn, &new).await.map_err(|e| {
                if is_unique_violation(&e, PUBLIC_NAME_INDEX) {
                    ApiError::Conflict(Missing::Room, NAME_TAKEN)
                } else {
                    e.into()
                }
            })?;
            q::add_members(conn, room_id, &[caller], Role::Owner).await?;
            q::add_members(conn, room_id, &others, Role::Member).await?;
            Ok(())
        })
        .await;
    result?;
    let room = view(&mut conn, room_id, caller).await?;
    drop(conn);
    state.fanout.member_joined(room_id, caller, Role::Owner, 0).await;
    for user in others {
        state.fanout.member_joined(room_id, user, Role::Member, 0).await;
    }
    Ok(room)
}

pub async fn get(state: &AppState, caller: Uuid, room_id: Uuid) -> ApiResult<Room> {
    let mut conn = state.db_conn().await?;
    Access::load(&mut conn, room_id, caller, false).await?;
    view(&mut conn, room_id, caller).await
}

pub enum Scope {
    Joined,
    Public,
}

pub async fn list(
    state: &AppState,
    caller: Uuid,
    scope: Scope,
    cursor: Option<&str>,
    limit: Option<i64>,
) -> ApiResult<Page<Room>> {
    let limit = validate::limit(limit)?;
    let after = validate::decode_uuid_cursor(cursor)?;
    let mut conn = state.db_conn().await?;
    let mut rows = match scope {
        Scope::Joined => q::list_joined(&mut conn, caller, after, limit + 1).await?,
        Scope::Public => q::list_public(&mut conn, caller, after, limit + 1).await?,
    };
    let next_cursor = validate::next_cursor(&mut rows, limit, |r| r.id.to_string());
    Ok(Page { items: rows.into_iter().map(Room::from).collect(), next_cursor })
}

pub async fn update(state: &AppState, caller: Uuid, room_id: Uuid, req: UpdateRoomRequest) -> ApiResult<Room> {
    let mut checks = Checks::new();
    let name = req.name.as_deref().map(|name| checks.keep(validate::room_name(name)));
    if let Some(Some(p)) = &req.password {
        checks.add(validate::password("password", p));
    }
    checks.finish()?;
    let name = name.flatten(); // finish() refused a bad name
    if matches!(req.password, Some(Some(_))) {
        // Setting a password costs a hash: counted with the room's password attempts.
        state.limits.take(Budget::PasswordAttempt, caller, Some(room_id)).await?;
    }
    let password_hash = match &req.password {
        Some(Some(p)) => Some(Some(state.passwords.hash(p.clone()).await?)),
        Some(None) => Some(None),
        None => None,
    };
    let mut conn = state.db_conn().await?;
    conn.transaction::<_, ApiError, _>(async |conn| {
        let access = Access::load(conn, room_id, caller, true).await?;
        access.require(Role::Admin)?;
        access.group_only()?;
        let changes = RoomChanges {
            name: name.clone(),
            visibility: req.visibility.as_ref().map(|v| v.as_str().to_owned()),
            password_hash,
            updated_at: Some(chrono::Utc::now()),
        };
        q::update(conn, room_id, &changes).await.map_err(|e| {
            if is_unique_violation(&e, PUBLIC_NAME_INDEX) {
                ApiError::Conflict(Missing::Room, NAME_TAKEN)
            } else {
                e.into()
            }
        })
    })
    .await?;
    let room = view(&mut conn, room_id, caller).await?;
    drop(conn);
    state.fanout.room_updated(&room).await;
    Ok(room)
}

/// Closes the room; its members hear `room_deleted` on the room's channel.
pub async fn close(state: &AppState, caller: Uuid, room_id: Uuid) -> ApiResult<()> {
    let mut conn = state.db_conn().await?;
    conn.transaction::<_, ApiError, _>(async |conn| {
        let access = Access::load(conn, room_id, caller, true).await?;
        access.group_only()?;
        access.require(Role::Owner)?;
        Ok(q::close(conn, room_id).await?)
    })
    .await?;
    drop(conn);
    state.fanout.room_deleted(room_id).await;
    Ok(())
}

pub async fn transfer(state: &AppState, caller: Uuid, room_id: Uuid, new_owner: Uuid) -> ApiResult<Room> {
    let mut conn = state.db_conn().await?;
    conn.transaction::<_, ApiError, _>(async |conn| {
        let access = Access::load(conn, room_id, caller, true).await?;
        access.group_only()?;
        access.require(Role::Owner)?;
        if new_owner == caller {
            return Err(ApiError::field("user_id", "you already own this room"));
        }
        q::membership(conn, room_id, new_owner).await?.ok_or(ApiError::NotFound(Missing::User))?;
        // Demote first: a partial unique index allows one owner per room at any instant.
        q::set_role(conn, room_id, caller, Role::Admin).await?;
        q::set_role(conn, room_id, new_owner, Role::Owner).await?;
        Ok(())
    })
    .await?;
    let room = view(&mut conn, room_id, caller).await?;
    drop(conn);
    state.fanout.member_updated(room_id, caller, Role::Admin).await;
    state.fanout.member_updated(room_id, new_owner, Role::Owner).await;
    Ok(room)
}

/// Joins a public room; returns the room and whether the caller was newly added.
pub async fn join(state: &AppState, caller: Uuid, room_id: Uuid, password: Option<String>) -> ApiResult<(Room, bool)> {
    let mut conn = state.db_conn().await?;
    let access = Access::load(&mut conn, room_id, caller, false).await?;
    if access.member.is_some() {
        return Ok((view(&mut conn, room_id, caller).await?, false));
    }
    if !bans::banned_among(&mut conn, room_id, &[caller]).await?.is_empty() {
        return Err(ApiError::Banned);
    }
    // The hash the password was checked against: the join below goes ahead only if it still holds.
    let checked = access.room.password_hash.clone();
    if let Some(hash) = checked.clone() {
        let given = password.ok_or(ApiError::WrongPassword)?;
        drop(conn);
        // Every guess costs an argon2 run: a user gets a few per room, across the cluster.
        state.limits.take(Budget::PasswordAttempt, caller, Some(room_id)).await?;
        if !state.passwords.verify(given, Some(hash)).await? {
            return Err(ApiError::WrongPassword);
        }
        conn = state.db_conn().await?;
    }
    let added = conn
        .transaction::<_, ApiError, _>(async |conn| {
            // Re-check under the lock: the room may have closed, gone private, changed its password,
            // or banned the caller meanwhile.
            let access = Access::load(conn, room_id, caller, true).await?;
            if access.member.is_some() {
                return Ok(false);
            }
            if !access.room.is_public() {
                return Err(ApiError::NotFound(Missing::Room));
            }
            if access.room.password_hash.is_some() && access.room.password_hash != checked {
                return Err(ApiError::WrongPassword);
            }
            if !bans::banned_among(conn, room_id, &[caller]).await?.is_empty() {
                return Err(ApiError::Banned);
            }
            check_room_limit(state, conn, &[caller]).await?;
            Ok(!q::add_members(conn, room_id, &[caller], Role::Member).await?.is_empty())
        })
        .await?;
    let room = view(&mut conn, room_id, caller).await?;
    drop(conn);
    if added {
        state.fanout.member_joined(room_id, caller, Role::Member, room.last_seq).await;
    }
    Ok((room, added))
}

/// What leaving did, for the notifications it causes.
pub struct Left {
    pub new_owner: Option<Uuid>,
    pub room_closed: bool,
}

pub async fn leave(state: &AppState, caller: Uuid, room_id: Uuid) -> ApiResult<Left> {
    let mut conn = state.db_conn().await?;
    let left = conn
        .transaction::<_, ApiError, _>(async |conn| {
            let access = Access::load(conn, room_id, caller, true).await?;
            let role = access.member()?.role();
            access.group_only()?;
            let successor = q::successor(conn, room_id, caller).await?;
            q::remove_member(conn, room_id, caller).await?;
            match successor {
                None => {
                    q::close(conn, room_id).await?;
                    Ok(Left { new_owner: None, room_closed: true })
                }
                Some(next) if role == Role::Owner => {
                    q::set_role(conn, room_id, next, Role::Owner).await?;
                    Ok(Left { new_owner: Some(next), room_closed: false })
                }
                Some(_) => Ok(Left { new_owner: None, room_closed: false }),
            }
        })
        .await?;
    drop(conn);
    state.fanout.member_left(room_id, caller, "left").await;
    if let Some(owner) = left.new_owner {
        state.fanout.member_updated(room_id, owner, Role::Owner).await;
    }
    if left.room_closed {
        state.fanout.room_deleted(room_id).await;
    }
    Ok(left)
}

pub async fn members(
    state: &AppState,
    caller: Uuid,
    room_id: Uuid,
    cursor: Option<&str>,
    limit: Option<i64>,
) -> ApiResult<Page<Member>> {
    let limit = validate::limit(limit)?;
    let bad_cursor = || ApiError::field("cursor", "is not a cursor this server issued");
    let after = validate::decode_cursor(cursor)?
        .map(|c| {
            let (ts, id) = c.split_once('|').ok_or_else(bad_cursor)?;
            let ts = chrono::DateTime::parse_from_rfc3339(ts).map_err(|_| bad_cursor())?.to_utc();
            Ok::<_, ApiError>((ts, id.parse::<Uuid>().map_err(|_| bad_cursor())?))
        })
        .transpose()?;
    let mut conn = state.db_conn().await?;
    Access::load(&mut conn, room_id, caller, false).await?.member()?;
    let mut rows = q::list_members(&mut conn, room_id, after, limit + 1).await?;
    drop(conn);
    let next_cursor = validate::next_cursor(&mut rows, limit, |m| {
        format!("{}|{}", m.joined_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true), m.user_id)
    });
    let ids: Vec<Uuid> = rows.iter().map(|m| m.user_id).collect();
    let online: HashSet<Uuid> = presence::online_among(state, &ids).await;
    let items = rows
        .into_iter()
        .map(|m| Member {
            online: online.contains(&m.user_id),
            user_id: m.user_id,
            username: m.username,
            role: Role::parse(&m.role),
            joined_at: m.joined_at,
        })
        .collect();
    Ok(Page { items, next_cursor })
}

/// Adds users to a room; returns the ids newly added.
pub async fn add_members(state: &AppState, caller: Uuid, room_id: Uuid, user_ids: Vec<Uuid>) -> ApiResult<Vec<Uuid>> {
    Checks::new()
        .check(!user_ids.is_empty(), "user_ids", "must not be empty")
        .check(user_ids.len() <= MAX_MEMBERS_PER_CALL, "user_ids", "at most 100 at a time")
        .finish()?;
    let mut conn = state.db_conn().await?;
    let (added, last_seq) = conn
        .transaction::<_, ApiError, _>(async |conn| {
            let access = Access::load(conn, room_id, caller, true).await?;
            access.require(Role::Admin)?;
            access.group_only()?;
            if !users::missing_ids(conn, &user_ids).await?.is_empty() {
                return Err(ApiError::NotFound(Missing::User));
            }
            if !bans::banned_among(conn, room_id, &user_ids).await?.is_empty() {
                return Err(ApiError::Banned);
            }
            check_room_limit(state, conn, &user_ids).await?;
            Ok((q::add_members(conn, room_id, &user_ids, Role::Member).await?, access.room.last_seq))
        })
        .await?;
    drop(conn);
    for user in &added {
        state.fanout.member_joined(room_id, *user, Role::Member, last_seq).await;
    }
    Ok(added)
}

pub async fn remove_member(state: &AppState, caller: Uuid, room_id: Uuid, target: Uuid) -> ApiResult<()> {
    let mut conn = state.db_conn().await?;
    conn.transaction::<_, ApiError, _>(async |conn| {
        let access = Access::load(conn, room_id, caller, true).await?;
        let my_role = access.require(Role::Admin)?;
        access.group_only()?;
        if target == caller {
            return Err(ApiError::field("user_id", "use POST /rooms/{id}/leave to leave a room"));
        }
        let member = q::membership(conn, room_id, target).await?.ok_or(ApiError::NotFound(Missing::User))?;
        if member.role() >= my_role {
            return Err(ApiError::Forbidden("you may only remove members below your own role"));
        }
        q::remove_member(conn, room_id, target).await?;
        Ok(())
    })
    .await?;
    drop(conn);
    state.fanout.member_left(room_id, target, "removed").await;
    Ok(())
}

pub async fn set_role(state: &AppState, caller: Uuid, room_id: Uuid, target: Uuid, role: Role) -> ApiResult<Member> {
    if role == Role::Owner {
        return Err(ApiError::field("role", "must be admin or member; transfer ownership with POST /rooms/{id}/owner"));
    }
    let mut conn = state.db_conn().await?;
    let member = conn
        .transaction::<_, ApiError, _>(async |conn| {
            let access = Access::load(conn, room_id, caller, true).await?;
            access.require(Role::Owner)?;
            access.group_only()?;
            let member = q::membership(conn, room_id, target).await?.ok_or(ApiError::NotFound(Missing::User))?;
            if member.role() == Role::Owner {
                return Err(ApiError::field("user_id", "the owner's role changes only by transfer"));
            }
            q::set_role(conn, room_id, target, role).await?;
            Ok(member)
        })
        .await?;
    let user = users::by_id(&mut conn, target).await?.ok_or(ApiError::NotFound(Missing::User))?;
    drop(conn);
    state.fanout.member_updated(room_id, target, role).await;
    Ok(Member {
        user_id: target,
        username: user.username,
        role,
        joined_at: member.joined_at,
        online: presence::is_online(state, target).await,
    })
}

/// The one direct room between the caller and `other`; returns it and whether it was just created.
pub async fn direct(state: &AppState, caller: Uuid, other: Uuid) -> ApiResult<(Room, bool)> {
    if other == caller {
        return Err(ApiError::field("user_id", "must be someone other than yourself"));
    }
    let mut conn = state.db_conn().await?;
    if !q::direct_exists(&mut conn, caller, other).await? {
        // Opening a new one costs; opening the same room again does not.
        state.limits.take(Budget::DirectRoomOpened, caller, None).await?;
    }
    let (room_id, created) = conn
        .transaction::<_, ApiError, _>(async |conn| {
            users::by_id(conn, other).await?.ok_or(ApiError::NotFound(Missing::User))?;
            if !q::direct_exists(conn, caller, other).await? {
                check_room_limit(state, conn, &[caller, other]).await?;
            }
            Ok(q::upsert_direct(conn, caller, other).await?)
        })
        .await?;
    let room = view(&mut conn, room_id, caller).await?;
    drop(conn);
    if created {
        state.fanout.member_joined(room_id, caller, Role::Member, 0).await;
        state.fanout.member_joined(room_id, other, Role::Member, 0).await;
    }
    Ok((room, created))
}

/// Refuses a membership change that would put any of `users` in more rooms than allowed.
async fn check_room_limit(state: &AppState, conn: &mut DbConn, users: &[Uuid]) -> ApiResult<()> {
    let max = state.settings.max_rooms_per_user;
    if !q::users_at_room_limit(conn, users, max).await?.is_empty() {
        return Err(ApiError::TooManyRooms("a user would be in more rooms than allowed (CHORUS_MAX_ROOMS_PER_USER)"));
    }
    Ok(())
}

/// Whether `user` is (still) a member of a live room: a socket attached to a room checks again
/// after attaching, so a removal that raced the attach cannot leave it listening.
pub async fn is_member(state: &AppState, user: Uuid, room_id: Uuid) -> ApiResult<bool> {
    let mut conn = state.db_conn().await?;
    Ok(q::membership(&mut conn, room_id, user).await?.is_some() && q::find_live(&mut conn, room_id).await?.is_some())
}

const MAX_BAN_REASON: usize = 500;

/// Bans a user from a group room: they are removed at once (every node detaches their sockets) and
/// cannot join or be added until unbanned. Owners may ban anyone but themselves; admins only members
/// and non-members.
pub async fn ban(state: &AppState, caller: Uuid, room_id: Uuid, req: BanRequest) -> ApiResult<Ban> {
    let reason = req.reason.as_deref().map(str::trim).filter(|r| !r.is_empty());
    Checks::new()
        .check(req.user_id != caller, "user_id", "you cannot ban yourself")
        .check(
            reason.is_none_or(|r| r.chars().count() <= MAX_BAN_REASON && !r.chars().any(char::is_control)),
            "reason",
            "at most 500 characters, without control characters",
        )
        .finish()?;
    let mut conn = state.db_conn().await?;
    let (removed, ban) = conn
        .transaction::<_, ApiError, _>(async |conn| {
            let access = Access::load(conn, room_id, caller, true).await?;
            let my_role = access.require(Role::Admin)?;
            access.group_only()?;
            users::by_id(conn, req.user_id).await?.ok_or(ApiError::NotFound(Missing::User))?;
            let target = q::membership(conn, room_id, req.user_id).await?;
            if target.as_ref().is_some_and(|m| m.role() >= my_role) {
                return Err(ApiError::Forbidden("you may only ban users below your own role"));
            }
            let removed = match target {
                Some(_) => q::remove_member(conn, room_id, req.user_id).await?,
                None => false,
            };
            bans::ban(conn, room_id, req.user_id, caller, reason).await?;
            let ban = bans::find(conn, room_id, req.user_id).await?.ok_or(ApiError::NotFound(Missing::User))?;
            Ok((removed, ban))
        })
        .await?;
    drop(conn);
    if removed {
        state.fanout.member_left(room_id, req.user_id, "banned").await;
    }
    Ok(ban_view(ban))
}

fn ban_view(ban: bans::BanView) -> Ban {
    Ban {
        user_id: ban.user_id,
        username: ban.username,
        banned_by: ban.banned_by,
        reason: ban.reason,
        created_at: ban.created_at,
    }
}

/// The room's bans (owner and admins only).
pub async fn list_bans(
    state: &AppState,
    caller: Uuid,
    room_id: Uuid,
    cursor: Option<&str>,
    limit: Option<i64>,
) -> ApiResult<Page<Ban>> {
    let limit = validate::limit(limit)?;
    let after = validate::decode_uuid_cursor(cursor)?;
    let mut conn = state.db_conn().await?;
    Access::load(&mut conn, room_id, caller, false).await?.require(Role::Admin)?;
    let mut rows = bans::list(&mut conn, room_id, after, limit + 1).await?;
    let next_cursor = validate::next_cursor(&mut rows, limit, |b| b.user_id.to_string());
    Ok(Page { items: rows.into_iter().map(ban_view).collect(), next_cursor })
}

/// Lifts a ban (owner and admins); 404 `user.not_found` if there was none.
pub async fn unban(state: &AppState, caller: Uuid, room_id: Uuid, user: Uuid) -> ApiResult<()> {
    let mut conn = state.db_conn().await?;
    conn.transaction::<_, ApiError, _>(async |conn| {
        Access::load(conn, room_id, caller, true).await?.require(Role::Admin)?;
        if !bans::unban(conn, room_id, user).await? {
            return Err(ApiError::NotFound(Missing::User));
        }
        Ok(())
    })
    .await
}
