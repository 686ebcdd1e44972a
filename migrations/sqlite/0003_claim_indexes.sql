-- A claim takes the oldest due release, then up to 100 more of its account, region and flags, in
-- id order. With these, both walk an index in id order and stop early, instead of sorting every
-- pending release on each claim (quadratic over a long queue). The due-time index keeps serving
-- "when is the next release due", without its state column, which made planners prefer it for
-- claims too.
DROP INDEX releases_due;
CREATE INDEX releases_due ON releases (not_before) WHERE state = 'pending';
CREATE INDEX releases_pending_by_id ON releases (id) WHERE state = 'pending';
CREATE INDEX releases_pending_group ON releases (account, region, force, terminate_subscription, id)
    WHERE state = 'pending';
-- Enqueueing skips instances already released, looked up by instance id in every state.
CREATE INDEX releases_instance ON releases (instance_id);
