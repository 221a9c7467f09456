"""The gateway policies the scenarios run, and LiteLLM's config for the same upstream."""

from __future__ import annotations

FULL = """\
version: 1
{state}{server}providers:
  up: {{type: openai, base_url: "http://127.0.0.1:{up}/v1", api_key: sk-up{pool}}}
models:
  m:
    context_window: 200000
    price: {{input: 0.15, output: 0.6}}
    deployments: [{{provider: up, model: m}}]
cache: {{enabled: {cache}, ttl_s: 3600}}
logging: {{access_log: "off"}}
tenants:
  bench:
    api_keys: [sk-bench]
    models: [m]
{limits}"""
LIMITS = """\
    rate_limit: {rpm: 100000000, tpm: 100000000000, concurrency: 1000000}
    budget: {usd: 1000000000, period: total}
"""


def gateway_policy(up: int, redis_url: str | None = None, cache: bool = False, connections: int = 0,
                   hold_s: float = 0.0, limits: bool = True) -> str:
    """The full policy: auth, input checks, rpm/tpm/concurrency limits, budget, routing, metrics.

    ``limits`` off leaves the tenant without rate limits and budget (the ``floor`` scenarios: the
    plumbing every request pays, to tell it from what the limits and the budget add).

    ``cache`` turns the response cache on; ``connections`` sets each worker's server and upstream pool
    connection caps (idle streams: ``IdleSplit.worker_cap``); ``hold_s`` raises the provider's
    ``first_byte_s``, also its bound on silence between chunks, so held streams are not cut as stalled
    (60 s by default). The keys are left out otherwise, so older trees given with ``--gateway-src`` load
    the same file.
    """
    state = f'state: {{backend: redis, redis_url: "{redis_url}", timeout_ms: 1000}}\n' if redis_url else ""
    server = pool = ""
    if connections:
        server = f"server: {{max_connections: {connections}, max_in_flight: null}}\n"
        pool = f", max_connections: {connections}"
    if hold_s:
        pool += f", timeouts: {{first_byte_s: {hold_s:g}, total_s: {max(600.0, hold_s):g}}}"
    return FULL.format(state=state, server=server, up=up, pool=pool, cache="true" if cache else "false",
                       limits=LIMITS if limits else "")


LITELLM = """\
model_list:
  - model_name: m
    litellm_params: {{model: openai/m, api_base: "http://127.0.0.1:{up}/v1", api_key: sk-up}}
litellm_settings: {{drop_params: true, telemetry: false}}
"""


def litellm_config(up: int) -> str:
    """One model on the same mock; no database, no master key (any bearer token passes)."""
    return LITELLM.format(up=up)


def nginx_config(folder: str, port: int, up: int) -> str:
    """nginx as a plain reverse proxy with a keep-alive pool to the mock (REFERENCE.md's nginx row)."""
    temp = " ".join(f"{kind}_temp_path {folder}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi",
                                                                        "scgi"))
    return f"""daemon off;
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/nginx-error.log warn;
events {{ worker_connections 20000; }}
http {{
  access_log off;
  {temp}
  upstream up {{ server 127.0.0.1:{up}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
"""
