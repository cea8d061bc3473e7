-- The registry's first schema. Applied once, in one transaction, by
-- pgstore.Open under an advisory lock; never edit it once released: add
-- 0002_….sql instead.

-- The sequence of the last committed event. Writers update this one row in
-- the transaction that inserts their events, so its row lock orders
-- committers: event numbers are gap-free and increase in commit order
-- across every process and machine.
CREATE TABLE registry_seq (
	id  boolean PRIMARY KEY DEFAULT true CHECK (id),
	seq bigint  NOT NULL CHECK (seq >= 0)
);
INSERT INTO registry_seq (id, seq) VALUES (true, 0);

-- One row per model: the model with all its versions, as the JSON the
-- registry wrote (json, not jsonb: kept verbatim), and the seq of the last
-- event that changed it.
CREATE TABLE models (
	name        text   PRIMARY KEY,
	doc         json   NOT NULL,
	updated_seq bigint NOT NULL
);

-- The audit log: one row per event, the event as JSON.
CREATE TABLE events (
	seq   bigint      PRIMARY KEY CHECK (seq > 0),
	model text        NOT NULL,
	doc   json        NOT NULL,
	at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_model_seq ON events (model, seq);

-- Artifacts, content-addressed: the bytes are in the large object oid.
CREATE TABLE artifacts (
	sha256     text        PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
	size       bigint      NOT NULL CHECK (size >= 0),
	oid        oid         NOT NULL,
	created_at timestamptz NOT NULL DEFAULT now()
);
