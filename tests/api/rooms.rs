//! Rooms: create, view, list, update, join, leave, members and roles, ownership, close, direct rooms.

use std::collections::HashSet;

use actix_web::http::StatusCode;
use futures_util::future::join_all;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::*;

async fn create(app: &TestApp, owner: &TestUser, body: Value) -> Reply {
    app.post("/api/v1/rooms", &owner.token, body).await
}

async fn get_room(app: &TestApp, who: &TestUser, room: Uuid) -> Reply {
    app.get(&format!("/api/v1/rooms/{room}"), &who.token).await
}

async fn leave(app: &TestApp, who: &TestUser, room: Uuid) -> Reply {
    app.request("POST", &format!("/api/v1/rooms/{room}/leave"), Some(&who.token), None).await
}

async fn set_role(app: &TestApp, by: &TestUser, room: Uuid, target: Uuid, role: &str) -> Reply {
    app.patch(&format!("/api/v1/rooms/{room}/members/{target}"), &by.token, json!({"role": role})).await
}

async fn remove(app: &TestApp, by: &TestUser, room: Uuid, target: Uuid) -> Reply {
    app.delete(&format!("/api/v1/rooms/{room}/members/{target}"), &by.token).await
}

async fn direct(app: &TestApp, by: &TestUser, other: Uuid) -> Reply {
    app.post("/api/v1/direct", &by.token, json!({"user_id": other})).await
}

/// `(user_id, role)` of every member, in the listed order.
async fn roles(app: &TestApp, who: &TestUser, room: Uuid) -> Vec<(Uuid, String)> {
    let res = app.get(&format!("/api/v1/rooms/{room}/members?limit=200"), &who.token).await;
    assert_eq!(res.status, StatusCode::OK, "members: {:?}", res.body);
    res.items().iter().map(|m| (uuid_of(&m["user_id"]), m["role"].as_str().expect("role").to_owned())).collect()
}

fn role_of(roles: &[(Uuid, String)], user: &TestUser) -> Option<String> {
    roles.iter().find(|(id, _)| *id == user.id).map(|(_, r)| r.clone())
}

/// Follows `next_cursor` from `first` to the end; returns the ids in order and the page count.
async fn page_ids(app: &TestApp, who: &TestUser, first: &str) -> (Vec<Uuid>, usize) {
    let mut ids = Vec::new();
    let mut pages = 0;
    let mut path = first.to_owned();
    loop {
        let res = app.get(&path, &who.token).await;
        assert_eq!(res.status, StatusCode::OK, "{path}: {:?}", res.body);
        ids.extend(res.items().iter().map(|r| uuid_of(&r["id"])));
        pages += 1;
        assert!(pages < 20, "paging does not end");
        match res.body["next_cursor"].as_str() {
            Some(c) => path = format!("{first}&cursor={c}"),
            None => return (ids, pages),
        }
    }
}

#[actix_web::test]
async fn create_public_room_answers_201_with_the_room() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let res = create(&app, &alice, json!({"name": "General", "visibility": "public"})).await;
    assert_eq!(res.status, StatusCode::CREATED, "{:?}", res.body);
    assert_eq!(res.id().get_version_num(), 7);
    assert_eq!(res.body["kind"], json!("group"));
    assert_eq!(res.body["name"], json!("General"));
    assert_eq!(res.body["visibility"], json!("public"));
    assert_eq!(res.body["protected"], json!(false));
    assert_eq!(uuid_of(&res.body["owner_id"]), alice.id);
    assert_eq!(res.body["member_count"], json!(1));
    assert_eq!(res.body["last_seq"], json!(0));
    assert_eq!(res.body["my_role"], json!("owner"));
    assert!(res.body["created_at"].as_str().is_some() && res.body["updated_at"].as_str().is_some());
    // GET shows the same room.
    let got = get_room(&app, &alice, res.id()).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body["name"], json!("General"));
    assert_eq!(got.body["my_role"], json!("owner"));
}

#[actix_web::test]
async fn create_private_room_with_members_and_password() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    // The creator and duplicates in member_ids are harmless.
    let res = create(
        &app,
        &alice,
        json!({"name": "Team", "visibility": "private", "member_ids": [bob.id, carol.id, bob.id, alice.id]}),
    )
    .await;
    assert_eq!(res.status, StatusCode::CREATED, "{:?}", res.body);
    assert_eq!(res.body["visibility"], json!("private"));
    assert_eq!(res.body["member_count"], json!(3));
    assert_eq!(res.body["my_role"], json!("owner"));
    let members = roles(&app, &alice, res.id()).await;
    assert_eq!(role_of(&members, &alice).as_deref(), Some("owner"));
    assert_eq!(role_of(&members, &bob).as_deref(), Some("member"));
    assert_eq!(role_of(&members, &carol).as_deref(), Some("member"));
    // Members can see it.
    let got = get_room(&app, &bob, res.id()).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body["my_role"], json!("member"));

    let protected =
        create(&app, &alice, json!({"name": "Vault", "visibility": "public", "password": "open sesame"})).await;
    assert_eq!(protected.status, StatusCode::CREATED, "{:?}", protected.body);
    assert_eq!(protected.body["protected"], json!(true));
    assert!(protected.body.get("password").is_none() && protected.body.get("password_hash").is_none());
}

