"""``python -m deepexec_server serve`` is ``deepexec serve``."""

from .cli import main

main()
