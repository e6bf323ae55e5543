"""Webhook delivery: `churnguard deliver` POSTs every action to the endpoints that take them."""
