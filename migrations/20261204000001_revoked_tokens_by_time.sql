-- Each API replica keeps the revoked tokens in memory and reads, every second, only the rows
-- revoked since its last read (api/src/auth/revocations.rs): that read goes by `revoked_at`.
create index revoked_tokens_revoked_at on revoked_tokens (revoked_at);
