"""The OpenAI-compatible API: protocol (request models), handlers, and response rendering
(JSON bodies and server-sent events)."""
