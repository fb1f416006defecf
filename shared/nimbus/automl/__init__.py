"""AutoML: profile a dataset, search scikit-learn algorithms and hyperparameters on Ray Tune,
track every trial in MLflow, refit and register the winner."""
