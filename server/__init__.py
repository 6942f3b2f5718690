"""Flower ServerApp and strategy: thin adapters over ``fedmtl.federation.server_update``."""
