"""The REST transport: Open Inference Protocol v2 and the simple JSON API over ASGI."""
