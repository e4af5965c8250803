"""Endpoint sources: where the daemon learns its VM ports, security groups and the members
of remote groups.

- :mod:`l3hostd.endpoints.parse` — pure: bytes of one file -> model values, or one-line
  :class:`~l3hostd.endpoints.parse.EndpointFileError`.
- :mod:`l3hostd.endpoints.directory` — the embedded default source: a directory of files
  watched with inotify plus a periodic rescan, delivering
  :class:`~l3hostd.endpoints.directory.SourceChange` batches.

Nothing is re-exported here on purpose: importing the pure parser must not import asyncio
or inotify (the import-layering rule for pure modules).
"""
