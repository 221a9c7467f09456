"""The pieces of ``python -m benchmarks``: scenarios, proxies and their processes, load generators, the table.

``run`` drives a scenario; ``scenarios`` names them with the issue's targets; ``proxies`` starts what sits
between the load and ``mock_upstream`` (``bare_proxy``, nginx, LiteLLM, the gateway with ``policies``);
``procs`` pins, measures and stops processes; ``load`` and ``streams`` make the load; ``redis_stats``
counts Redis calls; ``table`` prints and saves the rows.
"""
