"""One client's round: local multi-task training, evaluation and per-task gradients."""
