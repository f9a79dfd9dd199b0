//! Accounts: register, login, access tokens, refresh rotation, logout, user lookup and search.

use std::collections::HashSet;

use actix_web::http::StatusCode;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chorus::Claims;
use futures_util::future::join_all;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::*;

/// The secret `Settings::for_tests` gives every test node.
const NODE_SECRET: &str = "test-secret-that-is-long-enough-0123456789";

fn mint(secret: &str, user: &TestUser, iat: u64, exp: u64) -> String {
    let claims = Claims { sub: user.id, name: user.username.clone(), iat, exp, gen: 0 };
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes()))
        .expect("sign a token")
}

fn keys(v: &Value) -> HashSet<String> {
    v.as_object().expect("an object").keys().cloned().collect()
}

#[actix_web::test]
async fn register_login_and_me() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let me = app.get("/api/v1/users/me", &alice.token).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.body["username"], json!(alice.username));
    assert_eq!(me.body["online"], json!(false));
}

#[actix_web::test]
async fn register_answers_201_with_the_user() {
    let app = spawn_app().await;
    let before = chrono::Utc::now() - chrono::Duration::seconds(5);
    let res = app.register("Alice.Example-1", "long enough").await;
    assert_eq!(res.status, StatusCode::CREATED, "{:?}", res.body);
    let expected: HashSet<String> =
        ["id", "username", "created_at", "online", "last_seen_at"].iter().map(|s| s.to_string()).collect();
    assert_eq!(keys(&res.body), expected, "no password hash or other extras: {:?}", res.body);
    assert_eq!(res.id().get_version_num(), 7, "ids are UUID v7");
    assert_eq!(res.body["username"], json!("Alice.Example-1"), "the name keeps its case");
    assert_eq!(res.body["online"], json!(false));
    assert_eq!(res.body["last_seen_at"], Value::Null);
    let created: chrono::DateTime<chrono::Utc> =
        res.body["created_at"].as_str().expect("created_at").parse().expect("RFC 3339 time");
    assert!(created >= before && created <= chrono::Utc::now() + chrono::Duration::seconds(5), "{created}");
}

#[actix_web::test]
async fn register_rejects_a_username_taken_in_any_case() {
    let app = spawn_app().await;
    assert_eq!(app.register("Mixed_Case", "long enough").await.status, StatusCode::CREATED);
    for name in ["Mixed_Case", "mixed_case", "MIXED_CASE"] {
        let res = app.register(name, "another password").await;
        assert_eq!(res.status, StatusCode::CONFLICT, "{name}: {:?}", res.body);
        assert_eq!(res.code(), "user.conflict");
        assert!(res.body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
}

#[actix_web::test]
async fn register_names_every_bad_field_at_once() {
    let app = spawn_app().await;
    let res = app.register("a!", "short").await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST, "{:?}", res.body);
    assert_eq!(res.code(), "validation");
    let fields = res.fields();
    assert!(fields.contains(&"username".to_owned()), "{fields:?}");
    assert!(fields.contains(&"password".to_owned()), "{fields:?}");
    for detail in res.body["details"].as_array().expect("details") {
        assert!(detail["message"].as_str().is_some_and(|m| !m.is_empty()), "{detail:?}");
    }
}

#[actix_web::test]
async fn register_enforces_the_username_and_password_rules() {
    let app = spawn_app().await;
    let long = "a".repeat(33);
    for bad in ["ab", long.as_str(), "has space", "élodie", "semi;colon", ""] {
        let res = app.register(bad, "long enough").await;
        assert_eq!(res.status, StatusCode::BAD_REQUEST, "{bad:?}: {:?}", res.body);
        assert_eq!(res.fields(), vec!["username".to_owned()], "{bad:?}");
    }
    let res = app.register("seven_ok", "1234567").await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST, "7-char password: {:?}", res.body);
    assert_eq!(res.fields(), vec!["password".to_owned()]);
    // The boundaries themselves are fine.
    assert_eq!(app.register("abc", "12345678").await.status, StatusCode::CREATED);
    assert_eq!(app.register(&"b".repeat(32), "12345678").await.status, StatusCode::CREATED);
    assert_eq!(app.register("a.b-c_D9", "12345678").await.status, StatusCode::CREATED);
}

