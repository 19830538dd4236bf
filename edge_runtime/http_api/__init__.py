"""The OpenAI-compatible HTTP API beside gRPC: request bodies (schema.py), their mapping to the engine and
back (convert.py), the Starlette app (app.py) and uvicorn on the service's event loop (listener.py).
service/server.py binds its listeners and runs it over the same engine as the gRPC servicer."""
