-- A batch's members are looked up only while they are in flight (the lease, the re-check, the
-- attempt's exemption gate, a claim's scope), so only those rows are indexed by batch: the
-- index stays the size of the batches in flight.
DROP INDEX releases_batch;
CREATE INDEX releases_batch ON releases (batch_id) WHERE state = 'in_flight';
