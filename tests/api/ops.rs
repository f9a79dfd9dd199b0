//! Operations: health, readiness, metrics, OpenAPI and docs, error hygiene, request ids, migrations,
//! and the `chorus` binary's start-up checks.

use std::collections::HashSet;
use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use diesel::sql_types::Text;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::AsyncPgConnection;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::*;

#[actix_web::test]
async fn healthz_answers_200() {
    let app = spawn_app().await;
    let res = app.raw("GET", "/healthz", &[], None).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.json()["status"], json!("ok"));
}

#[actix_web::test]
async fn readyz_answers_200_when_the_stores_are_up() {
    let app = spawn_app().await;
    // The node's pub/sub connection comes up just after it starts listening (on a busy machine,
    // some hundreds of ms later); until then readiness says redis: false, as it should.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let res = loop {
        let res = app.raw("GET", "/readyz", &[], None).await;
        if res.status == StatusCode::OK || std::time::Instant::now() > deadline {
            break res;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    let body = res.json();
    assert_eq!(body["ready"], json!(true));
    assert_eq!(body["postgres"], json!(true));
    assert_eq!(body["redis"], json!(true));
    assert_eq!(body["draining"], json!(false));
    assert!(body["node_id"].as_str().is_some_and(|n| !n.is_empty()), "{body}");
}

#[actix_web::test]
async fn metrics_are_served_in_prometheus_text_format() {
    let app = spawn_app().await;
    let res = app.raw("GET", "/metrics", &[], None).await;
    assert_eq!(res.status, StatusCode::OK, "GET /metrics is in the contract: {}", res.text);
    assert!(res.header("content-type").is_some_and(|c| c.starts_with("text/plain")), "{:?}", res.headers);
    assert!(res.text.contains("# TYPE "), "{}", res.text);
}

/// `/a/{x}/b` → `/a/{}/b`, so the contract's and the document's parameter names need not agree.
fn normalize(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push_str("{}");
            }
            '}' => in_param = false,
            _ if in_param => {}
            _ => out.push(c),
        }
    }
    out
}

#[actix_web::test]
async fn openapi_document_lists_every_rest_route() {
    let app = spawn_app().await;
    let res = app.raw("GET", "/api/openapi.json", &[], None).await;
    assert_eq!(res.status, StatusCode::OK);
    let doc: Value = serde_json::from_str(&res.text).expect("the OpenAPI document is valid JSON");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with('3')), "{}", doc["openapi"]);
    let paths = doc["paths"].as_object().expect("paths");
    let documented: HashSet<(String, String)> = paths
        .iter()
        .flat_map(|(path, ops)| {
            let path = normalize(path);
            ops.as_object().into_iter().flat_map(move |o| {
                o.keys().map({
                    let path = path.clone();
                    move |m| (m.to_ascii_uppercase(), path.clone())
                })
            })
        })
        .collect();
    let contract = [
        ("POST", "/auth/register"),
        ("POST", "/auth/login"),
        ("POST", "/auth/refresh"),
        ("POST", "/auth/logout"),
        ("GET", "/users"),
        ("GET", "/users/me"),
        ("GET", "/users/{id}"),
        ("POST", "/rooms"),
        ("GET", "/rooms"),
        ("GET", "/rooms/{id}"),
        ("PATCH", "/rooms/{id}"),
        ("DELETE", "/rooms/{id}"),
        ("POST", "/rooms/{id}/owner"),
        ("POST", "/rooms/{id}/join"),
        ("POST", "/rooms/{id}/leave"),
        ("GET", "/rooms/{id}/members"),
        ("POST", "/rooms/{id}/members"),
        ("DELETE", "/rooms/{id}/members/{user_id}"),
        ("PATCH", "/rooms/{id}/members/{user_id}"),
        ("POST", "/direct"),
        ("GET", "/rooms/{id}/messages"),
        ("POST", "/rooms/{id}/messages"),
        ("PATCH", "/rooms/{id}/messages/{message_id}"),
        ("DELETE", "/rooms/{id}/messages/{message_id}"),
        ("DELETE", "/rooms/{id}/messages"),
        ("POST", "/rooms/{id}/receipts"),
        ("GET", "/unreceived"),
    ];
    let missing: Vec<String> = contract
        .iter()
        .map(|(m, p)| (m.to_string(), normalize(&format!("/api/v1{p}"))))
        .filter(|route| !documented.contains(route))
        .map(|(m, p)| format!("{m} {p}"))
        .collect();
    assert!(missing.is_empty(), "routes missing from the OpenAPI document: {missing:?}");
}

