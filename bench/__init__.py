"""Benchmarks: measured and reported, never asserted by the test suite."""
