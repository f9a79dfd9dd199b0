-- Accounts, rooms, memberships and messages.
-- Sized for tens of millions of messages: every hot read (history window, sync after a seq, unreceived
-- past a cursor) is an index range scan on messages (room_id, seq).

CREATE TABLE users (
    id            uuid PRIMARY KEY,
    username      text NOT NULL,
    -- Lower-cased copy with the C collation: uniqueness is case-insensitive and the btree serves
    -- prefix search (`LIKE 'ab%'`) and keyset pagination in one index.
    username_key  text COLLATE "C" NOT NULL,
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz,
    CONSTRAINT users_username_key_unique UNIQUE (username_key)
);

-- Refresh tokens rotate inside a family; presenting a spent token revokes the whole family.
CREATE TABLE refresh_families (
    id         uuid PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
CREATE INDEX refresh_families_user_idx ON refresh_families (user_id);

CREATE TABLE refresh_tokens (
    -- SHA-256 of the opaque token: a database leak does not leak usable tokens.
    token_hash bytea PRIMARY KEY,
    family_id  uuid NOT NULL REFERENCES refresh_families (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    spent_at   timestamptz
);
CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family_id);

CREATE TABLE rooms (
    id            uuid PRIMARY KEY,
    kind          text NOT NULL CHECK (kind IN ('group', 'direct')),
    name          text,
    visibility    text NOT NULL CHECK (visibility IN ('public', 'private')),
    password_hash text,
    -- "<smaller user id>:<larger user id>" for direct rooms: the unique index below makes
    -- "the one room between two users" safe under concurrent creation.
    direct_key    text,
    -- Highest seq handed out; the row lock taken to bump it serializes senders of one room.
    last_seq      bigint NOT NULL DEFAULT 0,
    -- Messages with seq <= cleared_seq were cleared from the history.
    cleared_seq   bigint NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    deleted_at    timestamptz,
    CHECK ((kind = 'direct') = (direct_key IS NOT NULL)),
    CHECK (kind = 'direct' OR name IS NOT NULL)
);
CREATE UNIQUE INDEX rooms_public_name_unique ON rooms (lower(name))
    WHERE visibility = 'public' AND deleted_at IS NULL;
CREATE UNIQUE INDEX rooms_direct_key_unique ON rooms (direct_key)
    WHERE deleted_at IS NULL;
CREATE INDEX rooms_public_idx ON rooms (id) WHERE visibility = 'public' AND deleted_at IS NULL;

CREATE TABLE room_members (
    room_id       uuid NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    user_id       uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role          text NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    joined_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- Receipt cursors: only ever move forward. Unread counts derive from them, not per-message rows.
    delivered_seq bigint NOT NULL DEFAULT 0,
    read_seq      bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX room_members_user_idx ON room_members (user_id, room_id);
CREATE UNIQUE INDEX room_members_one_owner ON room_members (room_id) WHERE role = 'owner';

CREATE TABLE messages (
    id            uuid PRIMARY KEY,
    room_id       uuid NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    seq           bigint NOT NULL,
    sender_id     uuid NOT NULL REFERENCES users (id),
    content       text NOT NULL,
    client_msg_id text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    edited_at     timestamptz,
    deleted_at    timestamptz,
    CONSTRAINT messages_room_seq_unique UNIQUE (room_id, seq)
);
-- Idempotent sends: a retry with the same (sender, client_msg_id) finds the stored message.
CREATE UNIQUE INDEX messages_idempotency_unique ON messages (sender_id, client_msg_id)
    WHERE client_msg_id IS NOT NULL;
