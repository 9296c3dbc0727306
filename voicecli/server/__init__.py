"""HTTP server: app, routes, the call lifecycle, limits, tokens, URLs, workers and instances."""
