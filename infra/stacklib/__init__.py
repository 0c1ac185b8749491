"""Implementation of ``infra/stack``: the local Kafka, Redis, ClickHouse and SMTP sink (see README)."""