#[actix_web::test]
async fn create_room_validation_names_each_bad_field() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let long = "x".repeat(65);
    for name in ["", " padded", "padded ", long.as_str(), "tab\there"] {
        let res = create(&app, &alice, json!({"name": name, "visibility": "public"})).await;
        assert_eq!(res.status, StatusCode::BAD_REQUEST, "{name:?}: {:?}", res.body);
        assert_eq!(res.fields(), vec!["name".to_owned()], "{name:?}");
    }
    let res = create(&app, &alice, json!({"name": "", "visibility": "public", "password": "short"})).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    let fields = res.fields();
    assert!(fields.contains(&"name".to_owned()) && fields.contains(&"password".to_owned()), "{fields:?}");
    let res = create(&app, &alice, json!({"visibility": "public"})).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert_eq!(res.fields(), vec!["name".to_owned()]);
    // Nothing was created.
    let mine = app.get("/api/v1/rooms", &alice.token).await;
    assert!(mine.items().is_empty(), "{:?}", mine.body);
}

#[actix_web::test]
async fn create_room_with_an_unknown_visibility_names_the_field() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let res = create(&app, &alice, json!({"name": "Odd", "visibility": "secret"})).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST, "{:?}", res.body);
    assert_eq!(res.code(), "validation");
    assert_eq!(res.fields(), vec!["visibility".to_owned()], "details name the bad field: {:?}", res.body);
}

#[actix_web::test]
async fn public_room_names_are_unique_case_insensitively_private_ones_are_not() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let lobby = create(&app, &alice, json!({"name": "Lobby", "visibility": "public"})).await;
    assert_eq!(lobby.status, StatusCode::CREATED);
    for name in ["Lobby", "LOBBY", "lobby"] {
        let res = create(&app, &bob, json!({"name": name, "visibility": "public"})).await;
        assert_eq!(res.status, StatusCode::CONFLICT, "{name}: {:?}", res.body);
        assert_eq!(res.code(), "room.conflict");
    }
    // Private rooms may share a name, with each other and with a public room.
    let a = create(&app, &alice, json!({"name": "lobby", "visibility": "private"})).await;
    let b = create(&app, &bob, json!({"name": "lobby", "visibility": "private"})).await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    assert_eq!(b.status, StatusCode::CREATED, "{:?}", b.body);
    assert_ne!(a.id(), b.id());
    // Once the public one is closed its name is free again.
    assert_eq!(app.delete(&format!("/api/v1/rooms/{}", lobby.id()), &alice.token).await.status, StatusCode::NO_CONTENT);
    let again = create(&app, &bob, json!({"name": "LOBBY", "visibility": "public"})).await;
    assert_eq!(again.status, StatusCode::CREATED, "{:?}", again.body);
}

#[actix_web::test]
async fn create_room_with_an_unknown_member_is_404_and_creates_nothing() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let res =
        create(&app, &alice, json!({"name": "Ghosts", "visibility": "public", "member_ids": [bob.id, Uuid::now_v7()]}))
            .await;
    assert_eq!(res.status, StatusCode::NOT_FOUND, "{:?}", res.body);
    assert_eq!(res.code(), "user.not_found");
    assert!(app.get("/api/v1/rooms", &alice.token).await.items().is_empty());
    assert!(app.get("/api/v1/rooms", &bob.token).await.items().is_empty());
    // The name was not taken either.
    let ok = create(&app, &alice, json!({"name": "Ghosts", "visibility": "public"})).await;
    assert_eq!(ok.status, StatusCode::CREATED);
}

#[actix_web::test]
async fn get_room_for_members_outsiders_and_unknown_ids() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let outsider = app.user("outsider").await;
    let public = app.room(&alice, "public").await;
    let private = app.room(&alice, "private").await;

    let res = get_room(&app, &outsider, public).await;
    assert_eq!(res.status, StatusCode::OK, "anyone sees a public room: {:?}", res.body);
    assert_eq!(res.id(), public);
    assert!(res.body.get("my_role").is_none(), "an outsider has no role: {:?}", res.body);
    assert!(res.body.get("read_seq").is_none());

    let res = get_room(&app, &outsider, private).await;
    assert_eq!(res.status, StatusCode::NOT_FOUND, "never 403 for a private room: {:?}", res.body);
    assert_eq!(res.code(), "room.not_found");
    let unknown = get_room(&app, &outsider, Uuid::now_v7()).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.code(), "room.not_found");
    // The private room's 404 is indistinguishable from a missing room's.
    assert_eq!(res.body, unknown.body);

    let res = get_room(&app, &alice, private).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.body["my_role"], json!("owner"));
    assert_eq!(res.body["read_seq"], json!(0));
    let bad = app.get("/api/v1/rooms/12345", &alice.token).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.code(), "validation");
}

