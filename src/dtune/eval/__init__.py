"""Evaluation: batched rollouts and scores."""
