"""Kernel side of the dataplane: netlink driver, link monitor and reconcilers.

``driver.py`` is the only module importing pyroute2; ``batch.py``/``wire.py`` pack the
bulk route/neighbour/address requests directly; ``fake.py`` is an in-memory kernel for
unit tests.
"""
