"""The multi-task network: shared encoder and private task heads."""
