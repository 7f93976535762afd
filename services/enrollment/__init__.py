"""Enrollment: proves the requester's identity and the CSR, then approves or rejects."""
