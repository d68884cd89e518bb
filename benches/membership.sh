#!/usr/bin/env bash
# Membership figures: time for a new node to join a cluster holding 100,000 keys and become a
# voter; write throughput in 1-second windows while the membership changes under load.
set -u
BIN=${BIN:-target/release/raft-kv}
D=$(mktemp -d)
BASE=26380
$BIN cluster --nodes 3 --base-port $BASE --data-dir $D/c < /dev/null > $D/cluster.log 2>&1 &
CL=$!
sleep 3
# 100,000 distinct keys of 64 bytes
awk 'BEGIN{for(i=1;i<=100000;i++){k="key:" i; v=sprintf("%064d", i); printf "*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n", length(k), k, length(v), v}}' > $D/load.resp
redis-cli -p $BASE --pipe < $D/load.resp | tail -1
redis-cli -p $BASE DBSIZE
redis-cli -p $BASE INFO raft | grep -E "snapshot_index|commit_index|snapshot_bytes" | tr -d '\r'
# node 4 joins
P4=$((BASE+3)); R4=$((BASE+1003))
$BIN node --id 4 --join --data-dir $D/n4 --raft-addr 127.0.0.1:$R4 --client-addr 127.0.0.1:$P4 \
  --peers 1=127.0.0.1:$((BASE+1000)),2=127.0.0.1:$((BASE+1001)),3=127.0.0.1:$((BASE+1002)) \
  --peer-clients 1=127.0.0.1:$BASE,2=127.0.0.1:$((BASE+1)),3=127.0.0.1:$((BASE+2)) > $D/n4.log 2>&1 &
N4=$!
sleep 1
t0=$(date +%s.%N)
$BIN admin --endpoint 127.0.0.1:$BASE add-learner 4 127.0.0.1:$R4 127.0.0.1:$P4
t1=$(date +%s.%N)
$BIN admin --endpoint 127.0.0.1:$BASE promote 4
t2=$(date +%s.%N)
echo "join: add-learner committed in $(echo "$t1-$t0" | bc) s; caught up and promoted to voter in $(echo "$t2-$t0" | bc) s total"
redis-cli -p $P4 DBSIZE
redis-cli -p $P4 INFO raft | grep -E "role|voters|snapshot_index|applied_index" | tr -d '\r'
# throughput in 1 s windows while the membership changes: remove 4, add it back as 5... (new id)
P5=$((BASE+4)); R5=$((BASE+1004))
$BIN node --id 5 --join --data-dir $D/n5 --raft-addr 127.0.0.1:$R5 --client-addr 127.0.0.1:$P5 \
  --peers 1=127.0.0.1:$((BASE+1000)),2=127.0.0.1:$((BASE+1001)),3=127.0.0.1:$((BASE+1002)),4=127.0.0.1:$R4 \
  --peer-clients 1=127.0.0.1:$BASE,2=127.0.0.1:$((BASE+1)),3=127.0.0.1:$((BASE+2)),4=127.0.0.1:$P4 > $D/n5.log 2>&1 &
(
  for w in $(seq 1 16); do
    s=$(date +%s.%N)
    printf "%s " "$(date +%T.%N | cut -c1-12)"; timeout 5 redis-benchmark -p $BASE -t set -n 20000 -c 32 -P 8 -r 100000 -d 64 -q 2>/dev/null | tr '\r' '\n' | grep -o "SET: [0-9.]* requests per second" | tail -1 | sed "s/^/window $w: /"
  done
) > $D/windows.log &
W=$!
sleep 4; echo "$(date +%T.%N | cut -c1-12) add-learner 5"; $BIN admin --endpoint 127.0.0.1:$BASE add-learner 5 127.0.0.1:$R5 127.0.0.1:$P5
echo "$(date +%T.%N | cut -c1-12) promote 5"; $BIN admin --endpoint 127.0.0.1:$BASE promote 5
echo "$(date +%T.%N | cut -c1-12) remove 4"; $BIN admin --endpoint 127.0.0.1:$BASE remove 4
echo "$(date +%T.%N | cut -c1-12) done"
wait $W
cat $D/windows.log
kill $CL $N4 2>/dev/null; pkill -f "raft-kv node --id 5 --join" ; sleep 1; pkill -f "$D" ; rm -rf $D
