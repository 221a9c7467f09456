"""Upstream providers: one module each behind the ``Provider`` interface (``base.py``).

``registry.py`` is the table of provider types; ``live.py`` holds the instances of the serving policy.
"""
