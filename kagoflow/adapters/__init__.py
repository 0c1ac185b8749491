"""Adapters: each outside system (Kafka, Redis, ClickHouse, SMTP) behind one narrow interface."""