#[actix_web::test]
async fn register_with_a_missing_field_is_a_validation_error() {
    let app = spawn_app().await;
    let res = app.request("POST", "/api/v1/auth/register", None, Some(json!({"username": "nopassword"}))).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST, "{:?}", res.body);
    assert_eq!(res.code(), "validation");
    assert_eq!(res.fields(), vec!["password".to_owned()]);
    let res = app.request("POST", "/api/v1/auth/register", None, Some(json!({"password": "long enough"}))).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert_eq!(res.fields(), vec!["username".to_owned()]);
    // And nothing was stored.
    assert_eq!(app.login("nopassword", "long enough").await.status, StatusCode::UNAUTHORIZED);
}

#[actix_web::test]
async fn login_returns_a_token_pair() {
    let app = spawn_app().await;
    let reg = app.register("login_ok", "long enough").await;
    let res = app.login("login_ok", "long enough").await;
    assert_eq!(res.status, StatusCode::OK, "{:?}", res.body);
    assert_eq!(res.body["token_type"], json!("Bearer"));
    assert_eq!(res.body["expires_in"], json!(900));
    let access = res.body["access_token"].as_str().expect("access_token");
    assert_eq!(access.split('.').count(), 3, "a JWT: {access}");
    let refresh = res.body["refresh_token"].as_str().expect("refresh_token");
    assert!(refresh.len() >= 32 && refresh != access, "{refresh}");
    assert_eq!(res.body["user"]["id"], reg.body["id"]);
    assert_eq!(res.body["user"]["username"], json!("login_ok"));
    // The access token authenticates its user.
    let me = app.get("/api/v1/users/me", access).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.body["id"], reg.body["id"]);
    // Two logins give two different refresh tokens.
    let again = app.login("login_ok", "long enough").await;
    assert_ne!(again.body["refresh_token"], res.body["refresh_token"]);
}

#[actix_web::test]
async fn login_with_a_wrong_password_or_unknown_user_is_invalid_credentials() {
    let app = spawn_app().await;
    app.register("login_bad", "long enough").await;
    let wrong = app.login("login_bad", "not the password").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{:?}", wrong.body);
    assert_eq!(wrong.code(), "auth.invalid_credentials");
    let unknown = app.login("nobody_here", "long enough").await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED, "{:?}", unknown.body);
    assert_eq!(unknown.code(), "auth.invalid_credentials");
    // The two failures look alike, so usernames cannot be probed.
    assert_eq!(wrong.body, unknown.body);
    assert!(wrong.body.get("access_token").is_none());
}

#[actix_web::test]
async fn a_missing_or_malformed_token_is_unauthenticated() {
    let app = spawn_app().await;
    let res = app.request("GET", "/api/v1/users/me", None, None).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    assert_eq!(res.code(), "auth.unauthenticated");
    assert_eq!(res.headers.get("www-authenticate").and_then(|v| v.to_str().ok()), Some("Bearer"));
    for header in ["Bearer garbage", "Bearer ", "Bearer a.b.c", "Basic dXNlcjpwYXNz", "garbage"] {
        let res = app.raw("GET", "/api/v1/users/me", &[("authorization", header)], None).await;
        assert_eq!(res.status, StatusCode::UNAUTHORIZED, "{header:?}: {}", res.text);
        assert_eq!(res.json()["code"], json!("auth.unauthenticated"), "{header:?}");
    }
}

#[actix_web::test]
async fn a_token_signed_with_another_secret_is_rejected() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let now = chorus::unix_secs();
    // Control: the same claims signed with the node's secret are accepted, so the minting is right.
    let good = mint(NODE_SECRET, &alice, now, now + 300);
    let ok = app.get("/api/v1/users/me", &good).await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.body);
    assert_eq!(uuid_of(&ok.body["id"]), alice.id);
    let forged = mint("another-secret-that-is-also-long-enough-xx", &alice, now, now + 300);
    let res = app.get("/api/v1/users/me", &forged).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED, "{:?}", res.body);
    assert_eq!(res.code(), "auth.unauthenticated");
}

#[actix_web::test]
async fn a_token_with_alg_none_is_rejected() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let now = chorus::unix_secs();
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let claims = json!({"sub": alice.id, "name": alice.username, "iat": now, "exp": now + 300});
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    for token in [format!("{header}.{payload}."), format!("{header}.{payload}")] {
        let res = app.get("/api/v1/users/me", &token).await;
        assert_eq!(res.status, StatusCode::UNAUTHORIZED, "{token}: {:?}", res.body);
        assert_eq!(res.code(), "auth.unauthenticated");
    }
    // The real token's signature pasted onto an `alg: none` header does not help either.
    let signature = alice.token.rsplit('.').next().expect("signature");
    let res = app.get("/api/v1/users/me", &format!("{header}.{payload}.{signature}")).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
}

