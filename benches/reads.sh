#!/usr/bin/env bash
# Read figures: redis-benchmark GET against a local 3-node raft-kv cluster, via the leader and
# via a follower, without and with pipelining. POLICY=index|lease|stale picks --read-policy
# (empty: the binary's default, for builds that predate the flag).
set -u
BIN=${BIN:-target/release/raft-kv}
POLICY=${POLICY:-}
N=${N:-200000}
D=$(mktemp -d)
BASE=${BASE:-27380}
EXTRA=()
[ -n "$POLICY" ] && EXTRA=(--read-policy "$POLICY")
$BIN cluster --nodes 3 --base-port $BASE --data-dir $D/c "${EXTRA[@]}" < /dev/null > $D/cluster.log 2>&1 &
CL=$!
for _ in $(seq 1 100); do
  redis-cli -p $BASE SET k v 2>/dev/null | grep -q OK && break
  sleep 0.1
done
redis-benchmark -p $BASE -t set -n 20000 -c 32 -d 256 -r 1000 -q > /dev/null 2>&1
LEADER=""; FOLLOWER=""
for p in $BASE $((BASE+1)) $((BASE+2)); do
  role=$(redis-cli -p $p INFO raft | tr -d '\r' | grep '^role:' | cut -d: -f2)
  if [ "$role" = leader ]; then LEADER=$p; elif [ -z "$FOLLOWER" ]; then FOLLOWER=$p; fi
done
echo "policy=${POLICY:-default} leader=$LEADER follower=$FOLLOWER"
for via in leader follower; do
  p=$LEADER; [ $via = follower ] && p=$FOLLOWER
  for pipe in 1 16; do
    r=$(redis-benchmark -p $p -t get -n $N -c 32 -P $pipe -d 256 -r 1000 -q 2>/dev/null | tr '\r' '\n' | grep -o "GET: [0-9.]* requests per second" | tail -1)
    echo "via $via -c 32 -P $pipe: $r"
  done
done
redis-cli -p $LEADER INFO raft | tr -d '\r' | grep -E "^reads_" || true
redis-cli -p $FOLLOWER INFO raft | tr -d '\r' | grep -E "^reads_" || true
kill $CL 2>/dev/null; wait $CL 2>/dev/null; rm -rf $D
