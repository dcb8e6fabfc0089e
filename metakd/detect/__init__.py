"""Adapting a teacher to one domain: the checks, preprocessing, inner loop and estimator."""
