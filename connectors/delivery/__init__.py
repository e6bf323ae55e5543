"""Webhook delivery: `churnguard deliver` (the action topics -> HTTP endpoints)."""
