"""Several callstream nodes behind a load balancer (Caddy): its configuration, the processes of a
fleet on one machine, and `python -m callstream.fleet`, the demo that plays calls through one.

Nothing here is on a call's path: a node is a plain ``callstream serve``; this package only
writes the balancer's configuration and starts and stops processes."""
