-- The active organization a session selected (docs/contract.md §10): one row per (user,
-- session). `sid` is the token's session id, '' for tokens without one (one selection per
-- user). Deleting the organization ends the selection; erasing the user deletes the rows
-- explicitly (store::users::erase).
CREATE TABLE active_organization_selections (
    sub              TEXT    NOT NULL REFERENCES users (sub),
    sid              TEXT    NOT NULL,
    organization_id  INTEGER NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    selected_at      TEXT    NOT NULL,
    PRIMARY KEY (sub, sid)
) STRICT;
CREATE INDEX active_organization_selections_organization
    ON active_organization_selections (organization_id);
