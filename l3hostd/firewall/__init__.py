"""Security groups in nftables (``table inet l3hostd`` + ``table arp l3hostd``).

compile.py   pure: groups -> chains per group and per profile (combination of groups),
             the fixed skeleton, a whole-table script; endpoints -> element data
elements.py  pure: one TAP's / one group's elements, digests, deltas as set operations
nfnl.py      pure: nf_tables set-element messages and batches, packed by hand
nfsock.py    IO: the NETLINK_NETFILTER socket that sends those batches
nft.py       IO: nft scripts (libnftables / ``nft -f -``) and ``nft -j`` read-back
reconciler.py  inputs -> desired keys; chains via nft, elements via netlink, in order
"""
