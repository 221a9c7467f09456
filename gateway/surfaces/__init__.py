"""Inbound API surfaces: the wire formats clients speak (OpenAI chat, Anthropic Messages, OpenAI Responses).

Each surface translates its requests to the internal (OpenAI chat) form the pipeline runs on, and
the pipeline's answers back, or forwards them untouched when the provider speaks the same family.
"""
