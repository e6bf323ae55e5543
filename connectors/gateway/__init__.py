"""HTTP ingest: `churnguard gateway` (POST /v1/events -> the input topics)."""
