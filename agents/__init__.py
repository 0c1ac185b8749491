"""Faust shells around the pure decision core (imported as ``kagoflow.agents``).

Agents parse records, hand them to ``kagoflow.core.engine.Engine``, persist member state in RocksDB
tables and carry out the decisions. No decision logic lives here.
"""
