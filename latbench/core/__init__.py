"""Foundations every layer uses: errors, file IO, hashing, artifact formats, progress, text."""
