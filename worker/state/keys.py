"""The Redis key layout: the one module that knows how keys are spelled.

Every key of one customer shard shares the hash tag {NN}, so a script call per shard is
valid on Redis Cluster (on a single Redis a call may span shards):

    rfm:{NN}:c:<tenant>:<customer_id>   string  the customer's state blob (worker/rules/customer.py)
    rfm:{NN}:outbox:<partition>         stream  changes waiting for the relay (fields k, v)
    rfm:{NN}:due:<partition>            zset    customer keys by the instant (epoch ms) their
                                                score next changes by itself (the due index)
    rfm:{NN}:counts                     hash    "<tenant>\\t<rfm>\\t<segment>" -> customers
    rfm:{NN}:values                     hash    the same fields -> the customers' summed
                                                expected_value as last published, in money
                                                units (1/10,000; value model profiles only)
    rfm:{NN}:m:<tenant>:<o>             zset    the segment index: the tenant's customers by
                                                the segment and R x F cell of their published
                                                score, ranked by ordering <o> (s spend, l last
                                                order, o orders, v expected value); every score
                                                0, each member "<segment, cell><rank><id>",
                                                ranked bytewise (worker/state/segment_index.py)
    rfm:{NN}:applied                    hash    "<topic>:<partition>" -> the offset up to which
                                                the shard's state holds that partition's events;
                                                "<topic>:id" -> the topic id they belong to
    rfm:{NN}:flows:<tenant>:<span>:<t>  hash    "<from>\t<to>" -> customers who moved between
                                                those segments in the bucket starting at t
                                                (span 5m or 1h; they expire; state/flows.py)
    rfm:flows:since                     string  epoch ms from which flows are recorded
    rfm:members                         hash    "<host>:<pid>" of a running worker -> JSON
                                                {at, versions, release, reads}: the profile
                                                versions it scores with, its release, the
                                                newest state format it reads
                                                (worker/services/roster.py)
    rfm:format                          hash    format -> the state format the workers
                                                write, release -> the release that chose it
                                                (worker/state/formats.py)
    rfm:clock                           string  the event clock, epoch ms (RFM_CLOCK=event)
    rfm:due-index                       string  "1" once customers stored before the due
                                                index existed have been indexed
    rfm:profiles                        hash    profile name -> the version whose customers
                                                have all been marked for rescoring
    rfm:quantiles                       hash    quantile profile name -> its current cut
                                                points, JSON (worker/rules/quantiles.py Cuts)
    rfm:quantiles:lock:<name>           string  held (SET NX PX) by the worker computing
                                                that profile's cut points
    rfm:churn                           hash    churn-model profile name -> its current fit,
                                                JSON (worker/rules/churn/model.py Fit)
    rfm:churn:lock:<name>               string  held (SET NX PX) by the worker fitting that
                                                profile's model
    rfm:rebuild                         hash    an unfinished `rfm-worker rebuild`: topic,
                                                id (its incarnation), partitions, wiped,
                                                "done:<partition>" -> the offset it ended at
                                                (worker/state/rebuild_marker.py)
    rfm:rebuild:lock                    string  held (SET NX PX) by the rebuild that wipes,
                                                starts or finishes one

NN is crc32(tenant, customer_id) mod 64. <partition> is the orders-topic partition of the
customer's latest event: a customer's changes and due entry live with the partition whose
consumer owns it. Customer ids may contain any character: the hash tag comes first and
tenants cannot contain ':', so keys never collide.
"""

from __future__ import annotations

import zlib