#[actix_web::test]
async fn list_joined_rooms_pages_without_duplicates() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let mut mine = Vec::new();
    for i in 0..5 {
        mine.push(app.room(&alice, if i % 2 == 0 { "public" } else { "private" }).await);
    }
    let bobs = app.room(&bob, "public").await;
    let (ids, pages) = page_ids(&app, &alice, "/api/v1/rooms?scope=joined&limit=2").await;
    assert_eq!(pages, 3);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len(), "no duplicates");
    assert_eq!(ids.iter().collect::<HashSet<_>>(), mine.iter().collect::<HashSet<_>>());
    assert!(!ids.contains(&bobs));
    // `joined` is the default, and joined rooms carry my cursors.
    let res = app.get("/api/v1/rooms", &alice.token).await;
    let items = res.items();
    assert_eq!(items.len(), 5);
    assert_eq!(res.body["next_cursor"], Value::Null);
    for room in items {
        assert_eq!(room["my_role"], json!("owner"));
        assert_eq!(room["delivered_seq"], json!(0));
        assert_eq!(room["read_seq"], json!(0));
        assert_eq!(room["unread_count"], json!(0));
        assert!(
            room.get("protected").is_some() && room.get("member_count").is_some() && room.get("last_seq").is_some()
        );
    }
    let res = app.get("/api/v1/rooms?limit=0", &alice.token).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert_eq!(res.fields(), vec!["limit".to_owned()]);
}

#[actix_web::test]
async fn list_public_rooms_pages_and_hides_private_ones() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let mut public = HashSet::new();
    for _ in 0..3 {
        public.insert(app.room(&alice, "public").await);
    }
    app.room(&alice, "private").await;
    app.room(&alice, "private").await;
    let (ids, pages) = page_ids(&app, &bob, "/api/v1/rooms?scope=public&limit=2").await;
    assert_eq!(pages, 2);
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert_eq!(ids.into_iter().collect::<HashSet<_>>(), public);
    let res = app.get("/api/v1/rooms?scope=public", &bob.token).await;
    for room in res.items() {
        assert_eq!(room["visibility"], json!("public"));
        assert!(room.get("my_role").is_none(), "bob is in none of them: {room:?}");
        assert!(
            room.get("protected").is_some() && room.get("member_count").is_some() && room.get("last_seq").is_some()
        );
    }
    assert!(app.get("/api/v1/rooms?scope=joined", &bob.token).await.items().is_empty());
    let res = app.get("/api/v1/rooms?scope=everything", &bob.token).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert_eq!(res.fields(), vec!["scope".to_owned()]);
}

#[actix_web::test]
async fn patch_room_by_owner_and_admin_but_not_member_or_outsider() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let outsider = app.user("outsider").await;
    let room = app.room(&alice, "private").await;
    app.add(&alice, room, &[&bob, &carol]).await;
    assert_eq!(set_role(&app, &alice, room, bob.id, "admin").await.status, StatusCode::OK);
    let path = format!("/api/v1/rooms/{room}");

    let res = app.patch(&path, &alice.token, json!({"name": "Renamed by owner"})).await;
    assert_eq!(res.status, StatusCode::OK, "{:?}", res.body);
    assert_eq!(res.body["name"], json!("Renamed by owner"));
    let res = app.patch(&path, &bob.token, json!({"name": "Renamed by admin"})).await;
    assert_eq!(res.status, StatusCode::OK, "{:?}", res.body);
    assert_eq!(res.body["name"], json!("Renamed by admin"));
    let res = app.patch(&path, &carol.token, json!({"name": "Renamed by member"})).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN, "{:?}", res.body);
    assert_eq!(res.code(), "room.forbidden");
    let res = app.patch(&path, &outsider.token, json!({"name": "Renamed by outsider"})).await;
    assert_eq!(res.status, StatusCode::NOT_FOUND, "{:?}", res.body);
    assert_eq!(res.code(), "room.not_found");
    assert_eq!(get_room(&app, &alice, room).await.body["name"], json!("Renamed by admin"));

    // Going public makes it visible to outsiders; back to private hides it again.
    let res = app.patch(&path, &alice.token, json!({"visibility": "public"})).await;
    assert_eq!(res.body["visibility"], json!("public"));
    assert_eq!(get_room(&app, &outsider, room).await.status, StatusCode::OK);
    app.patch(&path, &alice.token, json!({"visibility": "private"})).await;
    assert_eq!(get_room(&app, &outsider, room).await.status, StatusCode::NOT_FOUND);
    let res = app.patch(&path, &alice.token, json!({"name": ""})).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert_eq!(res.fields(), vec!["name".to_owned()]);
}

