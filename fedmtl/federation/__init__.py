"""The server side without Flower: round driver, server update, head averaging, wire protocol, fault injection."""