SHARDS = 64  # hash-tag groups; fixed for the life of a deployment (it is in every key)
CLOCK = b"rfm:clock"
INDEXED = b"rfm:due-index"
PROFILES = b"rfm:profiles"
QUANTILES = b"rfm:quantiles"
CHURN = b"rfm:churn"
FLOWS_SINCE = b"rfm:flows:since"
MEMBERS = b"rfm:members"
FORMAT = b"rfm:format"
REBUILD = b"rfm:rebuild"
REBUILD_LOCK = b"rfm:rebuild:lock"
ALL_PATTERN = b"rfm:*"
CUSTOMER_PATTERN = b"rfm:{*}:c:*"
OUTBOX_PATTERN = b"rfm:{*}:outbox:*"
_PREFIX_LEN = len("rfm:{00}:c:")


def shard_of(tenant: str, customer_id: str) -> int:
    return zlib.crc32(f"{tenant}\x00{customer_id}".encode()) % SHARDS


def customer(tenant: str, customer_id: str, shard: int | None = None) -> bytes:
    if shard is None:
        shard = shard_of(tenant, customer_id)
    return f"rfm:{{{shard:02d}}}:c:{tenant}:{customer_id}".encode()


def split_customer(key: bytes) -> tuple[int, str, str]:
    """(shard, tenant, customer_id) of a customer key."""
    tenant, _, customer_id = key[_PREFIX_LEN:].decode().partition(":")
    return int(key[5:7]), tenant, customer_id


def customer_pattern(tenant: str | None) -> bytes:
    """A SCAN glob for every customer key (of one tenant: check the owner, see store)."""
    return f"rfm:{{*}}:c:{_glob_escape(tenant) if tenant else '*'}:*".encode()


def outbox(shard: int, partition: int) -> bytes:
    return f"rfm:{{{shard:02d}}}:outbox:{partition}".encode()


def due(shard: int, partition: int) -> bytes:
    return f"rfm:{{{shard:02d}}}:due:{partition}".encode()


def erased(shard: int) -> bytes:
    """The shard's tombstones: HMAC of tenant and customer id -> erasure instant (epoch ms).
    Kept by `rebuild`'s wipe (worker/state/admin.py)."""
    return f"rfm:{{{shard:02d}}}:erased".encode()


def is_erased(key: bytes) -> bool:
    """Whether `key` is a shard's tombstones (what a wipe keeps)."""
    return key.startswith(b"rfm:{") and key[8:] == b":erased"


def kept_by_wipe(key: bytes) -> bool:
    """Whether `rebuild`'s wipe keeps `key`: the tombstones, the state format's record
    and the rebuild's own record."""
    return is_erased(key) or key in (FORMAT, REBUILD, REBUILD_LOCK)


def applied(shard: int) -> bytes:
    return f"rfm:{{{shard:02d}}}:applied".encode()


def applied_field(topic: str, partition: int) -> str:
    """The field of an applied hash that records one orders-topic partition."""
    return f"{topic}:{partition}"


def counts(shard: int) -> bytes:
    return f"rfm:{{{shard:02d}}}:counts".encode()


def values(shard: int) -> bytes:
    return f"rfm:{{{shard:02d}}}:values".encode()


def count_cell(tenant: str, rfm: str, segment: str) -> str:
    """The field of a counts hash that counts the customers of one (tenant, rfm, segment)."""
    return f"{tenant}\t{rfm}\t{segment}"


def segment_index(shard: int, tenant: str, ordering: str) -> bytes:
    """The segment index of one tenant and ordering in a shard: one key for every segment
    and cell, so that a commit seldom creates one (a script whose slot is migrating cannot
    create a key while others of its keys are still on the source: TRYAGAIN)."""
    return f"rfm:{{{shard:02d}}}:m:{tenant}:{ordering}".encode()


def quantiles_lock(profile: str) -> bytes:
    return f"rfm:quantiles:lock:{profile}".encode()


def churn_lock(profile: str) -> bytes:
    return f"rfm:churn:lock:{profile}".encode()


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


def flows(shard: int, tenant: str, span: str, start_ms: int) -> bytes:
    """A tenant's moves between segments in the `span` bucket starting at `start_ms`."""
    return f"rfm:{{{shard:02d}}}:flows:{tenant}:{span}:{start_ms}".encode()
