"""HTTP API: one module per route group (Starlette, msgspec bodies)."""
