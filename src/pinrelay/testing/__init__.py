"""Test utilities shipped with pinrelay: real processes on loopback, polling waits.

Used by pinrelay's own tests, its benchmarks and ``pinrelay cluster``; importable
without pytest (like websockets' or nats.py's test helpers):

- :mod:`pinrelay.testing.ports`: :func:`~pinrelay.testing.ports.free_port`, a free
  loopback port below the kernel's ephemeral range;
- :mod:`pinrelay.testing.procs`: start a child in its own session, stop it by pid;
- :mod:`pinrelay.testing.natsproc`: nats-server (JetStream, clustered) processes;
- :mod:`pinrelay.testing.relayproc`: a ``pinrelay serve`` process;
- :mod:`pinrelay.testing.wait`: :data:`~pinrelay.testing.wait.TIMEOUT_FACTOR` and
  :func:`~pinrelay.testing.wait.wait_until` (and its async twin).

Every process started here is stopped by its pid (SIGTERM, then SIGKILL after a
timeout), never by name.
"""
