"""Guardrails: the checks a policy declares on what goes to a model (pre) and what comes back (post).

``text`` finds and rewrites the user-written text of requests and answers, ``checks`` holds the
local kinds (pii, deny, max_prompt, json_schema), ``schema`` a small JSON Schema validator and
``webhook`` the client of an external policy hook. The stage that runs them is
``gateway.stages.guardrails``.
"""
