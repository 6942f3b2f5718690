"""The engines that carry a federation's messages, all Flower grids under one adapter (:mod:`.grid`):
``direct`` (Ray actors, :mod:`.direct`), ``flower`` (Flower's simulation, :mod:`.flower`), ``inprocess``
(:mod:`.inprocess`), and a deployed SuperLink's grid. Their names live in :mod:`fedmtl.config.engines`,
each pointing at its class here (:func:`server.simulation.engine_for` imports it)."""