#[actix_web::test]
async fn patch_room_to_a_taken_public_name_is_a_conflict() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let taken = create(&app, &alice, json!({"name": "Taken", "visibility": "public"})).await;
    assert_eq!(taken.status, StatusCode::CREATED);
    let other = create(&app, &alice, json!({"name": "Other", "visibility": "public"})).await;
    let res = app.patch(&format!("/api/v1/rooms/{}", other.id()), &alice.token, json!({"name": "TAKEN"})).await;
    assert_eq!(res.status, StatusCode::CONFLICT, "{:?}", res.body);
    assert_eq!(res.code(), "room.conflict");
    assert_eq!(get_room(&app, &alice, other.id()).await.body["name"], json!("Other"));
    // A private room named like a public one may not go public.
    let private = create(&app, &alice, json!({"name": "taken", "visibility": "private"})).await;
    assert_eq!(private.status, StatusCode::CREATED);
    let res =
        app.patch(&format!("/api/v1/rooms/{}", private.id()), &alice.token, json!({"visibility": "public"})).await;
    assert_eq!(res.status, StatusCode::CONFLICT, "{:?}", res.body);
    assert_eq!(res.code(), "room.conflict");
}

#[actix_web::test]
async fn patch_room_password_sets_and_removes_protection() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let room = app.room(&alice, "public").await;
    let path = format!("/api/v1/rooms/{room}");
    let res = app.patch(&path, &alice.token, json!({"password": "hunter2hunter2"})).await;
    assert_eq!(res.status, StatusCode::OK, "{:?}", res.body);
    assert_eq!(res.body["protected"], json!(true));
    // An update without `password` leaves protection as it is.
    let res = app.patch(&path, &alice.token, json!({"name": "Still protected"})).await;
    assert_eq!(res.body["protected"], json!(true), "{:?}", res.body);
    let res = app.patch(&path, &alice.token, json!({"password": null})).await;
    assert_eq!(res.status, StatusCode::OK, "{:?}", res.body);
    assert_eq!(res.body["protected"], json!(false));
    assert_eq!(get_room(&app, &alice, room).await.body["protected"], json!(false));
    let res = app.patch(&path, &alice.token, json!({"password": "short"})).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert_eq!(res.fields(), vec!["password".to_owned()]);
}

#[actix_web::test]
async fn join_a_public_room() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let room = app.room(&alice, "public").await;
    let res = app.join(&bob, room).await;
    assert_eq!(res.status, StatusCode::OK, "{:?}", res.body);
    assert_eq!(res.id(), room);
    assert_eq!(res.body["my_role"], json!("member"));
    assert_eq!(res.body["member_count"], json!(2));
    // Joining twice is harmless.
    let again = app.join(&bob, room).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["member_count"], json!(2));
    assert_eq!(role_of(&roles(&app, &alice, room).await, &bob).as_deref(), Some("member"));
    let unknown = app.join(&bob, Uuid::now_v7()).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.code(), "room.not_found");
}

#[actix_web::test]
async fn join_takes_no_body_or_a_valid_one() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let room = create(&app, &alice, json!({"name": "Lobby", "visibility": "public"})).await;
    let path = format!("/api/v1/rooms/{}/join", room.id());
    // A body that is there is read like any other: a mistyped one is refused, not ignored.
    for body in [json!({"password": 5}), json!([]), json!("open")] {
        let res = app.post(&path, &bob.token, body.clone()).await;
        assert_eq!(res.status, StatusCode::BAD_REQUEST, "{body}: {:?}", res.body);
        assert_eq!(res.code(), "validation", "{body}");
    }
    for body in [None, Some(json!(null)), Some(json!({}))] {
        let res = app.request("POST", &path, Some(&bob.token), body.clone()).await;
        assert_eq!(res.status, StatusCode::OK, "{body:?}: {:?}", res.body);
    }
}

#[actix_web::test]
async fn join_a_protected_room_needs_the_password() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let room = create(&app, &alice, json!({"name": "Vault", "visibility": "public", "password": "open sesame"})).await;
    let path = format!("/api/v1/rooms/{}/join", room.id());
    let missing = app.request("POST", &path, Some(&bob.token), None).await;
    assert_eq!(missing.status, StatusCode::FORBIDDEN, "{:?}", missing.body);
    assert_eq!(missing.code(), "room.wrong_password");
    let empty = app.post(&path, &bob.token, json!({})).await;
    assert_eq!(empty.status, StatusCode::FORBIDDEN);
    assert_eq!(empty.code(), "room.wrong_password");
    let wrong = app.post(&path, &bob.token, json!({"password": "open barley"})).await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    assert_eq!(wrong.code(), "room.wrong_password");
    assert!(role_of(&roles(&app, &alice, room.id()).await, &bob).is_none());
    let right = app.post(&path, &bob.token, json!({"password": "open sesame"})).await;
    assert_eq!(right.status, StatusCode::OK, "{:?}", right.body);
    assert_eq!(right.body["my_role"], json!("member"));
}

