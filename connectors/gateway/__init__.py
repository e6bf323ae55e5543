"""HTTP ingest: `churnguard gateway` validates POSTed events and produces them to Kafka."""
