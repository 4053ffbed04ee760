"""Training, evaluation, export and experiments for the keyword classifiers."""
