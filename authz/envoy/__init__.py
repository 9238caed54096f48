"""Protobuf in and out: the only place that reads CheckRequest or builds CheckResponse."""
