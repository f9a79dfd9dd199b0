DROP TABLE token_revocations;
DROP TABLE room_bans;
