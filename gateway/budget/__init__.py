"""Cost budgets: prices, UTC periods and the reservation ledger behind ``gateway.stages.budget``.

Money is counted in integer pico-dollars (1e-12 USD) everywhere state is kept, so sums across
replicas and requests are exact (no float drift in Redis or in memory); USD floats appear only at
the edges (headers, the admin API, ``ctx.cost_usd``).
"""
