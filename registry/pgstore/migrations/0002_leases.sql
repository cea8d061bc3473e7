-- Leases (registry.Leaser): one row per named lease, e.g. the one that
-- elects the replica running the canary autopilot. expires_at is by the
-- database's clock, so replicas' clocks do not matter. holder is '' once
-- released. epoch increases each time the lease is taken (not renewed): a
-- fencing token that lets a deposed holder's late action be refused.
CREATE TABLE leases (
	name       text        PRIMARY KEY CHECK (name <> ''),
	holder     text        NOT NULL,
	expires_at timestamptz NOT NULL,
	epoch      bigint      NOT NULL CHECK (epoch > 0)
);
