"""The Redis stores, one per concern, over one connection pool per Redis URL per process.

``keys`` (every key layout and stored field format), ``base`` (the shared pool, the call that
turns redis-py errors into StoreUnavailable, health, pub/sub), ``features`` (feature sets and
real-time features), ``live`` (live models and drift samples), ``experiments`` (A/B state,
served answers and outcomes, performance buckets), ``telemetry`` (traffic) and ``watcher``.
"""
