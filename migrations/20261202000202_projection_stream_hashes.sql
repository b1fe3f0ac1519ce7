-- Kafka consumers trust nothing (issue 13): a projection fed from Kafka checks each message's
-- hash against its stream's previous hash before applying it. The runner keeps that previous
-- hash next to the stream's applied version. NULL for rows written before this migration: the
-- runner then takes the hash of the applied event from the store.
ALTER TABLE projection_streams ADD COLUMN last_hash BYTEA CHECK (octet_length(last_hash) = 32);

-- kind 'rejected': a message that did not verify (forged or altered in transit). It does not
-- park its stream: the store's own copy of the event, verified, is applied in its place.
ALTER TABLE projection_dead_letters DROP CONSTRAINT projection_dead_letters_kind_check;
ALTER TABLE projection_dead_letters ADD CONSTRAINT projection_dead_letters_kind_check
    CHECK (kind IN ('failed', 'parked', 'rejected'));