#[actix_web::test]
async fn join_a_private_room_is_404() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let room = app.room(&alice, "private").await;
    let res = app.join(&bob, room).await;
    assert_eq!(res.status, StatusCode::NOT_FOUND, "{:?}", res.body);
    assert_eq!(res.code(), "room.not_found");
    assert!(role_of(&roles(&app, &alice, room).await, &bob).is_none());
}

#[actix_web::test]
async fn an_owner_who_leaves_hands_over_to_the_longest_standing_admin() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let dave = app.user("dave").await;
    let room = app.room(&alice, "public").await;
    // Join order: bob (a plain member), then carol, then dave; promotion order: dave, then carol.
    for u in [&bob, &carol, &dave] {
        assert_eq!(app.join(u, room).await.status, StatusCode::OK);
    }
    assert_eq!(set_role(&app, &alice, room, dave.id, "admin").await.status, StatusCode::OK);
    assert_eq!(set_role(&app, &alice, room, carol.id, "admin").await.status, StatusCode::OK);
    let res = leave(&app, &alice, room).await;
    assert_eq!(res.status, StatusCode::NO_CONTENT, "{:?}", res.body);
    let got = get_room(&app, &bob, room).await;
    assert_eq!(uuid_of(&got.body["owner_id"]), carol.id, "carol joined before dave: {:?}", got.body);
    assert_eq!(got.body["member_count"], json!(3));
    let members = roles(&app, &bob, room).await;
    assert_eq!(role_of(&members, &carol).as_deref(), Some("owner"));
    assert_eq!(role_of(&members, &dave).as_deref(), Some("admin"));
    assert_eq!(role_of(&members, &bob).as_deref(), Some("member"));
    assert_eq!(role_of(&members, &alice), None);
    // Alice is an outsider of a public room now.
    assert!(get_room(&app, &alice, room).await.body.get("my_role").is_none());
}

#[actix_web::test]
async fn an_owner_who_leaves_without_admins_hands_over_to_the_longest_standing_member() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let room = app.room(&alice, "public").await;
    app.join(&bob, room).await;
    app.join(&carol, room).await;
    assert_eq!(leave(&app, &alice, room).await.status, StatusCode::NO_CONTENT);
    let got = get_room(&app, &carol, room).await;
    assert_eq!(uuid_of(&got.body["owner_id"]), bob.id, "{:?}", got.body);
    assert_eq!(got.body["member_count"], json!(2));
    // A plain member leaving changes no roles.
    assert_eq!(leave(&app, &carol, room).await.status, StatusCode::NO_CONTENT);
    assert_eq!(roles(&app, &bob, room).await, vec![(bob.id, "owner".to_owned())]);
}

#[actix_web::test]
async fn the_last_one_out_deletes_the_room() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let room = create(&app, &alice, json!({"name": "Lonely", "visibility": "public"})).await.id();
    assert_eq!(leave(&app, &alice, room).await.status, StatusCode::NO_CONTENT);
    for who in [&alice, &bob] {
        let res = get_room(&app, who, room).await;
        assert_eq!(res.status, StatusCode::NOT_FOUND, "{:?}", res.body);
        assert_eq!(res.code(), "room.not_found");
    }
    assert_eq!(app.join(&bob, room).await.status, StatusCode::NOT_FOUND);
    assert!(app.get("/api/v1/rooms?scope=public", &bob.token).await.items().is_empty());
    // Its public name is free again.
    assert_eq!(create(&app, &bob, json!({"name": "Lonely", "visibility": "public"})).await.status, StatusCode::CREATED);
}

#[actix_web::test]
async fn leave_needs_membership() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let public = app.room(&alice, "public").await;
    let private = app.room(&alice, "private").await;
    let res = leave(&app, &bob, public).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN, "{:?}", res.body);
    assert_eq!(res.code(), "room.forbidden");
    let res = leave(&app, &bob, private).await;
    assert_eq!(res.status, StatusCode::NOT_FOUND, "{:?}", res.body);
    assert_eq!(res.code(), "room.not_found");
    assert_eq!(get_room(&app, &alice, public).await.body["member_count"], json!(1));
}

