"""The HTTP API (Ray Serve / FastAPI), the ops overview and dashboard, the client, deploying the whole."""
