-- One seal per predecessor: two processes sealing at once must not fork the seal chain. A named
-- lock (`get_lock`) keeps them apart on one server, but it is local to the node on a multi-primary
-- cluster (Galera, Group Replication multi-primary); this key makes the second seal fail (a
-- duplicate, or a certification failure across nodes) and that process seals again later.
alter table audit_seals add unique key audit_seals_prev_hash (prev_hash);