#[actix_web::test]
async fn members_list_roles_join_times_and_presence() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let outsider = app.user("outsider").await;
    let room = app.room(&alice, "public").await;
    app.join(&bob, room).await;
    app.join(&carol, room).await;
    set_role(&app, &alice, room, bob.id, "admin").await;
    let res = app.get(&format!("/api/v1/rooms/{room}/members"), &carol.token).await;
    assert_eq!(res.status, StatusCode::OK, "{:?}", res.body);
    let items = res.items();
    let listed: Vec<(Uuid, &str, &str)> = items
        .iter()
        .map(|m| (uuid_of(&m["user_id"]), m["username"].as_str().expect("username"), m["role"].as_str().expect("role")))
        .collect();
    assert_eq!(
        listed,
        vec![
            (alice.id, alice.username.as_str(), "owner"),
            (bob.id, bob.username.as_str(), "admin"),
            (carol.id, carol.username.as_str(), "member")
        ],
        "by join time"
    );
    let mut last = None;
    for m in &items {
        assert_eq!(m["online"], json!(false));
        let joined: chrono::DateTime<chrono::Utc> = m["joined_at"].as_str().expect("joined_at").parse().expect("time");
        assert!(last.is_none_or(|l| l <= joined));
        last = Some(joined);
    }
    // Paging.
    let first = app.get(&format!("/api/v1/rooms/{room}/members?limit=2"), &alice.token).await;
    assert_eq!(first.items().len(), 2);
    let cursor = first.body["next_cursor"].as_str().expect("a next page").to_owned();
    let second = app.get(&format!("/api/v1/rooms/{room}/members?limit=2&cursor={cursor}"), &alice.token).await;
    assert_eq!(second.status, StatusCode::OK, "{:?}", second.body);
    assert_eq!(second.items().len(), 1);
    assert_eq!(uuid_of(&second.items()[0]["user_id"]), carol.id);
    assert_eq!(second.body["next_cursor"], Value::Null);
    // Outsiders: 403 for a public room, 404 for a private one.
    let res = app.get(&format!("/api/v1/rooms/{room}/members"), &outsider.token).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN, "{:?}", res.body);
    assert_eq!(res.code(), "room.forbidden");
    let private = app.room(&alice, "private").await;
    let res = app.get(&format!("/api/v1/rooms/{private}/members"), &outsider.token).await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);
    assert_eq!(res.code(), "room.not_found");
}

#[actix_web::test]
async fn add_members_by_owner_or_admin_only() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let dave = app.user("dave").await;
    let room = app.room(&alice, "private").await;
    let path = format!("/api/v1/rooms/{room}/members");
    let res = app.post(&path, &alice.token, json!({"user_ids": [bob.id]})).await;
    assert_eq!(res.status, StatusCode::OK, "{:?}", res.body);
    assert_eq!(res.body["added"], json!([bob.id]));
    // Bob now sees the private room.
    assert_eq!(get_room(&app, &bob, room).await.status, StatusCode::OK);
    let res = app.post(&path, &alice.token, json!({"user_ids": [bob.id]})).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.body["added"], json!([]), "already a member");
    set_role(&app, &alice, room, bob.id, "admin").await;
    let res = app.post(&path, &bob.token, json!({"user_ids": [carol.id]})).await;
    assert_eq!(res.status, StatusCode::OK, "an admin adds: {:?}", res.body);
    assert_eq!(res.body["added"], json!([carol.id]));
    let res = app.post(&path, &carol.token, json!({"user_ids": [dave.id]})).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN, "a member does not: {:?}", res.body);
    assert_eq!(res.code(), "room.forbidden");
    let res = app.post(&path, &dave.token, json!({"user_ids": [dave.id]})).await;
    assert_eq!(res.status, StatusCode::NOT_FOUND, "an outsider of a private room: {:?}", res.body);
    let res = app.post(&path, &alice.token, json!({"user_ids": [dave.id, Uuid::now_v7()]})).await;
    assert_eq!(res.status, StatusCode::NOT_FOUND, "{:?}", res.body);
    assert_eq!(res.code(), "user.not_found");
    assert!(role_of(&roles(&app, &alice, room).await, &dave).is_none(), "all or nothing");
    let res = app.post(&path, &alice.token, json!({"user_ids": []})).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert_eq!(res.fields(), vec!["user_ids".to_owned()]);
    assert_eq!(get_room(&app, &alice, room).await.body["member_count"], json!(3));
}

