#!/usr/bin/env bash
# The seed's README runs `bash visualize_pred.sh` from the repository root; the driver lives in
# commands/ (see commands/visualize_pred.sh for its settings).
set -euo pipefail
exec bash "$(dirname "$0")/commands/visualize_pred.sh" "$@"
