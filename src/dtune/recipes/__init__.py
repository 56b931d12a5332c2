"""Recipes: the runs a user starts (pre-training, adaptation, continual learning, evaluation,
the demo), each a config dataclass and a function, on top of the training engine
(:mod:`dtune.train`) and the evaluator (:mod:`dtune.eval`)."""
