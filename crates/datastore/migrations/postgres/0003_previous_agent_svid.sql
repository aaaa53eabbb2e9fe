-- The agent's X.509-SVID before its latest renewal or re-attestation. The server keeps
-- accepting it while it is unexpired and the agent has not used its new SVID, so an agent
-- whose reply carrying the new SVID was lost can still authenticate.
ALTER TABLE attested_agents ADD COLUMN previous_x509_svid_serial TEXT;
ALTER TABLE attested_agents ADD COLUMN previous_x509_svid_expires_at BIGINT;
