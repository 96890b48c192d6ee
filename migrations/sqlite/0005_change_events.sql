-- Change events (docs/contract.md §13). The outbox is the audit trail itself: every change
-- already writes its audit row in the change's own transaction, so a change event is an audit
-- row with a `sequence`. Rows are written without one; a single sequencing step numbers
-- committed rows after the fact (SQLite has one writer, so the step never runs twice at once),
-- so a reader that has seen sequence N never later finds a row numbered N or less
-- (docs/events.md).
ALTER TABLE audit_events ADD COLUMN sequence INTEGER;
-- History is numbered by id, so the feed can serve it and new rows continue after it.
UPDATE audit_events SET sequence = id;
CREATE UNIQUE INDEX audit_events_sequence ON audit_events (sequence);
-- The sequencing step's work list: rows not yet numbered, in insertion order.
CREATE INDEX audit_events_unsequenced ON audit_events (id) WHERE sequence IS NULL;
-- Retention (`events.retention_days`): the feed finds the oldest event it still serves.
CREATE INDEX audit_events_at ON audit_events (at);

-- A user's skip state per full contract: an `attachment.skipped_full` event is written only
-- when a row appears here, so reconciling a user twice against a full contract writes it once.
-- Cleared when the membership that made the contract relevant goes, or with the user.
CREATE TABLE attachment_skips (
    sub          TEXT    NOT NULL REFERENCES users (sub),
    contract_id  INTEGER NOT NULL REFERENCES contracts (id) ON DELETE CASCADE,
    skipped_at   TEXT    NOT NULL,
    PRIMARY KEY (sub, contract_id)
) STRICT;

-- Where each delivery target (a webhook, the Redis stream) stands: the last sequence it
-- acknowledged, its state and failures, and the lease of the replica delivering it now.
CREATE TABLE event_deliveries (
    target           TEXT    PRIMARY KEY,
    delivered        INTEGER NOT NULL,
    state            TEXT    NOT NULL CHECK (state IN ('active', 'dead')),
    failures         INTEGER NOT NULL DEFAULT 0,
    attempts_failed  INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    last_attempt_at  TEXT,
    delivered_at     TEXT,
    lease_owner      TEXT,
    lease_until      TEXT
) STRICT;
