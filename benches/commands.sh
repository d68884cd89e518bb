#!/usr/bin/env bash
# Command figures: redis-benchmark SET, GET, INCR and HSET against a local 3-node raft-kv
# cluster, 32 clients, via the leader. ROUNDS repeats the whole set (figures vary by run).
set -u
BIN=${BIN:-target/release/raft-kv}
N=${N:-100000}
ROUNDS=${ROUNDS:-2}
TESTS=${TESTS:-set,get,incr,hset}
D=$(mktemp -d)
BASE=${BASE:-27480}
$BIN cluster --nodes 3 --base-port $BASE --data-dir $D/c < /dev/null > $D/cluster.log 2>&1 &
CL=$!
for _ in $(seq 1 100); do
  redis-cli -p $BASE SET k v 2>/dev/null | grep -q OK && break
  sleep 0.1
done
LEADER=""
for p in $BASE $((BASE+1)) $((BASE+2)); do
  role=$(redis-cli -p $p INFO raft | tr -d '\r' | grep '^role:' | cut -d: -f2)
  [ "$role" = leader ] && LEADER=$p
done
echo "leader=$LEADER bin=$BIN"
for r in $(seq 1 "$ROUNDS"); do
  redis-benchmark -p "$LEADER" -t "$TESTS" -n "$N" -c 32 -d 256 -r 1000 -q 2>/dev/null \
    | tr '\r' '\n' | grep -E "requests per second|ERR" | grep -v '^$' | sed "s/^/round $r: /" | sort -u
done
kill $CL 2>/dev/null; wait $CL 2>/dev/null; rm -rf $D
