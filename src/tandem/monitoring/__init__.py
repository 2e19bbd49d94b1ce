"""Monitoring and the retraining loop.

- :mod:`.predictions`: the prediction log the server and batch jobs write;
- :mod:`.feedback`: late labels joined to logged predictions;
- :mod:`.drift`, :mod:`.sample`: production rows against what the Bundle froze (statistics,
  a reference sample); :mod:`.monitor` puts them together, :mod:`.html` draws them;
- :mod:`.performance`, :mod:`.detectors`: realized performance and when it decayed;
- :mod:`.retrain`: the champion's recipe on fresh rows, and a promotion only on evidence.
"""
