"""Envoy 1.40's Redis command table (`supported_commands.h`): which commands the proxy
accepts and how each is routed. Names are lower case, as Envoy's stats use them; the
list of names is the one Envoy 1.40 creates `command.<cmd>.*` stats for (observed)."""
from __future__ import annotations

SIMPLE = frozenset("""
append bf.add bf.card bf.exists bf.info bf.insert bf.loadchunk bf.madd bf.mexists bf.reserve
bf.scandump bitcount bitfield bitfield_ro bitpos decr decrby dump expire expireat geoadd geodist geohash
geopos georadius_ro georadiusbymember_ro geosearch get getbit getdel getex getrange getset hdel
hexists hget hgetall hincrby hincrbyfloat hkeys hlen hmget hmset hscan hset hsetnx hstrlen hvals
incr incrby incrbyfloat lindex linsert llen lmove lpop lpush lpushx lrange lrem lset ltrim
persist pexpire pexpireat pfadd pfcount psetex pttl publish restore rpop rpush rpushx sadd scard
set setbit setex setnx setrange sismember smembers spop srandmember srem sscan strlen ttl type
xack xadd xautoclaim xclaim xdel xlen xpending xrange xrevrange xtrim zadd zcard zcount zincrby
zlexcount zpopmin zpopmax zrange zrangebylex zrangebyscore zrank zrem zremrangebylex
zremrangebyrank zremrangebyscore zrevrange zrevrangebylex zrevrangebyscore zrevrank zscan zscore
copy rpoplpush smove sunion sdiff sinter sinterstore zunionstore zinterstore pfmerge georadius
georadiusbymember rename sort sort_ro zmscore sdiffstore msetnx substr zrangestore zunion zdiff
sunionstore smismember hrandfield geosearchstore zdiffstore zinter zrandmember bitop lpos renamenx
hexpire hexpireat hexpiretime hpersist hpexpire hpexpireat hpexpiretime hpttl httl
""".split())
"""Routed by their first key (argument 1)."""

EVAL = frozenset(("eval", "evalsha"))
"""Routed by argument 3, their first key."""

OBJECT = frozenset(("object",))
"""`OBJECT <subcommand> key`: routed by argument 2."""

SUM = frozenset(("del", "exists", "touch", "unlink"))
"""One request per key; the integer replies are summed."""

ALL_SHARDS = frozenset(("script", "flushall", "flushdb", "slowlog", "config", "info", "keys",
                        "select", "role"))
"""Keyless, sent to every host; the replies are merged."""

RANDOM_SHARD = frozenset(("cluster", "randomkey"))
"""Keyless, sent to one host."""

CLUSTER_SUBCOMMANDS = frozenset((b"info", b"slots", b"keyslot", b"nodes"))

TRANSACTION = frozenset(("multi", "exec", "discard", "watch", "unwatch"))

SPECIAL = frozenset(("mget", "mset", "scan", "info.shard", "hello"))

WITHOUT_ARGS = frozenset(("ping", "time", "flushall", "flushdb", "randomkey", "quit", "role",
                          "info"))
"""Valid with the command name alone; any other needs an argument."""

LOCAL = frozenset(("ping", "echo", "time", "quit", "auth", "client"))
"""Answered by the proxy itself, with no `command.*` stats (as in Envoy)."""

WITH_STATS = tuple(sorted(SIMPLE | EVAL | OBJECT | SUM | ALL_SHARDS | RANDOM_SHARD | TRANSACTION
                          | SPECIAL))
"""Every command Envoy creates `redis.<prefix>.command.<cmd>.*` stats for, at load."""

WRITE = frozenset("""
append bitfield decr decrby del discard exec expire expireat eval evalsha geoadd getdel hdel
hincrby hincrbyfloat hmset hset hsetnx incr incrby incrbyfloat linsert lmove lpop lpush lpushx lrem
lset ltrim mset multi persist pexpire pexpireat pfadd psetex restore rpop rpush rpushx sadd set
setbit setex setnx setrange spop srem zadd zincrby touch zpopmin zpopmax zrem zremrangebylex
zremrangebyrank zremrangebyscore unlink copy rpoplpush smove sinterstore zunionstore zinterstore
pfmerge georadius georadiusbymember rename sort sdiffstore msetnx zrangestore sunionstore
geosearchstore zdiffstore bitop renamenx
""".split())
"""Commands that change data (mirroring's `exclude_read_commands` skips the others)."""
