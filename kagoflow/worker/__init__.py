"""Worker runtime pieces that are neither decision logic nor Faust: per-partition bookkeeping.

Kept free of Faust imports so the bookkeeping (dirty members, due heaps, flush cadence, pending acks)
is unit-tested without a broker; ``kagoflow.agents`` wires it to Faust streams and tables.
"""
