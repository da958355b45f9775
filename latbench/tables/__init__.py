"""Latency lookup tables: storage, building and deriving from the journal, checking, the overhead model."""
