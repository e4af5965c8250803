"""Security groups in nftables (``table inet l3hostd``): a pure compiler and a reconciler
that owns the table. Not built yet: see the firewall issue."""
