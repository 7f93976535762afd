-- When an operator declared a CA compromised: from then on every certificate it issued is
-- reported revoked (cACompromise), before revocation's per-certificate events arrive.
ALTER TABLE cas ADD COLUMN compromised_at timestamptz;
