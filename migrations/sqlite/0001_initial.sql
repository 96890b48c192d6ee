-- identity-sidecar schema, SQLite flavour. Keep in step with migrations/postgres/0001_initial.sql:
-- same tables, columns, constraints and index names; only the column types differ.
--
-- Types: STRICT tables, so SQLite checks column types like PostgreSQL does.
--   booleans    INTEGER 0/1
--   dates       TEXT 'YYYY-MM-DD'                    (sorts like a date)
--   timestamps  TEXT 'YYYY-MM-DDTHH:MM:SS.ffffffZ'   (fixed width UTC, sorts like time; see store/codec.rs)
--   UUIDs       TEXT lower-case hyphenated
--   JSON        TEXT
-- Foreign keys are enforced (the store sets PRAGMA foreign_keys = ON on every connection).

CREATE TABLE organizations (
    id              INTEGER PRIMARY KEY,
    key             TEXT    NOT NULL UNIQUE
                    CHECK (length(key) BETWEEN 1 AND 64 AND key NOT GLOB '*[^a-z0-9_-]*'),
    name            TEXT    NOT NULL,
    description     TEXT    NOT NULL DEFAULT '',
    keycloak_id     TEXT    UNIQUE,
    keycloak_alias  TEXT    UNIQUE,
    created_at      TEXT    NOT NULL,
    updated_at      TEXT    NOT NULL
) STRICT;

CREATE TABLE contracts (
    id               INTEGER PRIMARY KEY,
    key              TEXT    NOT NULL UNIQUE
                     CHECK (length(key) BETWEEN 1 AND 64 AND key NOT GLOB '*[^a-z0-9_-]*'),
    -- RESTRICT: an organization that still has contracts cannot be deleted (StoreError::InUse).
    organization_id  INTEGER NOT NULL REFERENCES organizations (id) ON DELETE RESTRICT,
    name             TEXT    NOT NULL,
    membership_type  TEXT    NOT NULL CHECK (membership_type IN ('auto', 'managed', 'code')),
    active           INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1)),
    starts_on        TEXT,
    ends_on          TEXT,
    max_learners     INTEGER CHECK (max_learners >= 0),
    price            TEXT    CHECK (price GLOB '[0-9]*' AND price NOT GLOB '*[^0-9.]*'),
    -- Number of attachments; kept by the store in the same transaction as every attach/detach.
    seats_used       INTEGER NOT NULL DEFAULT 0 CHECK (seats_used >= 0),
    created_at       TEXT    NOT NULL,
    updated_at       TEXT    NOT NULL,
    CHECK (starts_on IS NULL OR ends_on IS NULL OR starts_on <= ends_on)
) STRICT;
CREATE INDEX contracts_organization ON contracts (organization_id, membership_type);

CREATE TABLE users (
    sub            TEXT PRIMARY KEY,
    email          TEXT,
    username       TEXT,
    name           TEXT,
    last_login_at  TEXT,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL
) STRICT;
CREATE INDEX users_email ON users (lower(email));

CREATE TABLE memberships (
    sub              TEXT    NOT NULL REFERENCES users (sub),
    -- CASCADE: deleting an organization ends its memberships (the admin API audits the delete).
    organization_id  INTEGER NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    keep_until_seen  INTEGER NOT NULL CHECK (keep_until_seen IN (0, 1)),
    manager          INTEGER NOT NULL DEFAULT 0 CHECK (manager IN (0, 1)),
    source           TEXT    NOT NULL CHECK (source IN ('claim', 'code', 'admin')),
    created_at       TEXT    NOT NULL,
    updated_at       TEXT    NOT NULL,
    PRIMARY KEY (sub, organization_id)
) STRICT;
CREATE INDEX memberships_organization ON memberships (organization_id);

CREATE TABLE attachments (
    sub          TEXT    NOT NULL REFERENCES users (sub),
    -- RESTRICT: a contract with attached learners cannot be deleted (StoreError::InUse).
    contract_id  INTEGER NOT NULL REFERENCES contracts (id) ON DELETE RESTRICT,
    source       TEXT    NOT NULL CHECK (source IN ('sso', 'code', 'admin')),
    created_at   TEXT    NOT NULL,
    PRIMARY KEY (sub, contract_id)
) STRICT;
CREATE INDEX attachments_contract ON attachments (contract_id);

-- No foreign keys: the audit trail outlives the rows it talks about (keys, not ids).
CREATE TABLE audit_events (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    at            TEXT NOT NULL,
    actor         TEXT NOT NULL,
    action        TEXT NOT NULL,
    sub           TEXT,
    organization  TEXT,
    contract      TEXT,
    reason        TEXT,
    detail        TEXT
) STRICT;
CREATE INDEX audit_events_sub ON audit_events (sub, id);
CREATE INDEX audit_events_organization ON audit_events (organization, id);
CREATE INDEX audit_events_contract ON audit_events (contract, id);

CREATE TABLE jwks_cache (
    issuer      TEXT PRIMARY KEY,
    jwks        TEXT NOT NULL,
    fetched_at  TEXT NOT NULL
) STRICT;

CREATE TABLE enrollment_codes (
    id            INTEGER PRIMARY KEY,
    code          TEXT    NOT NULL UNIQUE,
    contract_id   INTEGER NOT NULL REFERENCES contracts (id) ON DELETE CASCADE,
    redemption    TEXT    NOT NULL CHECK (redemption IN ('one-time', 'unlimited')),
    activates_at  TEXT,
    expires_at    TEXT,
    revoked_at    TEXT,
    -- A one-time code belongs to the first user who redeems it (claimed with a guarded UPDATE).
    redeemed_by   TEXT,
    created_at    TEXT    NOT NULL
) STRICT;
CREATE INDEX enrollment_codes_contract ON enrollment_codes (contract_id);

CREATE TABLE redemptions (
    code_id  INTEGER NOT NULL REFERENCES enrollment_codes (id) ON DELETE CASCADE,
    sub      TEXT    NOT NULL REFERENCES users (sub),
    at       TEXT    NOT NULL,
    PRIMARY KEY (code_id, sub)
) STRICT;
CREATE INDEX redemptions_sub ON redemptions (sub);

CREATE TABLE jobs (
    id           INTEGER PRIMARY KEY,
    kind         TEXT    NOT NULL,
    payload      TEXT    NOT NULL,
    status       TEXT    NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    -- queued: when to run next; running: when the worker's lease expires.
    next_run_at  TEXT    NOT NULL,
    last_error   TEXT,
    progress     TEXT,
    created_at   TEXT    NOT NULL,
    updated_at   TEXT    NOT NULL
) STRICT;
CREATE INDEX jobs_due ON jobs (kind, next_run_at) WHERE status IN ('queued', 'running');
