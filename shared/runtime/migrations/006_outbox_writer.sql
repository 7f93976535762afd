-- The database session that wrote each outbox row. While that session lives, its process is alive
-- and its fast path publishes the row; once it has gone (the process was killed: PostgreSQL ends a
-- session as soon as its socket closes), the relay takes the row over without waiting for the
-- fast path's publish to time out. (Rows written before this column existed get the migrating
-- session, which ends soon: they are taken over too, which is what the relay did with them anyway.)
ALTER TABLE outbox ADD COLUMN writer_pid int DEFAULT pg_backend_pid();
