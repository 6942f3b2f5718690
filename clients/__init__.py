"""Flower ClientApp: a thin adapter over ``fedmtl.local.client``."""
