"""Measuring: one session (export, prepare, interleaved rounds, consensus, journal) for every command
that measures, the consensus rule that decides when a latency is accepted, the journal that
records every measurement, and the time base that carries speed across sessions."""
