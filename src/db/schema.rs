//! Diesel table definitions; kept by hand in step with `migrations/` (a test checks the round trip).

diesel::table! {
    users (id) {
        id -> Uuid,
        username -> Text,
        username_key -> Text,
        password_hash -> Text,
        created_at -> Timestamptz,
        last_seen_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    refresh_families (id) {
        id -> Uuid,
        user_id -> Uuid,
        created_at -> Timestamptz,
        revoked_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    refresh_tokens (token_hash) {
        token_hash -> Bytea,
        family_id -> Uuid,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
        spent_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    rooms (id) {
        id -> Uuid,
        kind -> Text,
        name -> Nullable<Text>,
        visibility -> Text,
        password_hash -> Nullable<Text>,
        direct_key -> Nullable<Text>,
        last_seq -> Int8,
        cleared_seq -> Int8,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        deleted_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    room_members (room_id, user_id) {
        room_id -> Uuid,
        user_id -> Uuid,
        role -> Text,
        joined_at -> Timestamptz,
        delivered_seq -> Int8,
        read_seq -> Int8,
    }
}

diesel::table! {
    messages (id) {
        id -> Uuid,
        room_id -> Uuid,
        seq -> Int8,
        sender_id -> Uuid,
        content -> Text,
        client_msg_id -> Nullable<Text>,
        created_at -> Timestamptz,
        edited_at -> Nullable<Timestamptz>,
        deleted_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    room_bans (room_id, user_id) {
        room_id -> Uuid,
        user_id -> Uuid,
        banned_by -> Nullable<Uuid>,
        reason -> Nullable<Text>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    token_revocations (user_id) {
        user_id -> Uuid,
        generation -> Int4,
        revoked_at -> Timestamptz,
    }
}

diesel::joinable!(refresh_families -> users (user_id));
diesel::joinable!(refresh_tokens -> refresh_families (family_id));
diesel::joinable!(room_members -> rooms (room_id));
diesel::joinable!(room_members -> users (user_id));
diesel::joinable!(messages -> rooms (room_id));

diesel::allow_tables_to_appear_in_same_query!(
    users,
    refresh_families,
    refresh_tokens,
    rooms,
    room_members,
    messages,
    room_bans,
    token_revocations
);