#[actix_web::test]
async fn docs_page_is_html() {
    let app = spawn_app().await;
    let res = app.raw("GET", "/docs", &[], None).await;
    assert_eq!(res.status, StatusCode::OK);
    assert!(res.header("content-type").is_some_and(|c| c.starts_with("text/html")), "{:?}", res.headers);
    assert!(res.text.to_ascii_lowercase().contains("<html"), "a page, not an empty body: {:?}", res.text.get(..200));
}

#[actix_web::test]
async fn unknown_routes_answer_json_errors() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    for path in ["/api/v1/nope", "/nope", "/api/v2/rooms", "/api/v1/rooms/a/b/c/d"] {
        let res = app.get(path, &alice.token).await;
        assert_eq!(res.status, StatusCode::NOT_FOUND, "{path}: {:?}", res.body);
        assert_eq!(res.code(), "not_found", "{path}");
        assert!(res.body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // A known path with a method it does not serve: 405 naming the methods it does serve (RFC 9110),
    // before authentication, with the usual JSON error.
    for (method, path, allowed) in [
        ("PUT", "/api/v1/rooms", &["GET", "POST"][..]),
        ("POST", "/api/v1/users/me", &["GET"]),
        ("DELETE", "/healthz", &["GET"]),
        ("GET", "/api/v1/auth/login", &["POST"]),
    ] {
        let res = app.request(method, path, None, Some(json!({}))).await;
        assert_eq!(res.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}: {:?}", res.body);
        assert_eq!(res.code(), "method_not_allowed", "{method} {path}");
        let mut allow: Vec<String> = res
            .headers
            .get("allow")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .split(',')
            .map(|m| m.trim().to_owned())
            .collect();
        allow.sort();
        assert_eq!(allow, allowed, "{method} {path}");
    }
}

#[actix_web::test]
async fn malformed_bodies_are_validation_errors() {
    let app = spawn_app().await;
    let json_type = ("content-type", "application/json");
    for body in [&b"{not json"[..], b"", b"[1, 2]", b"{\"username\": \"abc\", \"password\": "] {
        let res = app.raw("POST", "/api/v1/auth/login", &[json_type], Some(body.to_vec())).await;
        assert_eq!(res.status, StatusCode::BAD_REQUEST, "{:?}: {}", String::from_utf8_lossy(body), res.text);
        let err = res.json();
        assert_eq!(err["code"], json!("validation"), "{}", res.text);
        assert!(err["details"].as_array().is_some_and(|d| !d.is_empty()), "{}", res.text);
    }
    // JSON without a JSON content type.
    let body = br#"{"username": "abc", "password": "long enough"}"#.to_vec();
    let res = app.raw("POST", "/api/v1/auth/register", &[("content-type", "text/plain")], Some(body)).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST, "{}", res.text);
    assert_eq!(res.json()["code"], json!("validation"));
    // A body over the frame limit (64 KiB) is refused before it is parsed.
    let huge = json!({"username": "abc", "password": "x".repeat(70 * 1024)}).to_string().into_bytes();
    let res = app.raw("POST", "/api/v1/auth/register", &[json_type], Some(huge)).await;
    assert_eq!(res.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", res.text);
    assert!(res.json()["code"].is_string());
}

#[actix_web::test]
async fn a_wrongly_typed_field_is_named_in_the_details() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let res =
        app.request("POST", "/api/v1/auth/login", None, Some(json!({"username": 42, "password": "long enough"}))).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST, "{:?}", res.body);
    assert_eq!(res.fields(), vec!["username".to_owned()], "{:?}", res.body);
    let res = app.get("/api/v1/users?limit=ten", &alice.token).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST, "{:?}", res.body);
    assert_eq!(res.fields(), vec!["limit".to_owned()], "{:?}", res.body);
}

