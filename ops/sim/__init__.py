"""Simulated clients and event generators, shared by the benchmarks and the tests."""
