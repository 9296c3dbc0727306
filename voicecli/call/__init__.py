"""One call's media path: session, pipeline, transport, shared models, audio."""
