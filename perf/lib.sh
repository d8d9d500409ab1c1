# Shared helpers for perf/bench.sh and perf/affinity.sh (sourced, not run).
# shellcheck shell=bash

# utime+stime of PID, all threads, in seconds (from /proc/PID/stat; the
# comm field may contain spaces, so fields are counted after the last ')').
cpu_of() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo null; return; }
  stat=${stat##*) }
  # After "pid (comm) ", field 1 is the state: utime is field 12, stime 13.
  awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f\n", ($12 + $13) / hz}' <<<"$stat"
}

# Number of threads of PID whose name starts with PREFIX.
threads_named() {
  local n=0 t
  for t in /proc/"$1"/task/*/comm; do
    [[ -r $t ]] && [[ $(cat "$t" 2>/dev/null) == "$2"* ]] && n=$((n + 1))
  done
  echo "$n"
}

# wait_for SECONDS COMMAND...: poll COMMAND every 50 ms until it succeeds;
# fails after SECONDS.
wait_for() {
  local limit=$(($1 * 20)) i
  shift
  for ((i = 0; i < limit; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  return 1
}

# Background processes this script started, killed by PID on exit.
PIDS=()
track() { PIDS+=("$1"); }
untrack() { # PID: forget it (after it was reaped)
  local keep=() p
  for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}
stop() { # PID...: SIGTERM, reap, forget
  local p
  for p in "$@"; do
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    untrack "$p"
  done
}
kill_tracked() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}

# A Python that can import matplotlib, installing it if needed (needs the
# network: call this before entering the loopback-only namespace). Prints
# the interpreter, or nothing when none could be had (then no chart).
find_plot_python() {
  local py
  for py in python3 /usr/bin/python3; do
    command -v "$py" >/dev/null 2>&1 && "$py" -c 'import matplotlib' 2>/dev/null && { echo "$py"; return; }
  done
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "installing python3-matplotlib (apt-get)" >&2
    apt-get install -y -q python3-matplotlib >/dev/null 2>&1 || true
    /usr/bin/python3 -c 'import matplotlib' 2>/dev/null && { echo /usr/bin/python3; return; }
  fi
  echo "installing matplotlib (pip)" >&2
  python3 -m pip install -q matplotlib >/dev/null 2>&1 || true
  python3 -c 'import matplotlib' 2>/dev/null && { echo python3; return; }
  echo "warning: no matplotlib; the PNG chart will be skipped" >&2
}
