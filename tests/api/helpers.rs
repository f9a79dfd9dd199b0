#![allow(dead_code)] // shared by every test module, and by the WebSocket tests to come
//! Test harness: real nodes on port 0 against a real PostgreSQL (a fresh database per test, cloned
//! from a migrated template) and a real Redis (a fresh key prefix per test).

use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::http::StatusCode;
use chorus::config::Settings;
use chorus::startup::Application;
use diesel::sql_types::Text;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::{json, Value};
use tokio::sync::OnceCell;
use uuid::Uuid;

/// Admin URL of the test PostgreSQL server (tests create databases there).
pub fn admin_database_url() -> String {
    std::env::var("CHORUS_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn redis_url() -> String {
    std::env::var("CHORUS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
}

/// `admin_database_url` with its database name replaced.
pub fn database_url(name: &str) -> String {
    let admin = admin_database_url();
    let (base, _) = admin.rsplit_once('/').expect("database URL has a path");
    format!("{base}/{name}")
}

#[derive(diesel::QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    datname: String,
}

static TEMPLATE: OnceCell<String> = OnceCell::const_new();

/// A database with every migration applied, made once per test process; each test clones it.
async fn template() -> &'static str {
    TEMPLATE
        .get_or_init(|| async {
            let mut admin = AsyncPgConnection::establish(&admin_database_url()).await.expect("connect to test PostgreSQL");
            // Leftovers from earlier runs of this suite (a crashed run cannot clean up after itself).
            let stale: Vec<Name> = diesel::sql_query(
                "SELECT datname FROM pg_database WHERE datname LIKE 'chorus\\_t\\_%' OR datname LIKE 'chorus\\_tpl\\_%'",
            )
            .load(&mut admin)
            .await
            .expect("list databases");
            // Names carry their creation time (unix seconds); only databases older than an hour are
            // dropped, so suites running side by side on one server leave each other alone.
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let stale = stale.into_iter().filter(|db| {
                let created = db.datname.split('_').nth(2).and_then(|t| t.parse::<u64>().ok()).unwrap_or(0);
                now.saturating_sub(created) > 3600
            });
            for db in stale {
                let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", db.datname))
                    .execute(&mut admin)
                    .await;
            }
            let name = format!("chorus_tpl_{}_{}", unix_secs(), Uuid::new_v4().simple());
            diesel::sql_query(format!("CREATE DATABASE \"{name}\"")).execute(&mut admin).await.expect("create template");
            chorus::run_migrations(&database_url(&name)).await.expect("migrate template");
            name
        })
        .await
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A fresh, migrated database for one test.
pub async fn fresh_database() -> String {
    let template = template().await;
    let name = format!("chorus_t_{}_{}", unix_secs(), Uuid::new_v4().simple());
    let mut admin = AsyncPgConnection::establish(&admin_database_url()).await.expect("connect to test PostgreSQL");
    // Cloning fails while another session is connected to the template; the migration connection may
    // still be closing, so retry briefly.
    for attempt in 0.. {
        match diesel::sql_query(format!("CREATE DATABASE \"{name}\" TEMPLATE \"{template}\"")).execute(&mut admin).await
        {
            Ok(_) => break,
            Err(e) if attempt < 50 => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("clone template: {e}"),
        }
    }
    database_url(&name)
}

pub fn test_settings(database_url: &str) -> Settings {
    let prefix = format!("chorus-test:{}:", Uuid::new_v4().simple());
    let mut settings = Settings::for_tests(database_url, &redis_url(), &prefix);
    settings.workers = Some(1);
    settings.validate().expect("test settings are valid");
    settings
}

/// One node, in this process, serving on a free port.
pub struct TestApp {
    pub address: String,
    pub database_url: String,
    pub redis_prefix: String,
    pub client: awc::Client,
    handle: ServerHandle,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // Best effort: the server stops with the test's runtime anyway.
        let handle = self.handle.clone();
        drop(handle.stop(false));
    }
}

/// A logged-in user.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub id: Uuid,
    pub username: String,
    pub password: String,
    pub token: String,
    pub refresh_token: String,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let database_url = fresh_database().await;
    spawn_app_on(&database_url, tweak).await
}

/// Node logs for a failing test: `TEST_LOG=1` (levels from `RUST_LOG`, default `info`) prints every
/// in-process node's log lines; without it the tests stay quiet.
fn init_test_log() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            chorus::init_logging(chorus::config::LogFormat::Text);
        }
    });
}

/// One node on an existing (already created) database.
pub async fn spawn_app_on(database_url: &str, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    init_test_log();
    let database_url = database_url.to_owned();
    let mut settings = test_settings(&database_url);
    tweak(&mut settings);
    let redis_prefix = settings.redis_prefix.clone();
    let app = Application::build(settings).await.expect("node starts");
    let address = format!("http://127.0.0.1:{}", app.port());
    let handle = app.handle();
    actix_web::rt::spawn(app.run_until_stopped());
    // Pooled connections are dropped after 2 s idle, before the node's own 5 s keep-alive closes
    // them: reusing one the node has just closed fails the request (`Connect(Disconnected)`), which
    // made a test that waits 40 s between two requests fail about one run in fourteen.
    let connector = awc::Connector::new().conn_keep_alive(Duration::from_secs(2));
    let client = awc::Client::builder().connector(connector).timeout(Duration::from_secs(30)).finish();
    TestApp { address, database_url, redis_prefix, client, handle }
}

/// A response reduced to what tests look at.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    pub headers: actix_web::http::header::HeaderMap,
}

