"""Monitoring: production data against the Bundle's reference statistics (``drift``); the
prediction log, realized performance and the retrain policy build on it."""
