"""LLM gateway: an async, policy-driven reverse proxy for LLM APIs."""

__version__ = "0.1.0"
