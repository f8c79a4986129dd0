#!/usr/bin/env bash
# The hostile-load test at full scale (not in CI): 1,000 connections without
# a certificate and 50 enrolled machines holding every stream they may open
# with the largest frames, plus garbage, while 8 real and 500 simulated
# agents report and take a deployment. Prints the coordinator's idle and
# peak RSS; fails if it grew past the bound docs/security.md states or an honest
# agent went offline. Release build.
#   scripts/hostile-load.sh
source "$(dirname "$0")/lib.sh"
install_dependencies
cd "$ROOT"
DROVER_HOSTILE_SCALE=full cargo test --release --locked -p drover-coordinator --test server -- hostile_load --nocapture
