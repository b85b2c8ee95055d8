"""The HTTP room: aiohttp app, route table, middlewares, handlers. Only the daemon imports
it; handlers parse, call a service, render."""
