-- identity-sidecar schema, PostgreSQL flavour. Keep in step with migrations/sqlite/0001_initial.sql:
-- same tables, columns, constraints and index names; only the column types differ.

CREATE TABLE organizations (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key             text        NOT NULL UNIQUE CHECK (key ~ '^[a-z0-9_-]{1,64}$'),
    name            text        NOT NULL,
    description     text        NOT NULL DEFAULT '',
    keycloak_id     uuid        UNIQUE,
    keycloak_alias  text        UNIQUE,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
);

CREATE TABLE contracts (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key              text        NOT NULL UNIQUE CHECK (key ~ '^[a-z0-9_-]{1,64}$'),
    -- RESTRICT: an organization that still has contracts cannot be deleted (StoreError::InUse).
    organization_id  bigint      NOT NULL REFERENCES organizations (id) ON DELETE RESTRICT,
    name             text        NOT NULL,
    membership_type  text        NOT NULL CHECK (membership_type IN ('auto', 'managed', 'code')),
    active           boolean     NOT NULL DEFAULT true,
    starts_on        date,
    ends_on          date,
    max_learners     bigint      CHECK (max_learners >= 0),
    price            text        CHECK (price ~ '^[0-9]+(\.[0-9]+)?$'),
    -- Number of attachments; kept by the store in the same transaction as every attach/detach.
    seats_used       bigint      NOT NULL DEFAULT 0 CHECK (seats_used >= 0),
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    CHECK (starts_on IS NULL OR ends_on IS NULL OR starts_on <= ends_on)
);
CREATE INDEX contracts_organization ON contracts (organization_id, membership_type);

CREATE TABLE users (
    sub            text        PRIMARY KEY,
    email          text,
    username       text,
    name           text,
    last_login_at  timestamptz,
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL
);
CREATE INDEX users_email ON users (lower(email));

CREATE TABLE memberships (
    sub              text        NOT NULL REFERENCES users (sub),
    -- CASCADE: deleting an organization ends its memberships (the admin API audits the delete).
    organization_id  bigint      NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    keep_until_seen  boolean     NOT NULL,
    manager          boolean     NOT NULL DEFAULT false,
    source           text        NOT NULL CHECK (source IN ('claim', 'code', 'admin')),
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    PRIMARY KEY (sub, organization_id)
);
CREATE INDEX memberships_organization ON memberships (organization_id);

CREATE TABLE attachments (
    sub          text        NOT NULL REFERENCES users (sub),
    -- RESTRICT: a contract with attached learners cannot be deleted (StoreError::InUse).
    contract_id  bigint      NOT NULL REFERENCES contracts (id) ON DELETE RESTRICT,
    source       text        NOT NULL CHECK (source IN ('sso', 'code', 'admin')),
    created_at   timestamptz NOT NULL,
    PRIMARY KEY (sub, contract_id)
);
CREATE INDEX attachments_contract ON attachments (contract_id);

-- No foreign keys: the audit trail outlives the rows it talks about (keys, not ids).
CREATE TABLE audit_events (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at            timestamptz NOT NULL,
    actor         text        NOT NULL,
    action        text        NOT NULL,
    sub           text,
    organization  text,
    contract      text,
    reason        text,
    detail        jsonb
);
CREATE INDEX audit_events_sub ON audit_events (sub, id);
CREATE INDEX audit_events_organization ON audit_events (organization, id);
CREATE INDEX audit_events_contract ON audit_events (contract, id);

CREATE TABLE jwks_cache (
    issuer      text        PRIMARY KEY,
    jwks        text        NOT NULL,
    fetched_at  timestamptz NOT NULL
);

CREATE TABLE enrollment_codes (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code          text        NOT NULL UNIQUE,
    contract_id   bigint      NOT NULL REFERENCES contracts (id) ON DELETE CASCADE,
    redemption    text        NOT NULL CHECK (redemption IN ('one-time', 'unlimited')),
    activates_at  timestamptz,
    expires_at    timestamptz,
    revoked_at    timestamptz,
    -- A one-time code belongs to the first user who redeems it (claimed with a guarded UPDATE).
    redeemed_by   text,
    created_at    timestamptz NOT NULL
);
CREATE INDEX enrollment_codes_contract ON enrollment_codes (contract_id);

CREATE TABLE redemptions (
    code_id  bigint      NOT NULL REFERENCES enrollment_codes (id) ON DELETE CASCADE,
    sub      text        NOT NULL REFERENCES users (sub),
    at       timestamptz NOT NULL,
    PRIMARY KEY (code_id, sub)
);
CREATE INDEX redemptions_sub ON redemptions (sub);

CREATE TABLE jobs (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind         text        NOT NULL,
    payload      jsonb       NOT NULL,
    status       text        NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed')),
    attempts     bigint      NOT NULL DEFAULT 0,
    -- queued: when to run next; running: when the worker's lease expires.
    next_run_at  timestamptz NOT NULL,
    last_error   text,
    progress     jsonb,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL
);
CREATE INDEX jobs_due ON jobs (kind, next_run_at) WHERE status IN ('queued', 'running');