#[actix_web::test]
async fn an_expired_token_is_token_expired() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let now = chorus::unix_secs();
    let expired = mint(NODE_SECRET, &alice, now - 1000, now - 120);
    let res = app.get("/api/v1/users/me", &expired).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED, "{:?}", res.body);
    assert_eq!(res.code(), "auth.token_expired");
    assert_eq!(res.headers.get("www-authenticate").and_then(|v| v.to_str().ok()), Some("Bearer"));
}

#[actix_web::test]
async fn every_protected_route_requires_a_token() {
    let app = spawn_app().await;
    let id = Uuid::now_v7();
    let routes: Vec<(&str, String, Option<Value>)> = vec![
        ("POST", "/api/v1/auth/logout".into(), Some(json!({"refresh_token": "x"}))),
        ("GET", "/api/v1/users".into(), None),
        ("GET", "/api/v1/users/me".into(), None),
        ("GET", format!("/api/v1/users/{id}"), None),
        ("POST", "/api/v1/rooms".into(), Some(json!({"name": "x", "visibility": "public"}))),
        ("GET", "/api/v1/rooms".into(), None),
        ("GET", format!("/api/v1/rooms/{id}"), None),
        ("PATCH", format!("/api/v1/rooms/{id}"), Some(json!({"name": "y"}))),
        ("DELETE", format!("/api/v1/rooms/{id}"), None),
        ("POST", format!("/api/v1/rooms/{id}/owner"), Some(json!({"user_id": id}))),
        ("POST", format!("/api/v1/rooms/{id}/join"), None),
        ("POST", format!("/api/v1/rooms/{id}/leave"), None),
        ("GET", format!("/api/v1/rooms/{id}/members"), None),
        ("POST", format!("/api/v1/rooms/{id}/members"), Some(json!({"user_ids": [id]}))),
        ("DELETE", format!("/api/v1/rooms/{id}/members/{id}"), None),
        ("PATCH", format!("/api/v1/rooms/{id}/members/{id}"), Some(json!({"role": "admin"}))),
        ("POST", "/api/v1/direct".into(), Some(json!({"user_id": id}))),
        ("GET", format!("/api/v1/rooms/{id}/messages"), None),
        ("POST", format!("/api/v1/rooms/{id}/messages"), Some(json!({"content": "hi"}))),
        ("DELETE", format!("/api/v1/rooms/{id}/messages"), None),
        ("PATCH", format!("/api/v1/rooms/{id}/messages/{id}"), Some(json!({"content": "hi"}))),
        ("DELETE", format!("/api/v1/rooms/{id}/messages/{id}"), None),
        ("POST", format!("/api/v1/rooms/{id}/receipts"), Some(json!({"read_seq": 1}))),
        ("GET", "/api/v1/unreceived".into(), None),
    ];
    for (method, path, body) in routes {
        let res = app.request(method, &path, None, body).await;
        assert_eq!(res.status, StatusCode::UNAUTHORIZED, "{method} {path}: {:?}", res.body);
        assert_eq!(res.code(), "auth.unauthenticated", "{method} {path}");
    }
}

#[actix_web::test]
async fn refresh_rotates_and_a_reused_token_revokes_the_family() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let first = app.refresh(&alice.refresh_token).await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    assert_eq!(first.body["token_type"], json!("Bearer"));
    assert_eq!(uuid_of(&first.body["user"]["id"]), alice.id);
    let access2 = first.body["access_token"].as_str().expect("access").to_owned();
    let refresh2 = first.body["refresh_token"].as_str().expect("refresh").to_owned();
    assert_ne!(refresh2, alice.refresh_token);
    let me = app.get("/api/v1/users/me", &access2).await;
    assert_eq!(me.status, StatusCode::OK, "the new access token works");
    // The new refresh token works too (and is spent by that).
    let second = app.refresh(&refresh2).await;
    assert_eq!(second.status, StatusCode::OK, "{:?}", second.body);
    let refresh3 = second.body["refresh_token"].as_str().expect("refresh").to_owned();
    // Presenting the spent first token is a reuse: 401, and the whole family goes.
    let reused = app.refresh(&alice.refresh_token).await;
    assert_eq!(reused.status, StatusCode::UNAUTHORIZED, "{:?}", reused.body);
    assert_eq!(reused.code(), "auth.refresh_reused");
    let after = app.refresh(&refresh3).await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED, "the newest token of a revoked family: {:?}", after.body);
    assert!(after.body.get("access_token").is_none());
    // Another session (another family) of the same user is untouched.
    let other = app.login(&alice.username, &alice.password).await;
    let fresh = app.refresh(other.body["refresh_token"].as_str().expect("refresh")).await;
    assert_eq!(fresh.status, StatusCode::OK, "{:?}", fresh.body);
}

