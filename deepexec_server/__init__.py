"""deepexec_server: the DeepExec reference server (aiohttp.web).

Run it with ``deepexec serve``; see :mod:`deepexec_server.settings` for every setting.
"""

__version__ = "0.1.0"
