"""HTTP: the aiohttp app, its routes, lifecycle, protocol hooks, SSE framing and the process runner."""
