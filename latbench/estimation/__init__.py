"""Estimates from tables: the estimator, the vectorised estimator, validation against measurements."""
