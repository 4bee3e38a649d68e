"""Subscribers: address parsing, the bindings index and store, the static bindings file and RADIUS accounting."""
