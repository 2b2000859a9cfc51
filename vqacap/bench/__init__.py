"""Benchmarks: figures printed as a table and written as JSON under outputs/bench/. Never run as timed tests."""
