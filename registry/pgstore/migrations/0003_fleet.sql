-- The fleet's request counters (Store.Fleet, a fleet.Store): each
-- replica's latest snapshot of each model's per-version counters, as
-- fleet.Encode writes it. expires is by the database's clock (the publish
-- time plus the publisher's TTL), so replicas' clocks do not matter: reads
-- leave out the rows past it, and publishes delete a few of those at a
-- time. at is when the replica read its counters, by its own clock.
CREATE TABLE fleet_snapshots (
	model   text        NOT NULL CHECK (model <> ''),
	replica text        NOT NULL CHECK (replica <> ''),
	at      timestamptz NOT NULL,
	expires timestamptz NOT NULL,
	body    jsonb       NOT NULL,
	PRIMARY KEY (model, replica)
);
CREATE INDEX fleet_snapshots_expires ON fleet_snapshots (expires);
