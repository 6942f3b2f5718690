"""fedmtl: a federated multi-task learning simulator for studying negative transfer across heterogeneous
clients. The package's floors, from the ground up: ``core``, ``data``, ``methods``, ``model``, ``config``,
``local`` (the client side) beside ``federation`` (the server's rules), ``runfiles`` and ``runtime``, then
``driver``, ``experiments`` and ``report`` (docs/ARCHITECTURE.md)."""