#[actix_web::test]
async fn remove_member_follows_the_role_ranking() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let dave = app.user("dave").await;
    let eve = app.user("eve").await;
    let room = app.room(&alice, "private").await;
    app.add(&alice, room, &[&bob, &carol, &dave, &eve]).await;
    set_role(&app, &alice, room, bob.id, "admin").await;
    set_role(&app, &alice, room, carol.id, "admin").await;

    let res = remove(&app, &bob, room, dave.id).await;
    assert_eq!(res.status, StatusCode::NO_CONTENT, "an admin removes a member: {:?}", res.body);
    assert!(role_of(&roles(&app, &alice, room).await, &dave).is_none());
    assert_eq!(get_room(&app, &dave, room).await.status, StatusCode::NOT_FOUND, "dave is out of the private room");

    let res = remove(&app, &bob, room, carol.id).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN, "admin removes admin: {:?}", res.body);
    assert_eq!(res.code(), "room.forbidden");
    let res = remove(&app, &bob, room, alice.id).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN, "admin removes owner: {:?}", res.body);
    assert_eq!(res.code(), "room.forbidden");
    let res = remove(&app, &eve, room, bob.id).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN, "a member removes nobody: {:?}", res.body);

    let res = remove(&app, &alice, room, carol.id).await;
    assert_eq!(res.status, StatusCode::NO_CONTENT, "owner removes admin: {:?}", res.body);
    let res = remove(&app, &alice, room, Uuid::now_v7()).await;
    assert_eq!(res.status, StatusCode::NOT_FOUND, "{:?}", res.body);
    assert_eq!(res.code(), "user.not_found");
    let res = remove(&app, &alice, room, dave.id).await;
    assert_eq!(res.status, StatusCode::NOT_FOUND, "no longer a member: {:?}", res.body);

    let members = roles(&app, &alice, room).await;
    let ids: HashSet<Uuid> = members.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, [alice.id, bob.id, eve.id].into_iter().collect());
}

#[actix_web::test]
async fn member_roles_are_set_by_the_owner_only() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let outsider = app.user("outsider").await;
    let room = app.room(&alice, "public").await;
    app.join(&bob, room).await;
    app.join(&carol, room).await;

    let res = set_role(&app, &alice, room, bob.id, "admin").await;
    assert_eq!(res.status, StatusCode::OK, "{:?}", res.body);
    assert_eq!(uuid_of(&res.body["user_id"]), bob.id);
    assert_eq!(res.body["role"], json!("admin"));
    assert_eq!(role_of(&roles(&app, &alice, room).await, &bob).as_deref(), Some("admin"));

    let res = set_role(&app, &bob, room, carol.id, "admin").await;
    assert_eq!(res.status, StatusCode::FORBIDDEN, "an admin cannot promote: {:?}", res.body);
    assert_eq!(res.code(), "room.forbidden");
    assert_eq!(role_of(&roles(&app, &alice, room).await, &carol).as_deref(), Some("member"));

    let res = set_role(&app, &alice, room, bob.id, "owner").await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST, "{:?}", res.body);
    assert_eq!(res.code(), "validation");
    assert_eq!(res.fields(), vec!["role".to_owned()]);

    let res = set_role(&app, &alice, room, bob.id, "member").await;
    assert_eq!(res.status, StatusCode::OK, "{:?}", res.body);
    assert_eq!(res.body["role"], json!("member"));
    assert_eq!(role_of(&roles(&app, &alice, room).await, &bob).as_deref(), Some("member"));

    let res = set_role(&app, &alice, room, outsider.id, "admin").await;
    assert_eq!(res.status, StatusCode::NOT_FOUND, "{:?}", res.body);
    assert_eq!(res.code(), "user.not_found");
    let res = set_role(&app, &alice, room, alice.id, "member").await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST, "the owner's role changes only by transfer: {:?}", res.body);
    assert_eq!(role_of(&roles(&app, &alice, room).await, &alice).as_deref(), Some("owner"));
}

#[actix_web::test]
async fn transfer_ownership_to_a_member() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let dave = app.user("dave").await;
    let room = app.room(&alice, "public").await;
    app.join(&bob, room).await;
    app.join(&carol, room).await;
    let path = format!("/api/v1/rooms/{room}/owner");

    let res = app.post(&path, &carol.token, json!({"user_id": carol.id})).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN, "a member cannot take over: {:?}", res.body);
    assert_eq!(res.code(), "room.forbidden");
    let res = app.post(&path, &alice.token, json!({"user_id": dave.id})).await;
    assert_eq!(res.status, StatusCode::NOT_FOUND, "dave is not a member: {:?}", res.body);
    assert_eq!(res.code(), "user.not_found");

    let res = app.post(&path, &alice.token, json!({"user_id": bob.id})).await;
    assert_eq!(res.status, StatusCode::OK, "{:?}", res.body);
    assert_eq!(uuid_of(&res.body["owner_id"]), bob.id);
    assert_eq!(res.body["my_role"], json!("admin"), "the old owner becomes an admin");
    let members = roles(&app, &carol, room).await;
    assert_eq!(role_of(&members, &bob).as_deref(), Some("owner"));
    assert_eq!(role_of(&members, &alice).as_deref(), Some("admin"));
    assert_eq!(members.iter().filter(|(_, r)| r == "owner").count(), 1);

    // The old owner has an admin's rights now, not an owner's.
    let res = app.post(&path, &alice.token, json!({"user_id": carol.id})).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN, "{:?}", res.body);
    assert_eq!(app.delete(&format!("/api/v1/rooms/{room}"), &alice.token).await.status, StatusCode::FORBIDDEN);
}

