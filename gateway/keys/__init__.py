"""Managed keys and teams: created through the admin API, stored in the state backend, narrowing a
policy tenant. ``model`` (records and request bodies), ``limits`` (narrowing and the request's
effective key), ``store`` (the backend layout), ``resolver`` (the cached auth lookup)."""
