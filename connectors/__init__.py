"""Connections to Kafka: the embedded development broker and topic administration."""
