#!/usr/bin/env bash
# System packages the sandbox and its language runtimes need (Debian 12). Idempotent.
#
#   bubblewrap   the local sandbox backend (unprivileged user namespaces)
#   gcc          the sandbox launcher (built at start) and the "c" language
#   libc6-dev    C headers and libc.a (gcc alone, without recommends, cannot compile C)
#   g++          the "cpp" language
#   nodejs       the "javascript" language (/usr/bin/node)
#   ruby         the "ruby" language
#   python3      the "python" language (/usr/bin/python3, Debian's, not a shim)
set -euo pipefail
need=()
command -v bwrap >/dev/null || need+=(bubblewrap)
[ -x /usr/bin/ruby ] || need+=(ruby)
[ -x /usr/bin/gcc ] || need+=(gcc)
[ -e /usr/include/stdio.h ] || need+=(libc6-dev)
[ -x /usr/bin/g++ ] || need+=(g++)
[ -x /usr/bin/node ] || need+=(nodejs)
[ -x /usr/bin/python3 ] || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
