"""Private services for ``mcp-broker dev`` and the test session: a real ``redis-server`` and a
real OpenLDAP ``slapd`` on loopback, each a child process that dies with its parent."""

from broker.devstack.process import MissingBinary, free_port
from broker.devstack.redis_server import RedisServer
from broker.devstack.slapd import DemoDirectory, Slapd

__all__ = ["DemoDirectory", "MissingBinary", "RedisServer", "Slapd", "free_port"]
