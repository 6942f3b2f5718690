"""The experiment configuration: typed dataclasses, the YAML parser, the run-config bridge, errors."""
