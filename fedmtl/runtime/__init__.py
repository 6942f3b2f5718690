"""How runs are hosted: Ray resources and the offline environment."""
