"""Real-time recommendations: data, batch and real-time features, candidates + a ranker,
training and registry, and the request path that serves them with a live model swap.

The request path (``serving``, ``ranking``, ``bundle``, ``live``) imports numpy, redis and
orjson only: no pandas, scikit-learn or mlflow, so a Lambda cold start stays short.
"""
