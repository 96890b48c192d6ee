-- Seat assignments by e-mail (docs/contract.md §12), PostgreSQL flavour. Keep in step with
-- migrations/sqlite/0003_seat_assignments.sql (which explains each part).

ALTER TABLE memberships DROP CONSTRAINT memberships_source_check;
ALTER TABLE memberships ADD CONSTRAINT memberships_source_check
    CHECK (source IN ('claim', 'code', 'admin', 'assignment'));
ALTER TABLE attachments DROP CONSTRAINT attachments_source_check;
ALTER TABLE attachments ADD CONSTRAINT attachments_source_check
    CHECK (source IN ('sso', 'code', 'admin', 'assignment'));

ALTER TABLE contracts ADD COLUMN seats_allocated bigint NOT NULL DEFAULT 0 CHECK (seats_allocated >= 0);

CREATE TABLE seat_assignments (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    contract_id  bigint      NOT NULL REFERENCES contracts (id) ON DELETE CASCADE,
    email        text        CHECK (email = lower(email)),
    state        text        NOT NULL CHECK (state IN ('allocated', 'accepted', 'expired', 'revoked')),
    sub          text,
    created_at   timestamptz NOT NULL,
    expires_at   timestamptz,
    accepted_at  timestamptz,
    ended_at     timestamptz
);
CREATE UNIQUE INDEX seat_assignments_live ON seat_assignments (contract_id, email)
    WHERE state IN ('allocated', 'accepted');
CREATE INDEX seat_assignments_email ON seat_assignments (email) WHERE state = 'allocated';
CREATE INDEX seat_assignments_contract ON seat_assignments (contract_id, state, id);
CREATE INDEX seat_assignments_sub ON seat_assignments (sub);