#[actix_web::test]
async fn responses_carry_a_request_id_and_echo_the_callers() {
    let app = spawn_app().await;
    let a = app.raw("GET", "/healthz", &[], None).await;
    let b = app.raw("GET", "/healthz", &[], None).await;
    let id_a = a.header("x-request-id").expect("x-request-id on a success").to_owned();
    let id_b = b.header("x-request-id").expect("x-request-id").to_owned();
    assert!(!id_a.is_empty());
    assert_ne!(id_a, id_b, "one id per request");
    let err = app.raw("GET", "/api/v1/users/me", &[], None).await;
    assert_eq!(err.status, StatusCode::UNAUTHORIZED);
    assert!(err.header("x-request-id").is_some_and(|v| !v.is_empty()), "on an error too");

    let mine = app.raw("GET", "/healthz", &[("x-request-id", "trace-abc-123")], None).await;
    assert_eq!(mine.header("x-request-id"), Some("trace-abc-123"));
    let mine = app.raw("GET", "/api/v1/nope", &[("x-request-id", "trace-err-456")], None).await;
    assert_eq!(mine.status, StatusCode::NOT_FOUND);
    assert_eq!(mine.header("x-request-id"), Some("trace-err-456"));
    // An id that could forge log lines is replaced, not echoed.
    let long = "x".repeat(200);
    let res = app.raw("GET", "/healthz", &[("x-request-id", long.as_str())], None).await;
    let id = res.header("x-request-id").expect("a fresh id");
    assert!(id != long && !id.is_empty());
}

/// Requests that fail in every way a client can make them fail.
async fn failing_requests(app: &TestApp) -> Vec<(String, Reply)> {
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let public = app.room(&alice, "public").await;
    let private = app.room(&alice, "private").await;
    let sent = app.send(&alice, public, "hello").await;
    let none = Uuid::now_v7();
    let tries: Vec<(&str, String, Option<&str>, Option<Value>)> = vec![
        ("POST", "/api/v1/auth/register".into(), None, Some(json!({"username": "a", "password": "b"}))),
        (
            "POST",
            "/api/v1/auth/register".into(),
            None,
            Some(json!({"username": alice.username, "password": "long enough"})),
        ),
        ("POST", "/api/v1/auth/register".into(), None, Some(json!({"username": ["x"], "password": {}}))),
        ("POST", "/api/v1/auth/login".into(), None, Some(json!({"username": "x", "password": "y"}))),
        ("POST", "/api/v1/auth/login".into(), None, Some(json!({"username": "nul\u{0}name", "password": "y"}))),
        ("POST", "/api/v1/auth/refresh".into(), None, Some(json!({"refresh_token": "nope"}))),
        ("GET", "/api/v1/users/me".into(), Some("garbage"), None),
        ("GET", format!("/api/v1/users/{none}"), Some(&alice.token), None),
        ("GET", "/api/v1/users/zzz".into(), Some(&alice.token), None),
        ("GET", "/api/v1/users?limit=99999999999999999999999".into(), Some(&alice.token), None),
        ("GET", "/api/v1/users?q=%00".into(), Some(&alice.token), None),
        ("GET", "/api/v1/users?cursor=AA".into(), Some(&alice.token), None),
        ("GET", "/api/v1/users?cursor=%25%25".into(), Some(&alice.token), None),
        ("GET", "/api/v1/rooms?cursor=Zm9v".into(), Some(&alice.token), None),
        ("GET", format!("/api/v1/rooms/{public}/members?cursor=Zm9vfGJhcg"), Some(&alice.token), None),
        (
            "POST",
            "/api/v1/rooms".into(),
            Some(&alice.token),
            Some(json!({"name": "x", "visibility": "public", "extra": 1})),
        ),
        (
            "POST",
            "/api/v1/rooms".into(),
            Some(&bob.token),
            Some(json!({"name": "x", "visibility": "public", "member_ids": ["nope"]})),
        ),
        ("GET", format!("/api/v1/rooms/{private}"), Some(&bob.token), None),
        ("PATCH", format!("/api/v1/rooms/{public}"), Some(&bob.token), Some(json!({"name": "mine"}))),
        ("POST", format!("/api/v1/rooms/{public}/messages"), Some(&bob.token), Some(json!({"content": "hi"}))),
        (
            "POST",
            format!("/api/v1/rooms/{public}/messages"),
            Some(&alice.token),
            Some(json!({"content": "x".repeat(5000)})),
        ),
        (
            "POST",
            format!("/api/v1/rooms/{public}/messages"),
            Some(&alice.token),
            Some(json!({"content": "nul \u{0} byte"})),
        ),
        (
            "PATCH",
            format!("/api/v1/rooms/{public}/messages/{}", sent.id()),
            Some(&alice.token),
            Some(json!({"content": "\u{0}"})),
        ),
        (
            "GET",
            format!("/api/v1/rooms/{public}/messages?before_seq=9223372036854775807&after_seq=1"),
            Some(&alice.token),
            None,
        ),
        ("GET", format!("/api/v1/rooms/{public}/messages?before_seq=99999999999999999999"), Some(&alice.token), None),
        ("POST", format!("/api/v1/rooms/{public}/receipts"), Some(&alice.token), Some(json!({"read_seq": "many"}))),
        (
            "PATCH",
            format!("/api/v1/rooms/{public}/members/{}", bob.id),
            Some(&alice.token),
            Some(json!({"role": "god"})),
        ),
        ("POST", "/api/v1/direct".into(), Some(&alice.token), Some(json!({"user_id": none}))),
    ];
    let mut out = Vec::new();
    for (method, path, token, body) in tries {
        let what = match &body {
            Some(b) => format!("{method} {path} {}", b.to_string().chars().take(80).collect::<String>()),
            None => format!("{method} {path}"),
        };
        let res = app.request(method, &path, token, body).await;
        out.push((what, res));
    }
    out
}