#[actix_web::test]
async fn concurrent_refreshes_with_one_token_succeed_once() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let replies = join_all((0..5).map(|_| app.refresh(&alice.refresh_token))).await;
    let ok = replies.iter().filter(|r| r.status == StatusCode::OK).count();
    assert_eq!(ok, 1, "{:?}", replies.iter().map(|r| (r.status, r.code().to_owned())).collect::<Vec<_>>());
    assert!(replies.iter().all(|r| r.status == StatusCode::OK || r.status == StatusCode::UNAUTHORIZED));
}

#[actix_web::test]
async fn refresh_with_an_unknown_token_is_unauthenticated() {
    let app = spawn_app().await;
    let res = app.refresh("not-a-token-this-server-issued").await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED, "{:?}", res.body);
    assert_eq!(res.code(), "auth.unauthenticated");
    let res = app.request("POST", "/api/v1/auth/refresh", None, Some(json!({}))).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert_eq!(res.fields(), vec!["refresh_token".to_owned()]);
}

#[actix_web::test]
async fn logout_revokes_the_refresh_family() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let other_session = app.login(&alice.username, &alice.password).await;
    let res = app.post("/api/v1/auth/logout", &alice.token, json!({"refresh_token": alice.refresh_token})).await;
    assert_eq!(res.status, StatusCode::NO_CONTENT, "{:?}", res.body);
    assert_eq!(res.body, Value::Null, "204 has no body");
    let refresh = app.refresh(&alice.refresh_token).await;
    assert_eq!(refresh.status, StatusCode::UNAUTHORIZED, "{:?}", refresh.body);
    // Only that family: the other session still refreshes.
    let other = app.refresh(other_session.body["refresh_token"].as_str().expect("refresh")).await;
    assert_eq!(other.status, StatusCode::OK, "{:?}", other.body);
    // Logging out twice is not an error.
    let again = app.post("/api/v1/auth/logout", &alice.token, json!({"refresh_token": alice.refresh_token})).await;
    assert_eq!(again.status, StatusCode::NO_CONTENT);
}

#[actix_web::test]
async fn logout_cannot_revoke_someone_elses_session() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let mallory = app.user("mallory").await;
    let res = app.post("/api/v1/auth/logout", &mallory.token, json!({"refresh_token": alice.refresh_token})).await;
    assert_eq!(res.status, StatusCode::NO_CONTENT);
    let refresh = app.refresh(&alice.refresh_token).await;
    assert_eq!(refresh.status, StatusCode::OK, "alice's session survives: {:?}", refresh.body);
}

#[actix_web::test]
async fn users_by_id_and_errors() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let me = app.get("/api/v1/users/me", &alice.token).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(uuid_of(&me.body["id"]), alice.id);
    assert_eq!(me.body["last_seen_at"], Value::Null);
    let res = app.get(&format!("/api/v1/users/{}", bob.id), &alice.token).await;
    assert_eq!(res.status, StatusCode::OK, "{:?}", res.body);
    assert_eq!(uuid_of(&res.body["id"]), bob.id);
    assert_eq!(res.body["username"], json!(bob.username));
    assert_eq!(res.body["online"], json!(false));
    assert!(res.body.get("last_seen_at").is_some(), "last_seen_at is present (null): {:?}", res.body);
    assert!(res.body.get("password_hash").is_none());
    let unknown = app.get(&format!("/api/v1/users/{}", Uuid::now_v7()), &alice.token).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.code(), "user.not_found");
    let bad = app.get("/api/v1/users/not-a-uuid", &alice.token).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{:?}", bad.body);
    assert_eq!(bad.code(), "validation");
    assert!(!bad.fields().is_empty());
}

