"""Pure domain and protocol: no sockets, no files, no clock reads.

Everything here takes the time (``now``, Unix seconds as float) and randomness it
needs from its caller, so tests drive it without an event loop.  A test guards
that importing this package loads no asyncio, sqlite3, socket or starlette.
"""
