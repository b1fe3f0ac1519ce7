-- The audit export and the unfiltered ListAuditTrail page through one tenant's rows in global
-- order. No index led with (tenant_id, global_position), so a page scanned every remaining row
-- of the tenant through another index and sorted them: a 1,000,000-row export read O(n) rows
-- per page of 500 (about 1 s a page at 500,000 rows left). With this index a page reads its 500
-- rows in order and stops.
CREATE INDEX audit_log_tenant_position_idx ON audit_log (tenant_id, global_position);