#[actix_web::test]
async fn user_search_by_prefix_pages_through_everyone_once() {
    let app = spawn_app().await;
    let names = ["page_a1", "PAGE_a2", "Page_A3", "page_B4", "pAgE_b5", "page_c6", "PAGE_C7"];
    let mut me = None;
    for name in names {
        me = Some(app.user_named(name).await);
    }
    let me = me.expect("a user");
    // Near misses: no underscore after the prefix ('_' must not act as a wildcard), another prefix.
    app.user_named("pageX8").await;
    app.user_named("other_9").await;

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut path = "/api/v1/users?q=PAGE_&limit=3".to_owned();
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let res = app.get(&path, &me.token).await;
        assert_eq!(res.status, StatusCode::OK, "{:?}", res.body);
        let items = res.items();
        assert!(items.len() <= 3);
        seen.extend(items.iter().map(|u| u["username"].as_str().expect("username").to_owned()));
        pages += 1;
        assert!(pages <= 5, "paging does not end");
        match res.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3, "7 users in pages of 3");
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no duplicates: {seen:?}");
    let mut expected: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    expected.sort_by_key(|n| n.to_ascii_lowercase());
    assert_eq!(seen, expected, "every match once, by name");

    // Without the underscore the near miss matches too; an empty q lists everyone.
    let res = app.get("/api/v1/users?q=page&limit=50", &me.token).await;
    assert_eq!(res.items().len(), 8);
    let res = app.get("/api/v1/users?limit=200", &me.token).await;
    assert_eq!(res.items().len(), 9);
    assert_eq!(res.body["next_cursor"], Value::Null);
    let res = app.get("/api/v1/users?q=zzz", &me.token).await;
    assert_eq!(res.status, StatusCode::OK);
    assert!(res.items().is_empty());
}

#[actix_web::test]
async fn user_search_rejects_bad_limits_and_cursors() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    for limit in ["0", "500", "201", "-1"] {
        let res = app.get(&format!("/api/v1/users?limit={limit}"), &alice.token).await;
        assert_eq!(res.status, StatusCode::BAD_REQUEST, "limit={limit}: {:?}", res.body);
        assert_eq!(res.code(), "validation");
        assert_eq!(res.fields(), vec!["limit".to_owned()], "limit={limit}");
    }
    let res = app.get("/api/v1/users?cursor=***", &alice.token).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert_eq!(res.fields(), vec!["cursor".to_owned()]);
    let res = app.get("/api/v1/users?limit=200", &alice.token).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.items().len(), 1);
}

#[actix_web::test]
async fn password_guessing_is_braked_with_429_and_retry_after() {
    let app = spawn_app_with(|s| s.auth_rate_per_min = 3).await;
    let body = json!({"username": "nobody", "password": "wrong password"});
    for _ in 0..3 {
        let r = app.request("POST", "/api/v1/auth/login", None, Some(body.clone())).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    let limited = app.request("POST", "/api/v1/auth/login", None, Some(body)).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.code(), "rate_limited");
    let retry: u64 = limited.headers.get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(0);
    assert!((1..=20).contains(&retry), "Retry-After: {retry}");
}

/// Writes a key pair with openssl into a fresh directory; returns (private, public) PEM paths.
fn key_pair(args: &[&str]) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("chorus-keys-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("key dir");
    let (private, public) = (dir.join("private.pem"), dir.join("public.pem"));
    let ok = std::process::Command::new("openssl")
        .arg("genpkey")
        .args(args)
        .arg("-out")
        .arg(&private)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "openssl genpkey (install openssl: script/bootstrap)");
    let ok = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "openssl pkey -pubout");
    (private, public)
}

#[actix_web::test]
async fn rs256_and_eddsa_tokens_work_and_hs256_ones_are_refused_then() {
    for (alg, name, args) in [
        (chorus::config::JwtAlgorithm::EdDsa, "EdDSA", vec!["-algorithm", "ed25519"]),
        (chorus::config::JwtAlgorithm::Rs256, "RS256", vec!["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
    ] {
        let (private, public) = key_pair(&args);
        let app = spawn_app_with(|s| {
            s.jwt_alg = alg;
            s.jwt_private_key_file = Some(private.clone());
            s.jwt_public_key_file = Some(public.clone());
        })
        .await;
        let user = app.user("asym").await;
        let header = user.token.split('.').next().unwrap_or_default();
        let header: serde_json::Value = serde_json::from_slice(
            &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, header).unwrap_or_default(),
        )
        .unwrap_or_default();
        assert_eq!(header["alg"], name);
        let me = app.get("/api/v1/users/me", &user.token).await;
        assert_eq!(me.status, StatusCode::OK, "{name}: {:?}", me.body);
        // A token signed with a shared secret is no good on a cluster that signs asymmetrically.
        let now = chorus::unix_secs();
        let claims = chorus::Claims { sub: user.id, name: user.username.clone(), iat: now, exp: now + 60, gen: 0 };
        let hs = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(b"test-secret-that-is-long-enough-0123456789"),
        )
        .expect("token");
        let refused = app.get("/api/v1/users/me", &hs).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{name}");
    }
}
