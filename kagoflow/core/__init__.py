"""The pure decision core: plain, deterministic Python driven by an injected clock.

Nothing in this package imports Faust, Kafka, Redis, ClickHouse or SMTP libraries; the live worker,
the backtest and the unit tests all run this same code.
"""