impl Reply {
    /// The error code of an error body.
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("<no code>")
    }

    /// The `field` of every entry of a validation error's `details`.
    pub fn fields(&self) -> Vec<String> {
        self.body["details"]
            .as_array()
            .map(|d| d.iter().filter_map(|e| e["field"].as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    }

    /// The `id` of the body, as a UUID.
    pub fn id(&self) -> Uuid {
        uuid_of(&self.body["id"])
    }

    /// The body's `items` array (lists and history).
    pub fn items(&self) -> Vec<Value> {
        self.body["items"].as_array().cloned().unwrap_or_else(|| panic!("no items in {:?}", self.body))
    }
}

/// A JSON string holding a UUID.
pub fn uuid_of(v: &Value) -> Uuid {
    v.as_str().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("not a UUID: {v:?}"))
}

/// A response whose body is kept as text (non-JSON routes, raw requests).
#[derive(Debug)]
pub struct RawReply {
    pub status: StatusCode,
    pub headers: actix_web::http::header::HeaderMap,
    pub text: String,
}

impl RawReply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn request(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> Reply {
        let method = actix_web::http::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.client.request(method, self.url(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let mut res = match body {
            Some(body) => req.send_json(&body).await,
            None => req.send().await,
        }
        .expect("request reaches the node");
        let bytes = res.body().limit(16 * 1024 * 1024).await.expect("read body");
        let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
        Reply { status: res.status(), body, headers: res.headers().clone() }
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.request("GET", path, Some(token), None).await
    }
    pub async fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        self.request("POST", path, Some(token), Some(body)).await
    }
    pub async fn patch(&self, path: &str, token: &str, body: Value) -> Reply {
        self.request("PATCH", path, Some(token), Some(body)).await
    }
    pub async fn delete(&self, path: &str, token: &str) -> Reply {
        self.request("DELETE", path, Some(token), None).await
    }

    /// A request with exactly these headers and these body bytes (no JSON encoding, no default
    /// content type), answered as text.
    pub async fn raw(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<Vec<u8>>) -> RawReply {
        let method = actix_web::http::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.client.request(method, self.url(path));
        for (name, value) in headers {
            req = req.insert_header((*name, *value));
        }
        let mut res = match body {
            Some(body) => req.send_body(body).await,
            None => req.send().await,
        }
        .expect("request reaches the node");
        let bytes = res.body().limit(16 * 1024 * 1024).await.expect("read body");
        RawReply {
            status: res.status(),
            headers: res.headers().clone(),
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    pub async fn register(&self, username: &str, password: &str) -> Reply {
        self.request("POST", "/api/v1/auth/register", None, Some(json!({"username": username, "password": password})))
            .await
    }

    pub async fn login(&self, username: &str, password: &str) -> Reply {
        self.request("POST", "/api/v1/auth/login", None, Some(json!({"username": username, "password": password})))
            .await
    }

    pub async fn refresh(&self, refresh_token: &str) -> Reply {
        self.request("POST", "/api/v1/auth/refresh", None, Some(json!({"refresh_token": refresh_token}))).await
    }

    /// `who` joins a public room (no password).
    pub async fn join(&self, who: &TestUser, room: Uuid) -> Reply {
        self.request("POST", &format!("/api/v1/rooms/{room}/join"), Some(&who.token), None).await
    }

    /// Registers and logs in a user with a unique name starting with `name`.
    pub async fn user(&self, name: &str) -> TestUser {
        let username = format!("{name}_{}", &Uuid::new_v4().simple().to_string()[..8]);
        self.user_named(&username).await
    }

    /// Registers and logs in a user with exactly this username.
    pub async fn user_named(&self, username: &str) -> TestUser {
        let username = username.to_owned();
        let password = "correct horse battery".to_owned();
        let reg = self
            .request("POST", "/api/v1/auth/register", None, Some(json!({"username": username, "password": password})))
            .await;
        assert_eq!(reg.status, StatusCode::CREATED, "register: {:?}", reg.body);
        let login = self
            .request("POST", "/api/v1/auth/login", None, Some(json!({"username": username, "password": password})))
            .await;
        assert_eq!(login.status, StatusCode::OK, "login: {:?}", login.body);
        TestUser {
            id: login.body["user"]["id"].as_str().and_then(|s| s.parse().ok()).expect("user id"),
            username,
            password,
            token: login.body["access_token"].as_str().expect("access token").to_owned(),
            refresh_token: login.body["refresh_token"].as_str().expect("refresh token").to_owned(),
        }
    }

    /// Creates a room owned by `owner`; returns its id.
    pub async fn room(&self, owner: &TestUser, visibility: &str) -> Uuid {
        let name = format!("room-{}", Uuid::new_v4().simple());
        let res = self.post("/api/v1/rooms", &owner.token, json!({"name": name, "visibility": visibility})).await;
        assert_eq!(res.status, StatusCode::CREATED, "create room: {:?}", res.body);
        res.body["id"].as_str().and_then(|s| s.parse().ok()).expect("room id")
    }

    pub async fn add(&self, by: &TestUser, room: Uuid, users: &[&TestUser]) {
        let ids: Vec<Uuid> = users.iter().map(|u| u.id).collect();
        let res = self.post(&format!("/api/v1/rooms/{room}/members"), &by.token, json!({"user_ids": ids})).await;
        assert_eq!(res.status, StatusCode::OK, "add members: {:?}", res.body);
    }

    pub async fn send(&self, by: &TestUser, room: Uuid, content: &str) -> Reply {
        self.post(&format!("/api/v1/rooms/{room}/messages"), &by.token, json!({"content": content})).await
    }
}
