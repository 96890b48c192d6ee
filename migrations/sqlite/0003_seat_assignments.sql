-- Seat assignments by e-mail (docs/contract.md §12), SQLite flavour. Keep in step with
-- migrations/postgres/0003_seat_assignments.sql.
--
-- 1. `assignment` becomes a membership and an attachment source. SQLite cannot alter a CHECK
--    constraint, so both tables are rebuilt (same columns, constraints and indexes as in
--    0001_initial.sql, one more allowed value) and their rows copied. No table refers to them,
--    so dropping the old ones trips no foreign key.
-- 2. `contracts.seats_allocated` counts the contract's `allocated` assignments, kept by the
--    store in the same transaction as every change of an assignment's state, so the seat check
--    (`seats_used + seats_allocated < max_learners`) stays one guarded UPDATE of the contract
--    row (see store/mod.rs, "Seats").
-- 3. The assignments themselves.

CREATE TABLE memberships_new (
    sub              TEXT    NOT NULL REFERENCES users (sub),
    organization_id  INTEGER NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    keep_until_seen  INTEGER NOT NULL CHECK (keep_until_seen IN (0, 1)),
    manager          INTEGER NOT NULL DEFAULT 0 CHECK (manager IN (0, 1)),
    source           TEXT    NOT NULL CHECK (source IN ('claim', 'code', 'admin', 'assignment')),
    created_at       TEXT    NOT NULL,
    updated_at       TEXT    NOT NULL,
    PRIMARY KEY (sub, organization_id)
) STRICT;
INSERT INTO memberships_new (sub, organization_id, keep_until_seen, manager, source, created_at, updated_at)
    SELECT sub, organization_id, keep_until_seen, manager, source, created_at, updated_at FROM memberships;
DROP TABLE memberships;
ALTER TABLE memberships_new RENAME TO memberships;
CREATE INDEX memberships_organization ON memberships (organization_id);

CREATE TABLE attachments_new (
    sub          TEXT    NOT NULL REFERENCES users (sub),
    contract_id  INTEGER NOT NULL REFERENCES contracts (id) ON DELETE RESTRICT,
    source       TEXT    NOT NULL CHECK (source IN ('sso', 'code', 'admin', 'assignment')),
    created_at   TEXT    NOT NULL,
    PRIMARY KEY (sub, contract_id)
) STRICT;
INSERT INTO attachments_new (sub, contract_id, source, created_at)
    SELECT sub, contract_id, source, created_at FROM attachments;
DROP TABLE attachments;
ALTER TABLE attachments_new RENAME TO attachments;
CREATE INDEX attachments_contract ON attachments (contract_id);

ALTER TABLE contracts ADD COLUMN seats_allocated INTEGER NOT NULL DEFAULT 0 CHECK (seats_allocated >= 0);

CREATE TABLE seat_assignments (
    id           INTEGER PRIMARY KEY,
    -- CASCADE: deleting a contract ends its assignments (like its codes).
    contract_id  INTEGER NOT NULL REFERENCES contracts (id) ON DELETE CASCADE,
    -- Lower-cased and trimmed; NULL once the user it was accepted by (or meant for) is erased.
    email        TEXT    CHECK (email = lower(email)),
    state        TEXT    NOT NULL CHECK (state IN ('allocated', 'accepted', 'expired', 'revoked')),
    -- The user who accepted it (no foreign key: the row outlives an erased user).
    sub          TEXT,
    created_at   TEXT    NOT NULL,
    expires_at   TEXT,
    accepted_at  TEXT,
    -- When it was revoked or (materialised as) expired.
    ended_at     TEXT
) STRICT;
-- One live (allocated or accepted) assignment per e-mail and contract.
CREATE UNIQUE INDEX seat_assignments_live ON seat_assignments (contract_id, email)
    WHERE state IN ('allocated', 'accepted');
-- The login's lookup: allocated assignments of a verified e-mail.
CREATE INDEX seat_assignments_email ON seat_assignments (email) WHERE state = 'allocated';
CREATE INDEX seat_assignments_contract ON seat_assignments (contract_id, state, id);
CREATE INDEX seat_assignments_sub ON seat_assignments (sub);
