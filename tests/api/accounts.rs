use actix_web::http::StatusCode;
use serde_json::json;

use crate::helpers::*;

#[actix_web::test]
async fn register_login_and_me() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let me = app.get("/api/v1/users/me", &alice.token).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.body["username"], json!(alice.username));
    assert_eq!(me.body["online"], json!(false));
}
