"""Rate limiting exact across replicas: requests, tokens and concurrency.

``window`` (the algorithm and its error bound; the Python twins), ``scripts`` (the Lua twins),
``plan`` (limits per tenant/key/model, precomputed), ``result`` (429s and headers), ``fallback``
(``state.on_backend_error``), ``queue`` (FIFO waiting), ``leases`` (concurrency slot renewal),
``stats`` (counters). The pipeline stage is ``gateway.stages.ratelimit.RateLimitStage``.
"""
