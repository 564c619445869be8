#!/bin/bash
# Run each line of a queue file (hx.py arguments) one after another; one process at a time.
# usage: queue.sh QUEUEFILE   (lines starting with # are skipped; a line is removed once started)
Q="$(realpath "$1")"; cd "$(dirname "$(realpath "$0")")/../.."

while true; do
  line=$(grep -v '^#' "$Q" | grep -v '^\s*$' | head -1)
  [ -z "$line" ] && break
  grep -vxF -- "$line" "$Q" > "$Q.tmp"; mv "$Q.tmp" "$Q"
  name=$(echo "$line" | sed -n 's/.*--name \([^ ]*\).*/\1/p')
  echo "$(date +%T) start $name" >> experiments/hardened/logs/queue.log
  if [[ "$line" == !* ]]; then
    name=cmd$(date +%s); bash -c "${line:1}" > "experiments/hardened/logs/$name.log" 2>&1
  else
    PYTHONPATH=$PWD PYTHONWARNINGS=ignore /work/main/.venv/bin/python experiments/hardened/hx.py $line > "experiments/hardened/logs/$name.log" 2>&1
  fi
  echo "$(date +%T) done $name rc=$?" >> experiments/hardened/logs/queue.log
done