#[actix_web::test]
async fn error_bodies_never_leak_internals() {
    let app = spawn_app().await;
    for (what, res) in failing_requests(&app).await {
        assert!(!res.status.is_success(), "{what} should fail");
        assert!(res.body["code"].is_string() && res.body["message"].is_string(), "{what}: {:?}", res.body);
        let text = res.body.to_string().to_ascii_lowercase();
        for leak in ["sql", "diesel", "panicked", "constraint", "stack backtrace"] {
            assert!(!text.contains(leak), "{what} leaks {leak:?}: {}", res.body);
        }
    }
}

#[actix_web::test]
async fn client_mistakes_never_answer_500() {
    let app = spawn_app().await;
    let server_errors: Vec<String> = failing_requests(&app)
        .await
        .into_iter()
        .filter(|(_, res)| res.status.is_server_error())
        .map(|(what, res)| format!("{what} -> {} {}", res.status, res.body))
        .collect();
    assert!(server_errors.is_empty(), "bad input must be a 4xx, not a fault: {server_errors:#?}");
}

#[derive(diesel::QueryableByName)]
struct Present {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    present: bool,
}

fn table_exists(conn: &mut AsyncConnectionWrapper<AsyncPgConnection>, table: &str) -> bool {
    use diesel::RunQueryDsl;
    let row: Present = diesel::sql_query("SELECT to_regclass($1) IS NOT NULL AS present")
        .bind::<Text, _>(format!("public.{table}"))
        .get_result(conn)
        .expect("query the catalog");
    row.present
}

const TABLES: [&str; 8] = [
    "users",
    "refresh_families",
    "refresh_tokens",
    "rooms",
    "room_members",
    "messages",
    "room_bans",
    "token_revocations",
];

#[actix_web::test]
async fn migrations_revert_and_reapply_cleanly() {
    let url = fresh_database().await;
    let blocking_url = url.clone();
    tokio::task::spawn_blocking(move || {
        use diesel::{Connection, QueryDsl, RunQueryDsl};
        use diesel_migrations::MigrationHarness;
        let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::establish(&blocking_url).expect("connect");
        for table in TABLES {
            assert!(table_exists(&mut conn, table), "{table} exists after migrating");
        }
        let reverted = conn.revert_all_migrations(chorus::MIGRATIONS).expect("revert every migration").len();
        assert!(reverted > 0);
        for table in TABLES {
            assert!(!table_exists(&mut conn, table), "{table} is gone after reverting");
        }
        assert!(conn.has_pending_migration(chorus::MIGRATIONS).expect("pending?"));
        let applied = conn.run_pending_migrations(chorus::MIGRATIONS).expect("re-run every migration").len();
        assert_eq!(applied, reverted);
        for table in TABLES {
            assert!(table_exists(&mut conn, table), "{table} is back after re-running");
        }
        assert!(!conn.has_pending_migration(chorus::MIGRATIONS).expect("pending?"));
        // schema.rs matches the re-created tables: selecting every column it names works.
        use chorus::schema::*;
        users::table.select(users::all_columns).limit(0).execute(&mut conn).expect("users columns");
        refresh_families::table
            .select(refresh_families::all_columns)
            .limit(0)
            .execute(&mut conn)
            .expect("refresh_families");
        refresh_tokens::table.select(refresh_tokens::all_columns).limit(0).execute(&mut conn).expect("refresh_tokens");
        rooms::table.select(rooms::all_columns).limit(0).execute(&mut conn).expect("rooms columns");
        room_members::table.select(room_members::all_columns).limit(0).execute(&mut conn).expect("room_members");
        messages::table.select(messages::all_columns).limit(0).execute(&mut conn).expect("messages columns");
        room_bans::table.select(room_bans::all_columns).limit(0).execute(&mut conn).expect("room_bans columns");
        token_revocations::table
            .select(token_revocations::all_columns)
            .limit(0)
            .execute(&mut conn)
            .expect("token_revocations columns");
    })
    .await
    .expect("the migration round trip");
    // And a node works on the round-tripped database.
    let app = spawn_app_on(&url, |_| {}).await;
    let alice = app.user("alice").await;
    let room = app.room(&alice, "public").await;
    assert_eq!(app.send(&alice, room, "after the round trip").await.body["seq"], json!(1));
}

