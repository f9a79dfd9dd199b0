-- Moderation and session revocation.

-- A banned user cannot join the room or be added to it until the ban is lifted.
CREATE TABLE room_bans (
    room_id    uuid NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    banned_by  uuid REFERENCES users (id) ON DELETE SET NULL,
    reason     text,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (room_id, user_id)
);

-- Access tokens carry the user's token generation; "log out everywhere" (and refresh-token reuse)
-- bumps it, and nodes refuse tokens of an older generation. Nodes poll rows revoked within the
-- access-token lifetime (older tokens have expired anyway), hence the index on revoked_at.
CREATE TABLE token_revocations (
    user_id    uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    generation integer NOT NULL,
    revoked_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX token_revocations_revoked_at_idx ON token_revocations (revoked_at);
