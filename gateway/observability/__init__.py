"""Observability: metrics, scrape-time gauges, the metered backend, logs, audit, redaction, feedback records."""
