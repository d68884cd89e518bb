"""Drives a raft-kv cluster with redis-py as its users do: the client's defaults (RESP3 via
HELLO 3), a pipeline, a transaction with WATCH, an expiring lock, SCAN over 10,000 keys,
hashes, expiry and the everyday commands. Usage: redis_py_check.py PORT [PORT ...]; the
first port is used for writes, every port is checked. Exits non-zero on the first failure."""
import sys
import threading
import time

import redis

ports = [int(p) for p in sys.argv[1:]]
print("redis-py", redis.__version__, "against ports", ports)


def check(what, got, want):
    if got != want:
        raise SystemExit(f"FAIL {what}: got {got!r}, want {want!r}")
    print(f"ok   {what}: {got!r}")


# Defaults: no protocol argument, so redis-py 8 opens with HELLO 3.
r = redis.Redis(port=ports[0], decode_responses=True)
check("defaults speak RESP3", r.connection_pool.get_protocol() in (None, 3), True)
check("ping", r.ping(), True)
check("set/get", (r.set("greeting", "hello"), r.get("greeting")), (True, "hello"))
for p in ports:
    for proto in (2, 3):
        c = redis.Redis(port=p, protocol=proto, decode_responses=True)
        check(f"port {p} RESP{proto} reads the write", c.get("greeting"), "hello")
        c.hset("h", mapping={"a": "1", "b": "2"})
        check(f"port {p} RESP{proto} hgetall", c.hgetall("h"), {"a": "1", "b": "2"})

# A pipeline: 100 commands in one round trip, answered in order.
with r.pipeline(transaction=False) as p:
    for _ in range(100):
        p.incr("counter")
    out = p.execute()
check("pipeline of 100 INCRs answers in order", out == list(range(1, 101)), True)

# A transaction: MULTI/EXEC as one log entry.
with r.pipeline(transaction=True) as p:
    p.set("tx:a", 1).incr("tx:a").get("tx:a").hset("tx:h", "f", "v")
    check("transaction", p.execute(), [True, 2, "2", 1])

# WATCH: optimistic locking. Another client changes the key once between WATCH and EXEC,
# so the first attempt must abort and the second succeed.
other = redis.Redis(port=ports[-1], decode_responses=True)
r.set("balance", 100)
attempts = 0
with r.pipeline() as p:
    while True:
        attempts += 1
        try:
            p.watch("balance")
            balance = int(p.get("balance"))
            if attempts == 1:
                other.incrby("balance", 5)
            p.multi()
            p.set("balance", balance - 30)
            p.execute()
            break
        except redis.WatchError:
            continue
check("watch retried after a concurrent change", attempts, 2)
check("balance after the retried transaction", r.get("balance"), "75")

# The classic lock: set(nx=True, px=...) is exclusive and expires by the leader's clock.
check("lock taken", r.set("lock", "a", nx=True, px=300), True)
check("lock refused while held", other.set("lock", "b", nx=True, px=300), None)
t0 = time.monotonic()
while not other.set("lock", "b", nx=True, px=300):
    if time.monotonic() - t0 > 20:
        raise SystemExit("FAIL the lock never expired")
    time.sleep(0.02)
check("lock expired no earlier than its ttl", time.monotonic() - t0 >= 0.25, True)

# SCAN over 10,000 keys while another client writes: every key exactly once.
with r.pipeline(transaction=False) as p:
    for i in range(10_000):
        p.set(f"scan:{i}", i)
    p.execute()
stop = threading.Event()


def churn():
    w = redis.Redis(port=ports[0])
    i = 0
    while not stop.is_set():
        w.set(f"churn:{i}", 1)
        w.delete(f"churn:{i // 2}")
        i += 1


writer = threading.Thread(target=churn)
writer.start()
seen = list(redis.Redis(port=ports[-1], decode_responses=True).scan_iter(match="scan:*", count=500))
stop.set()
writer.join()
check("scan_iter over 10,000 keys", (len(seen), len(set(seen))), (10_000, 10_000))

# Expiry and the everyday commands.
check("set ex", r.set("t", "v", ex=100), True)
check("ttl", r.ttl("t") in (99, 100), True)
check("pexpire/pttl", (r.pexpire("t", 50_000), 49_000 < r.pttl("t") <= 50_000), (True, True))
check("persist", (r.persist("t"), r.ttl("t")), (True, -1))
check("expire then ttl -2 when gone", (r.expire("t", 0), r.ttl("t")), (True, -2))
check("setnx", (r.setnx("s", "x"), r.setnx("s", "y")), (True, False))
check("getset", r.getset("s", "z"), "x")
check("getdel", (r.getdel("s"), r.exists("s")), ("z", 0))
check("decr/decrby", (r.decr("d"), r.decrby("d", 4)), (-1, -5))
check("strlen", r.strlen("greeting"), 5)
check("type", (r.type("greeting"), r.type("h"), r.type("none")), ("string", "hash", "none"))
check("keys", sorted(r.keys("tx:*")), ["tx:a", "tx:h"])
check("hash", (r.hget("h", "a"), r.hlen("h"), r.hexists("h", "z"), r.hincrby("h", "n", 3), r.hdel("h", "a", "b", "n")), ("1", 2, False, 3, 3))
check("select 0", r.execute_command("SELECT", 0), True)
check("client setname", (r.client_setname("checker"), r.client_getname()), (True, "checker"))
check("flushdb", (r.flushdb(), r.dbsize()), (True, 0))
print("redis-py check passed")
