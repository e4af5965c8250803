"""BGP speaker (iBGP to the route reflectors): ExaBGP as wire codec behind ``codec.py``,
an own sans-IO FSM, RIB and Adj-RIB-Out. Not built yet: see the BGP issue."""
