"""Flower ClientApp: a thin adapter over ``fedmtl.client``."""
