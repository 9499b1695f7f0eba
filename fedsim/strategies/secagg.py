"""Secure Aggregation, simulated faithfully in pure numpy + Python ints: Bonawitz et al. 2017, "Practical Secure
Aggregation for Privacy-Preserving Machine Learning" (CCS), the semi-honest protocol (their Fig. 4).

The server learns only the sum of the surviving clients' inputs. Four rounds among the cohort U1:

0. AdvertiseKeys: client u draws two Diffie-Hellman key pairs, (c_u^SK, c_u^PK) to encrypt shares and
   (s_u^SK, s_u^PK) to agree pairwise masks, and publishes the public keys.
1. ShareKeys: u draws a self-mask seed b_u and deals t-of-|U1| Shamir shares of s_u^SK and b_u to every member
   (in the paper encrypted under KA(c_u^SK, c_v^PK) and relayed by the server; the encryption is not
   simulated, only its bytes are counted by `protocol_cost`).
2. MaskedInputCollection: u uploads y_u = x_u + PRG(b_u) + sum_{v>u} PRG(s_uv) - sum_{v<u} PRG(s_uv) (mod 2^bits)
   with s_uv = KA(s_u^SK, s_v^PK); the pairwise masks cancel in the sum, the self mask does not.
3. Unmasking: every survivor (U2) sends, for each survivor, its share of b_u and, for each dropped client, its
   share of s_u^SK (never both for one client); from t of them the server rebuilds those secrets, regenerates
   the survivors' self masks and the pairwise masks survivors shared with dropped clients, and removes them.

Simulation, NOT cryptography: the group is Z_p^* with the Mersenne prime p = 2^127 - 1 and g = 3 (p - 1 is
smooth, so discrete logs are easy) and the PRG is numpy's Philox keyed by a hash of the seed. The arithmetic and
data flow are the paper's: masks cancel bit for bit, secrets really are rebuilt by Lagrange interpolation, and a
wrong share really breaks the result. Secrets come from `fedsim.rng.stream(seed, "secagg", rnd, client)`, so a
round is reproducible and independent of the order in which clients mask. Inputs are fixed-point integers in
Z_{2^bits} (`FixedPoint`), where numpy's unsigned wrap-around is the modular arithmetic.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedsim.rng import stream

Tensors = dict[str, np.ndarray]

P = 2**127 - 1  # prime: DH modulus and Shamir field (simulation only)
G = 3


class SecAggAborted(RuntimeError):
    """Fewer than `threshold` clients survived: the server cannot unmask and the round's sum is lost."""


@dataclass(frozen=True)
class FixedPoint:
    """Fixed-point encoding of floats in Z_{2^bits} (SecAgg sums integers mod R, Bonawitz et al. 2017 sec. 3)."""

    bits: int = 32
    frac_bits: int = 20

    def __post_init__(self) -> None:
        if self.bits not in (32, 64) or not 0 <= self.frac_bits < self.bits - 1:
            raise ValueError(f"need bits in (32, 64) and 0 <= frac_bits < bits - 1, got {self}")

    @property
    def dtype(self) -> type[np.unsignedinteger]:
        """The unsigned numpy type whose wrap-around is arithmetic mod 2^bits."""
        return np.uint32 if self.bits == 32 else np.uint64

    def limit(self, cohort: int) -> int:
        """Largest |integer| one client may send so that `cohort` of them never wrap the signed range."""
        return (2 ** (self.bits - 1) - 1) // max(int(cohort), 1)

    def encode(self, x: np.ndarray, cohort: int) -> tuple[np.ndarray, int]:
        """round(x * 2^frac_bits) as two's complement in uint{bits}; values are first clamped to the range that
        guarantees the sum of `cohort` such values never wraps: |x| <= (2^(bits-1)-1) / (2^frac_bits * cohort)
        (non-finite values count as clamped and encode 0). Returns (encoded, number of clamped values)."""
        bound = float(self.limit(cohort))
        if int(bound) > self.limit(cohort):  # float rounded up past the integer bound (64 bits)
            bound = float(np.nextafter(bound, 0.0))
        y = np.asarray(x, dtype=np.float64) * 2.0**self.frac_bits
        clamped = int(np.count_nonzero(~(np.abs(y) <= bound)))
        q = np.rint(np.clip(np.nan_to_num(y, nan=0.0), -bound, bound)).astype(np.int64)
        return q.astype(np.int32 if self.bits == 32 else np.int64).view(self.dtype), clamped

    def decode(self, total: np.ndarray) -> np.ndarray:
        """uint sum -> signed -> float64 / 2^frac_bits (exact when the sum did not wrap, see `encode`)."""
        signed = np.asarray(total, dtype=self.dtype).view(np.int32 if self.bits == 32 else np.int64)
        return signed.astype(np.float64) / 2.0**self.frac_bits


