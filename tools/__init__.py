"""Benchmarks, importers, exporters, the synthetic-take generator and the demo."""
