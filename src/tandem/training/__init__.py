"""Training: from a dataset to a registered, verified Bundle.

``tandem.training.train`` holds the orchestration; ``tandem.training.loop`` the PyTorch loop
that model families build on (so this package imports nothing eagerly: families import the
loop, and the orchestration imports the families).
"""
