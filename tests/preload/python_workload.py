"""A dict/list/str-heavy workload whose output does not depend on the allocator (run by
test_python.py with and without libtieralloc.so; the outputs must be identical)."""
import hashlib
import json
import random

N = 300_000
rng = random.Random(20240601)
getbits = rng.getrandbits
out = []

# 300k str keys -> lists of ints and strings.
d = {}
for i in range(N):
    k = f"key-{i:06d}-{getbits(40):010x}"
    d[k] = [getbits(30) for _ in range(i % 5)] + [k[::-1] * (1 + i % 3)]
out.append(f"entries {len(d)} ints {sum(len(v) - 1 for v in d.values())}")

# JSON round trip.
s = json.dumps(d, sort_keys=False)
out.append(f"json {len(s)} {hashlib.sha256(s.encode()).hexdigest()}")
d2 = json.loads(s)
assert d2 == d, "json round trip changed the data"
del s

# Sorts: keys by their reverse; all the ints.
keys = sorted(d2, key=lambda k: k[::-1])
out.append(f"sorted first {keys[0]} last {keys[-1]}")
out.append("keys sha " + hashlib.sha256("\n".join(keys).encode()).hexdigest())
ints = sorted(x for v in d2.values() for x in v[:-1])
out.append(f"ints {len(ints)} min {ints[0]} max {ints[-1]} median {ints[len(ints) // 2]} sum {sum(ints)}")

# String building, splitting, replacing; sets and a dict rebuilt from pairs.
blob = "|".join(f"{k}={len(v)}" for k, v in d2.items())
parts = blob.split("|")
assert len(parts) == N
blob2 = blob.replace("key-", "K").upper()
out.append(f"blob {len(blob)} {len(blob2)} {hashlib.md5(blob2.encode()).hexdigest()}")
words = {p.split("=")[0][-6:] for p in parts}
out.append(f"distinct suffixes {len(words)}")
inv = {}
for k, v in d2.items():
    inv.setdefault(len(v), []).append(k)
out.append("groups " + " ".join(f"{n}:{len(ks)}" for n, ks in sorted(inv.items())))

# Churn: delete a third, reinsert with other values.
for k in keys[::3]:
    del d2[k]
for i, k in enumerate(keys[::3]):
    d2[k] = list(range(i % 20))
out.append(f"after churn {len(d2)} {sum(map(len, d2.values()))}")

print("\n".join(out))