/// Runs the `chorus` binary in an empty directory (no `.env`) with exactly `env`; kills it after
/// `limit`. Returns its exit status (None if it had to be killed), stdout, stderr and run time.
fn run_chorus(args: &[&str], env: &[(&str, &str)], limit: Duration) -> (Option<ExitStatus>, String, String, Duration) {
    let dir = std::env::temp_dir().join(format!("chorus-bin-test-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chorus"));
    cmd.args(args).current_dir(&dir).env_clear().stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let started = Instant::now();
    let mut child = cmd.spawn().expect("start chorus");
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll chorus") {
            break Some(status);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let elapsed = started.elapsed();
    let mut stdout = String::new();
    let mut stderr = String::new();
    child.stdout.take().expect("stdout").read_to_string(&mut stdout).expect("read stdout");
    child.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("read stderr");
    let _ = std::fs::remove_dir_all(&dir);
    (status, stdout, stderr, elapsed)
}

async fn run_chorus_async(
    args: &'static [&'static str],
    env: Vec<(&'static str, &'static str)>,
    limit: Duration,
) -> (Option<ExitStatus>, String, String, Duration) {
    tokio::task::spawn_blocking(move || run_chorus(args, &env, limit)).await.expect("run chorus")
}

const GOOD_SECRET: &str = "a-production-secret-of-more-than-32-bytes!";

#[actix_web::test]
async fn chorus_refuses_to_start_in_production_without_a_jwt_secret() {
    let env = vec![("CHORUS_ENV", "production"), ("CHORUS_BIND", "127.0.0.1:0")];
    let (status, _, stderr, _) = run_chorus_async(&[], env, Duration::from_secs(15)).await;
    let status = status.expect("exits on its own");
    assert!(!status.success(), "{status:?}");
    assert!(stderr.contains("JWT_SECRET"), "stderr names the setting: {stderr}");
}

#[actix_web::test]
async fn chorus_refuses_a_short_jwt_secret() {
    let env = vec![("CHORUS_ENV", "production"), ("JWT_SECRET", "too-short"), ("CHORUS_BIND", "127.0.0.1:0")];
    let (status, _, stderr, _) = run_chorus_async(&[], env, Duration::from_secs(15)).await;
    let status = status.expect("exits on its own");
    assert!(!status.success(), "{status:?}");
    assert!(stderr.contains("JWT_SECRET"), "{stderr}");
}

#[actix_web::test]
async fn chorus_exits_with_a_clear_sentence_when_the_database_is_unreachable() {
    let env = vec![
        ("CHORUS_ENV", "production"),
        ("JWT_SECRET", GOOD_SECRET),
        ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/x"),
        ("CHORUS_BIND", "127.0.0.1:0"),
    ];
    let (status, _, stderr, elapsed) = run_chorus_async(&[], env, Duration::from_secs(15)).await;
    let status = status.unwrap_or_else(|| panic!("still running after {elapsed:?}; stderr: {stderr}"));
    assert!(!status.success(), "{status:?}");
    assert!(elapsed < Duration::from_secs(15));
    assert!(stderr.contains("DATABASE_URL"), "a sentence naming DATABASE_URL: {stderr}");
}

#[actix_web::test]
async fn chorus_help_lists_every_setting() {
    let (status, stdout, stderr, _) = run_chorus_async(&["--help"], vec![], Duration::from_secs(15)).await;
    assert!(status.expect("exits").success(), "{stderr}");
    for setting in ["DATABASE_URL", "REDIS_URL", "JWT_SECRET", "CHORUS_BIND", "CHORUS_NODE_ID"] {
        assert!(stdout.contains(setting), "--help lists {setting}: {stdout}");
    }
}