def agree(secret_key: int, public_key: int) -> int:
    """Diffie-Hellman key agreement KA.agree: a 128-bit hash of public_key^secret_key mod p (symmetric:
    agree(a, g^b) == agree(b, g^a)), used as the pairwise PRG seed s_uv."""
    shared = pow(public_key, secret_key, P)
    return int.from_bytes(hashlib.blake2b(shared.to_bytes(16, "little"), digest_size=16).digest(), "little")


def prg(seed: int, name: str, shape: tuple[int, ...], dtype: type[np.unsignedinteger]) -> np.ndarray:
    """Expand a seed (< 2^128) into uniform values mod 2^bits for tensor `name` (the paper's PRG; here Philox
    keyed by the seed, one counter block per tensor name, like AES in counter mode)."""
    block = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")
    gen = np.random.Philox(key=int(seed), counter=block << 128)
    numel = int(np.prod(shape, dtype=np.int64))
    per_word = 8 // np.dtype(dtype).itemsize  # values per 64-bit Philox output
    raw = gen.random_raw(-(-numel // per_word))
    return raw.view(dtype)[:numel].reshape(shape)


def shamir_share(secret: int, threshold: int, xs: Sequence[int], gen: np.random.Generator) -> dict[int, int]:
    """t-of-n Shamir shares of `secret` (< p) at the nonzero points xs: f(x) with f(0) = secret and t - 1
    uniform coefficients from `gen` (Shamir 1979; SS.share in Bonawitz et al. 2017)."""
    coeffs = [secret % P] + [_field_element(gen) for _ in range(threshold - 1)]
    shares = {}
    for x in xs:
        acc = 0
        for c in reversed(coeffs):  # Horner
            acc = (acc * x + c) % P
        shares[x] = acc
    return shares


def shamir_reconstruct(points: Sequence[tuple[int, int]]) -> int:
    """The secret f(0) from shares (x, f(x)) by Lagrange interpolation at 0 (SS.recon); needs >= t distinct x,
    and returns an unrelated value if any share is wrong or too few are given."""
    secret = 0
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, (xj, _) in enumerate(points):
            if j != i:
                num, den = num * xj % P, den * (xj - xi) % P
        secret = (secret + yi * num * pow(den, -1, P)) % P
    return secret


def _field_element(gen: np.random.Generator) -> int:
    return int.from_bytes(gen.bytes(16), "little") % P


@dataclass(frozen=True)
class _Client:
    c_sk: int
    s_sk: int
    b: int
    gen: np.random.Generator  # the client's stream, positioned after its secrets (for dealing shares)


class SecAggRound:
    """One round of the protocol among the `cohort` client ids (U1: clients that advertised keys)."""

    def __init__(self, seed: int, rnd: int, cohort: Sequence[int], threshold: int, codec: FixedPoint):
        """AdvertiseKeys and ShareKeys for every member of `cohort` (distinct ids >= 0); `threshold` is the t of
        the t-of-n secret sharing: at least t survivors are needed to unmask, and fewer than t colluding parties
        learn nothing beyond the sum (Bonawitz et al. 2017, Thm. 6.2-6.3)."""
        self.cohort = tuple(sorted(int(u) for u in cohort))
        if len(set(self.cohort)) != len(self.cohort) or (self.cohort and self.cohort[0] < 0):
            raise ValueError("cohort ids must be distinct and >= 0")
        if not 1 <= threshold <= len(self.cohort):
            raise ValueError(f"threshold {threshold} outside 1..{len(self.cohort)}")
        self.threshold, self.codec = int(threshold), codec
        self._clients: dict[int, _Client] = {}
        self.public_keys: dict[int, tuple[int, int]] = {}  # u -> (c_u^PK, s_u^PK), what the server broadcasts
        self._inbox: dict[int, dict[int, tuple[int, int]]] | None = None  # v -> u -> shares, on first need
        for u in self.cohort:
            gen = stream(seed, "secagg", rnd, u)
            c_sk, s_sk, b = (1 + _field_element(gen) % (P - 2), 1 + _field_element(gen) % (P - 2),
                             _field_element(gen))
            self._clients[u] = _Client(c_sk, s_sk, b, gen)
            self.public_keys[u] = (pow(G, c_sk, P), pow(G, s_sk, P))

    def _share_keys(self) -> dict[int, dict[int, tuple[int, int]]]:
        """ShareKeys: (encrypted, relayed) shares of s_u^SK and b_u from every u to every v in U1. Dealt on first
        need (only unmasking reads them): a client masking its input needs only its secrets and the public
        keys, so a worker never pays the O(n^2 t) dealing."""
        if self._inbox is None:
            xs = [v + 1 for v in self.cohort]  # Shamir evaluation points (nonzero)
            self._inbox = {v: {} for v in self.cohort}
            for u in self.cohort:
                s_shares = shamir_share(self._clients[u].s_sk, self.threshold, xs, self._clients[u].gen)
                b_shares = shamir_share(self._clients[u].b, self.threshold, xs, self._clients[u].gen)
                for v in self.cohort:
                    self._inbox[v][u] = (s_shares[v + 1], b_shares[v + 1])
        return self._inbox

    def mask(self, client: int, encoded: Tensors) -> Tensors:
        """client's masked input y_u = x_u + PRG(b_u) + sum_{v>u} PRG(s_uv) - sum_{v<u} PRG(s_uv)  (mod 2^bits),
        computed from its own secrets and the others' advertised s_v^PK (MaskedInputCollection)."""
        me = self._clients[client]
        dtype = self.codec.dtype
        pairs = [(v, agree(me.s_sk, self.public_keys[v][1])) for v in self.cohort if v != client]
        out: Tensors = {}
        for name in sorted(encoded):
            x = np.asarray(encoded[name])
            if x.dtype != dtype:
                raise TypeError(f"{name}: expected encoded {np.dtype(dtype)}, got {x.dtype}")
            y = x + prg(me.b, name, x.shape, dtype)
            for v, seed in pairs:
                m = prg(seed, name, x.shape, dtype)
                y = y + m if client < v else y - m
            out[name] = y
        return out

    def reveal(self, holder: int, survivors: Sequence[int]) -> dict[int, tuple[str, int]]:
        """The Unmasking message of survivor `holder`: for each survivor u its share of b_u, for each dropped
        member u its share of s_u^SK ("b" / "s", share); never both for one u, which keeps x_u private."""
        alive = set(survivors)
        return {u: ("b", bs) if u in alive else ("s", ss) for u, (ss, bs) in self._share_keys()[holder].items()}

    def unmask(self, masked_sum: Tensors, survivors: Sequence[int]) -> Tensors:
        """From the modular sum of the survivors' (U2) masked inputs: reconstruct (Shamir, from >= threshold
        survivors' shares) each survivor's b_u and each dropped client's (U1 \\ U2) secret key, regenerate the
        masks, remove them. Returns the plain modular sum of survivors' encoded inputs. Raises SecAggAborted
        when fewer than `threshold` survive (the paper's abort: the shares no longer determine the secrets)."""
        alive_set = {int(v) for v in survivors}
        if not alive_set <= set(self.cohort):
            raise ValueError(f"survivors {sorted(alive_set - set(self.cohort))} are not in the cohort")
        if len(alive_set) < self.threshold:
            raise SecAggAborted(f"{len(alive_set)} survivors < threshold {self.threshold}")
        alive = sorted(alive_set)
        dropped = [u for u in self.cohort if u not in alive_set]
        messages = {h: self.reveal(h, alive) for h in alive[: self.threshold]}  # the first t suffice
        secrets = {}  # b_u for survivors, s_u^SK for dropped clients, rebuilt from t shares each
        for u in self.cohort:
            kind = "b" if u in alive_set else "s"
            points = [(h + 1, msg[u][1]) for h, msg in messages.items() if msg[u][0] == kind]
            secrets[u] = shamir_reconstruct(points)
        dtype = self.codec.dtype
        out: Tensors = {}
        for name in sorted(masked_sum):
            z = np.array(masked_sum[name], dtype=dtype, copy=True)
            for u in alive:
                z -= prg(secrets[u], name, z.shape, dtype)
            for u in dropped:  # survivor v added +PRG(s_vu) if v < u, else -PRG(s_vu): take it back out
                for v in alive:
                    m = prg(agree(secrets[u], self.public_keys[v][1]), name, z.shape, dtype)
                    z = z - m if v < u else z + m
            out[name] = z
        return out


def masked_add(total: Tensors | None, masked: Tensors) -> Tensors:
    """Streaming server-side sum mod 2^bits of masked inputs (in place into `total`, a copy on the first), so the
    server holds O(adapter) memory however many clients report (Bonawitz et al. 2017, Round 2)."""
    if total is None:
        return {k: np.array(v, copy=True) for k, v in masked.items()}
    for k, v in masked.items():
        total[k] += v
    return total


@dataclass(frozen=True)
class SecAggCost:
    """Extra per-client traffic and PRG work of one SecAgg round (fields are arrays in vectorized use)."""

    client_up_bytes: float
    client_down_bytes: float
    client_prg_values: float
    server_prg_values: float
    round_trips: int
    masked_input_bytes: float


def protocol_cost(n, dropped, numel: int, bits: int, key_bytes: float, share_bytes: float) -> SecAggCost:
    """Extra per-client bytes/work of SecAgg beyond sending the plain update, for a cohort of n (U1) of which
    `dropped` do not deliver their masked input (Bonawitz et al. 2017, sec. 7.1: client O(n + m) traffic and
    O(n m) computation, server O(n^2 m) computation with dropouts). Per client: AdvertiseKeys up 2 public keys,
    down 2n keys; ShareKeys up and down (n-1) encrypted share pairs (2 * share_bytes each); MaskedInputCollection
    up the masked vector numel * bits / 8 (`masked_input_bytes`: the caller replaces the plain upload with it),
    down the U2 id list (4n bytes); Unmasking up (n-1) shares, down the U3 list (4n). Client PRG values n * numel
    (n - 1 pairwise masks + the self mask); server (survivors + dropped * survivors) * numel (survivors' self
    masks, each dropped client's pairwise mask with each survivor). round_trips: 3 request/response exchanges
    beyond the plain download/upload. n and dropped may be numpy arrays (estimate mode: 10^4..10^6 clients).
    Not counted: the n - 1 key agreements per client (and one per dropped client at the server), each a
    scalar multiplication, negligible next to expanding masks of m values."""
    n = np.asarray(n, dtype=np.float64)
    dropped = np.asarray(dropped, dtype=np.float64)
    survivors = n - dropped
    up = 2 * key_bytes + (n - 1) * 2 * share_bytes + (n - 1) * share_bytes
    down = 2 * n * key_bytes + (n - 1) * 2 * share_bytes + 4 * n + 4 * n
    masked = np.full(n.shape, numel * bits / 8)

    def out(a: np.ndarray):
        return float(a) if a.ndim == 0 else a

    return SecAggCost(client_up_bytes=out(up), client_down_bytes=out(down), client_prg_values=out(n * numel),
                      server_prg_values=out((survivors + dropped * survivors) * numel), round_trips=3,
                      masked_input_bytes=out(masked))
