"""Throughput / latency / memory benchmarks of the causal rollout (not tests). Entry point: ``python -m bench.run``."""
