-- What operators did through wxpay-console: who, what, on which target, when, with which
-- note, and how it ended. Append-only: the console never updates or deletes a row.
CREATE TABLE console_audit (
    id      BIGSERIAL   PRIMARY KEY,
    at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    actor   TEXT        NOT NULL,
    action  TEXT        NOT NULL,
    target  TEXT        NOT NULL,
    note    TEXT        NULL,
    result  TEXT        NOT NULL
);
CREATE INDEX console_audit_at ON console_audit (at);
