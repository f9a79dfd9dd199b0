//! Seeds users, rooms and memberships straight into PostgreSQL and mints access tokens with the
//! cluster's secret: registering tens of thousands of users through argon2 would take longer than the test.

use diesel::sql_types::{Array, Text, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use jsonwebtoken::{EncodingKey, Header};
use uuid::Uuid;

pub struct Fixture {
    /// One user per connection: (id, token).
    pub users: Vec<(Uuid, String)>,
    pub rooms: Vec<Uuid>,
    /// The room each user belongs to (index into `rooms`).
    pub room_of: Vec<usize>,
}

const CHUNK: usize = 5000;

/// `users` users in rooms of `room_size` (the last room may be smaller).
pub async fn seed(database_url: &str, secret: &str, users: usize, room_size: usize) -> Result<Fixture, String> {
    let mut conn =
        AsyncPgConnection::establish(database_url).await.map_err(|e| format!("connect {database_url}: {e}"))?;
    let run = Uuid::new_v4().simple().to_string();
    let run = &run[..8];
    let user_ids: Vec<Uuid> = (0..users).map(|_| Uuid::now_v7()).collect();
    let names: Vec<String> = (0..users).map(|i| format!("lt{run}u{i}")).collect();
    for (ids, names) in user_ids.chunks(CHUNK).zip(names.chunks(CHUNK)) {
        diesel::sql_query(
            "INSERT INTO users (id, username, username_key, password_hash)
             SELECT u, n, n, '!' FROM unnest($1::uuid[], $2::text[]) AS t(u, n)",
        )
        .bind::<Array<SqlUuid>, _>(ids)
        .bind::<Array<Text>, _>(names)
        .execute(&mut conn)
        .await
        .map_err(|e| format!("insert users: {e}"))?;
    }
    let room_size = room_size.max(1);
    let room_count = users.div_ceil(room_size);
    let rooms: Vec<Uuid> = (0..room_count).map(|_| Uuid::now_v7()).collect();
    let room_names: Vec<String> = (0..room_count).map(|i| format!("lt{run}r{i}")).collect();
    diesel::sql_query(
        "INSERT INTO rooms (id, kind, name, visibility) SELECT r, 'group', n, 'private' FROM unnest($1::uuid[], $2::text[]) AS t(r, n)",
    )
    .bind::<Array<SqlUuid>, _>(&rooms)
    .bind::<Array<Text>, _>(&room_names)
    .execute(&mut conn)
    .await
    .map_err(|e| format!("insert rooms: {e}"))?;
    let room_of: Vec<usize> = (0..users).map(|i| i / room_size).collect();
    let member_rooms: Vec<Uuid> = room_of.iter().map(|r| rooms[*r]).collect();
    for (rs, us) in member_rooms.chunks(CHUNK).zip(user_ids.chunks(CHUNK)) {
        diesel::sql_query(
            "INSERT INTO room_members (room_id, user_id, role) SELECT r, u, 'member' FROM unnest($1::uuid[], $2::uuid[]) AS t(r, u)",
        )
        .bind::<Array<SqlUuid>, _>(rs)
        .bind::<Array<SqlUuid>, _>(us)
        .execute(&mut conn)
        .await
        .map_err(|e| format!("insert members: {e}"))?;
    }
    let key = EncodingKey::from_secret(secret.as_bytes());
    let now = chorus::unix_secs();
    let users = user_ids
        .iter()
        .zip(&names)
        .map(|(id, name)| {
            let claims = chorus::Claims { sub: *id, name: name.clone(), iat: now, exp: now + 6 * 3600, gen: 0 };
            jsonwebtoken::encode(&Header::default(), &claims, &key).map(|t| (*id, t)).map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Fixture { users, rooms, room_of })
}