#[actix_web::test]
async fn close_room_by_the_owner_only() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let room = app.room(&alice, "private").await;
    app.add(&alice, room, &[&bob, &carol]).await;
    set_role(&app, &alice, room, bob.id, "admin").await;
    let path = format!("/api/v1/rooms/{room}");
    let res = app.delete(&path, &bob.token).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN, "an admin cannot close: {:?}", res.body);
    assert_eq!(res.code(), "room.forbidden");
    let res = app.delete(&path, &carol.token).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    assert_eq!(get_room(&app, &alice, room).await.status, StatusCode::OK);

    let res = app.delete(&path, &alice.token).await;
    assert_eq!(res.status, StatusCode::NO_CONTENT, "{:?}", res.body);
    for who in [&alice, &bob, &carol] {
        let res = get_room(&app, who, room).await;
        assert_eq!(res.status, StatusCode::NOT_FOUND);
        assert_eq!(res.code(), "room.not_found");
    }
    assert_eq!(app.get(&format!("{path}/messages"), &alice.token).await.status, StatusCode::NOT_FOUND);
    assert_eq!(app.send(&bob, room, "anyone?").await.status, StatusCode::NOT_FOUND);
    assert_eq!(app.delete(&path, &alice.token).await.status, StatusCode::NOT_FOUND);
    assert!(app.get("/api/v1/rooms", &bob.token).await.items().is_empty());
}

#[actix_web::test]
async fn direct_room_is_created_once_and_found_from_both_sides() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let first = direct(&app, &alice, bob.id).await;
    assert_eq!(first.status, StatusCode::CREATED, "{:?}", first.body);
    assert_eq!(first.body["kind"], json!("direct"));
    assert_eq!(first.body["name"], Value::Null);
    assert_eq!(first.body["visibility"], json!("private"));
    assert_eq!(first.body["member_count"], json!(2));
    assert_eq!(first.body["my_role"], json!("member"));
    let second = direct(&app, &alice, bob.id).await;
    assert_eq!(second.status, StatusCode::OK, "{:?}", second.body);
    assert_eq!(second.id(), first.id());
    let other_side = direct(&app, &bob, alice.id).await;
    assert_eq!(other_side.status, StatusCode::OK, "{:?}", other_side.body);
    assert_eq!(other_side.id(), first.id());
    // Both can talk there; a third user cannot even see it.
    assert_eq!(app.send(&bob, first.id(), "hi alice").await.status, StatusCode::CREATED);
    let res = get_room(&app, &carol, first.id()).await;
    assert_eq!(res.status, StatusCode::NOT_FOUND, "{:?}", res.body);
    assert_eq!(res.code(), "room.not_found");
    assert_eq!(app.join(&carol, first.id()).await.status, StatusCode::NOT_FOUND);
    // A different pair gets a different room.
    let ac = direct(&app, &alice, carol.id).await;
    assert_eq!(ac.status, StatusCode::CREATED);
    assert_ne!(ac.id(), first.id());
}

#[actix_web::test]
async fn direct_room_errors() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let res = direct(&app, &alice, alice.id).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST, "{:?}", res.body);
    assert_eq!(res.code(), "validation");
    assert_eq!(res.fields(), vec!["user_id".to_owned()]);
    let res = direct(&app, &alice, Uuid::now_v7()).await;
    assert_eq!(res.status, StatusCode::NOT_FOUND, "{:?}", res.body);
    assert_eq!(res.code(), "user.not_found");
    assert!(app.get("/api/v1/rooms", &alice.token).await.items().is_empty());
}

#[actix_web::test]
async fn concurrent_direct_calls_yield_one_room() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let calls = (0..10).map(|i| if i % 2 == 0 { direct(&app, &alice, bob.id) } else { direct(&app, &bob, alice.id) });
    let replies = join_all(calls).await;
    for r in &replies {
        assert!(r.status == StatusCode::CREATED || r.status == StatusCode::OK, "{:?}", r.body);
    }
    let ids: HashSet<Uuid> = replies.iter().map(Reply::id).collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(replies.iter().filter(|r| r.status == StatusCode::CREATED).count(), 1, "created exactly once");
    let id = *ids.iter().next().expect("an id");
    let listed: Vec<Uuid> =
        app.get("/api/v1/rooms", &alice.token).await.items().iter().map(|r| uuid_of(&r["id"])).collect();
    assert_eq!(listed, vec![id]);
    assert_eq!(get_room(&app, &bob, id).await.body["member_count"], json!(2));
}
