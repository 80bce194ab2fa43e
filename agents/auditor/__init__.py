"""The auditor: every envelope of every stream into the Postgres trail, the audit stream,
checkpoints, and the evidence report engine."""
