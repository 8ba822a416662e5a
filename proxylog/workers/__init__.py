"""Several worker processes on one port: the supervisor, and what each worker keeps to itself."""

from proxylog.workers.supervisor import Supervisor

__all__ = ["Supervisor"]
