"""Routing and resilience logic, free of I/O so it is unit-tested on its own.

``rules``/``complexity``: small/large decisions; ``fit``: context-window fallback chains;
``balancer``: deployment order per strategy; ``breaker``: per-deployment circuit breakers;
``retry``: backoff and the retry budget; ``exhausted``: the 503 and the static safe answer.
The stages that use them are ``gateway.stages.router`` and ``gateway.stages.upstream``.
"""
