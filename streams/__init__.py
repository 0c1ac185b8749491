"""Kafka-facing stream code: the input contract (``kagoflow.streams.contract``) and topic names."""
