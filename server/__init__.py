"""Flower ServerApp and strategy: thin adapters over ``fedmtl.server_update``."""
