"""Continual learning: task sequences, the task-by-task score matrix and its metrics.

``dtune.continual.runner`` runs a sequence (``dtune continual``); ``dtune.continual.metrics``
computes average score, forgetting, forward transfer and retention from the matrix.
"""
