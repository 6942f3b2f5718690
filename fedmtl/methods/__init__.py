"""The levers a study compares: aggregation (server and in-client surgery), loss balancing, sharing, task sampling."""
