"""Monitoring: recommendation performance, traffic and latency, drift, Prometheus metrics, the dashboard."""
