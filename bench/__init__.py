"""redchat-bench: load, a naive baseline server, and the processes a run starts.

It talks to redchat only over sockets and by starting processes; it must not
import the gateway's internals (``gateway.embedded_redis`` is the one launcher
for redis-server that everything shares).
"""
