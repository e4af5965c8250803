"""BGP speaker (iBGP to the route reflectors): ExaBGP as wire codec behind ``codec.py``,
an own sans-IO FSM (``fsm.py``), a compact Adj-RIB-In (``rib.py``), Adj-RIB-Out per peer
and the manager that connects them to the dataplane (``manager.py``)."""

from l3hostd.bgp import exabgp_prune

exabgp_prune.install()  # before the codec imports ExaBGP: see exabgp_prune
