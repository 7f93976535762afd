-- A provisioner's scope (ProvisionerRegistered): the profiles, name suffixes and requesters it
-- may enroll for, and how many certificates an hour (NULL: no limit of that kind).
ALTER TABLE provisioners ADD COLUMN scope_profiles text[];
ALTER TABLE provisioners ADD COLUMN scope_name_suffixes text[];
ALTER TABLE provisioners ADD COLUMN scope_requesters text[];
ALTER TABLE provisioners ADD COLUMN max_per_hour int;

-- When the ingress stream accepted a request (what a token, and a provisioner's hourly limit, are
-- judged by); NULL for requests recorded before.
ALTER TABLE requests ADD COLUMN accepted_at timestamptz;
CREATE INDEX requests_by_provisioner_time ON requests (provisioner_id, accepted_at)
    WHERE status IN ('approved', 'pending', 'issued');
