"""The process runtime: a master that validates, supervises and reloads; workers that serve.

`master.run` is the entry point (`ando run`). The master never serves traffic: it owns the config
(reads, validates, watches it), forks the workers, replaces the ones that die and turns signals
into graceful reloads and shutdowns. Each worker runs one uvloop loop with its own SO_REUSEPORT
sockets and the Gateway built from the snapshot the master validated.
"""
