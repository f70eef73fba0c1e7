"""The web layer: the fork socket, REST routes, the live event socket."""
