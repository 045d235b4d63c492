"""Maxine: a fast service registry and discovery server for microservices."""

__version__ = "0.1.0"
