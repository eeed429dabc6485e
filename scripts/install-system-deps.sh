#!/usr/bin/env bash
# System packages the sandbox and its language runtimes need (Debian 12). Idempotent.
set -euo pipefail
need=()
command -v bwrap >/dev/null || need+=(bubblewrap)
[ -x /usr/bin/ruby ] || need+=(ruby)
[ -x /usr/bin/gcc ] || need+=(gcc)
[ -x /usr/bin/node ] || need+=(nodejs)
[ -x /usr/bin/python3 ] || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
